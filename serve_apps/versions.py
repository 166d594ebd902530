"""The versions a model replica holds: production and canary by alias, others by number.

Every replica re-reads the aliases every ``serve.alias_poll_s`` seconds and loads (and
verifies) a newly promoted version *before* it swaps it in, so a promotion switches live
traffic without failing a request. Explicit versions are loaded on first use and kept (a few
at a time).
"""

import logging
import random
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from maas import text
from maas.oip import (InferenceRequest, InferenceResponse, InferError, ModelMetadata, TensorSpec,
                      decode_input, encode_output, response_json)
from maas.registry import (CANARY, MAX_VERSION, PRODUCTION, RegistryError, RegistryView,
                           VersionInfo, VersionNotFound, is_version_number)
from maas.runtime import ort_session
from serve_apps import REPLICA_LOG

log = logging.getLogger(REPLICA_LOG)
EXPLICIT_VERSIONS_KEPT = 4  # explicitly requested versions held in memory besides the aliases


@dataclass(frozen=True)
class Loaded:
    """One verified version with its ONNX Runtime session (and tokenizer, for text)."""

    info: VersionInfo
    session: Any
    input_specs: dict[str, TensorSpec]
    output_names: list[str]
    encoder: text.TextEncoder | None = None

    def metadata(self, versions: list[str]) -> ModelMetadata:
        return ModelMetadata(name=self.info.name, versions=versions, platform="onnxruntime_onnx",
                             inputs=self.info.inputs, outputs=self.info.outputs)

    def feeds(self, request: InferenceRequest, max_rows: int) -> dict[str, np.ndarray]:
        """The request's inputs as arrays this version takes, or a 400 naming the field."""
        feeds: dict[str, np.ndarray] = {}
        for index, tensor in enumerate(request.inputs):
            spec = self.input_specs.get(tensor.name)
            if spec is None:
                raise InferError(400, f"inputs[{index}].name: unknown input {tensor.name!r}; "
                                      f"this model takes {sorted(self.input_specs)}")
            feeds[tensor.name] = decode_input(tensor, spec, index, max_rows)
        missing = sorted(set(self.input_specs) - set(feeds))
        if missing:
            raise InferError(400, f"inputs: missing input(s) {missing}")
        return feeds

    def run(self, wanted: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """The ``wanted`` outputs for ``feeds`` (blocking: call it off the event loop). A
        text model tokenizes here, padding to the longest text of these rows."""
        if self.encoder is None:
            return self.session.run(wanted, feeds)
        texts = feeds[text.TEXT_INPUT].reshape(-1).tolist()
        embeddings, tokens = text.embed(self.session, self.encoder, texts)
        produced = {text.OUTPUT_NAME: embeddings, text.TOKENS_OUTPUT: tokens}
        return [produced[name] for name in wanted]


def load(registry: RegistryView, name: str, version: int, threads: int,
         spin: bool = False) -> Loaded:
    """Fetch, verify and open ``version`` of ``name`` (RegistryError when it cannot be used)."""
    info = registry.get(name, version)
    encoder = None
    if info.kind == text.KIND:
        encoder = text.TextEncoder(registry.load_asset(info, text.TOKENIZER_FILE).decode())
    elif info.kind != "onnx":
        raise RegistryError(f"model {info.name!r} version {info.version} is of kind "
                            f"{info.kind!r}, which this maas release cannot serve; upgrade")
    session = ort_session(registry.load(info), threads=threads, spin=spin)
    log.info("loaded model %s version %s (%s, %s, sha256 %s)", info.name, info.version,
             info.kind, info.variant, info.sha256)
    return Loaded(info, session, {s.name: s for s in info.inputs},
                  [s.name for s in info.outputs], encoder)


@dataclass(frozen=True)
class Answer:
    """One infer request's outputs, from the version that computed them."""

    loaded: Loaded
    request_id: str | None
    outputs: list[tuple[str, np.ndarray]]
    parameters: dict[str, Any] | None = None  # the method's settings, for an explanation

    @property
    def rows(self) -> int:
        first = self.outputs[0][1]
        return first.shape[0] if first.ndim else 1

    def json(self) -> bytes:
        info = self.loaded.info
        return response_json(info.name, str(info.version), self.request_id, self.outputs,
                             self.parameters)

    def response(self) -> InferenceResponse:
        return InferenceResponse(
            model_name=self.loaded.info.name, model_version=str(self.loaded.info.version),
            id=self.request_id, parameters=self.parameters,
            outputs=[encode_output(n, a) for n, a in self.outputs])


class Versions:
    """A replica's loaded versions of model ``name``: the aliases' (or the pinned
    ``version``), swapped in whole, and up to EXPLICIT_VERSIONS_KEPT asked for by number."""

    def __init__(self, registry: RegistryView, name: str, pinned: int | None,
                 poll_s: float, canary_weight: float,
                 loader: Callable[[RegistryView, str, int], Any],
                 explicit_kept: int = EXPLICIT_VERSIONS_KEPT,
                 release: Callable[[Any], None] | None = None):
        self.registry, self.name = registry, name
        self.canary_weight = canary_weight
        # What a version becomes in memory: an ONNX session (``load``, serve_apps.inference);
        # serve_apps.llm loads an engine with its cache instead, and keeps fewer of them.
        self._loader = loader
        self._explicit_kept = explicit_kept
        self._release = release  # a version no longer held: free what it holds (an engine)
        self._load_lock = threading.Lock()
        self._explicit: OrderedDict[int, Loaded] = OrderedDict()
        self._live: dict[str, Loaded] = {}
        self.numbers: list[str] = []
        self._stop = threading.Event()
        if pinned is not None:
            self._live = {PRODUCTION: self._loader(registry, name, pinned)}
            self.numbers = [str(pinned)]
            return
        self.refresh()  # no production version: the replica fails to start, saying so
        threading.Thread(target=self._watch, args=(poll_s,), name="maas-alias-watch",
                         daemon=True).start()

    @property
    def production(self) -> Any:
        return self._live[PRODUCTION]

    def _cached(self, version: int) -> Loaded | None:
        for loaded in self._live.values():
            if loaded.info.version == version:
                return loaded
        return self._explicit.get(version)

    def refresh(self) -> None:
        """Re-read the aliases; load what they point at, then swap it in all at once."""
        aliases = self.registry.aliases(self.name)
        if PRODUCTION not in aliases:
            raise VersionNotFound(f"model {self.name!r} has no production version; "
                                  f"`maas models promote {self.name} VERSION` sets one")
        live = {}
        for alias in (PRODUCTION, CANARY):
            if alias in aliases:
                with self._load_lock:
                    live[alias] = (self._cached(aliases[alias])
                                   or self._loader(self.registry, self.name, aliases[alias]))
        before, self._live = list(self._live.values()), live  # one assignment: a request
        self._released(before)                                # sees the old set or the new
        self.numbers = [str(v) for v in self.registry.version_numbers(self.name)]

    def _watch(self, poll_s: float) -> None:
        while not self._stop.wait(poll_s):
            try:
                self.refresh()
            except Exception as exc:  # keep serving what is loaded; say why it did not change
                log.warning("model %s: aliases not refreshed: %s", self.name, exc)

    def pick(self) -> Any:
        """The version an unversioned request gets: production, or by ``canary_weight`` the
        canary."""
        live = self._live
        canary = live.get(CANARY)
        if canary is not None and self.canary_weight > 0.0 \
                and random.random() < self.canary_weight:
            return canary
        return live[PRODUCTION]

    def by_number(self, version: str) -> Any:
        """The loaded ``version`` (a path segment); 404 for one that is not registered.
        Blocking (it may load): call it off the event loop."""
        if not is_version_number(version) or not 1 <= int(version) <= MAX_VERSION:
            raise InferError(404, f"model {self.name!r} has no version {version!r}; "
                                  f"versions: {self.numbers}", param="model")
        number = int(version)
        with self._load_lock:
            loaded = self._cached(number) or self._loader(self.registry, self.name, number)
            self._explicit[number] = loaded
            self._explicit.move_to_end(number)
            while len(self._explicit) > self._explicit_kept:
                self._released([self._explicit.popitem(last=False)[1]])
        return loaded

    def _released(self, dropped: list[Any]) -> None:
        """Hand versions that neither an alias nor the explicit set holds any more to
        ``release`` (requests already running on them finish first: the release drains)."""
        if self._release is None:
            return
        held = {id(v) for v in self._live.values()} | {id(v) for v in self._explicit.values()}
        for loaded in {id(v): v for v in dropped if id(v) not in held}.values():
            self._release(loaded)

    def stop(self) -> None:
        self._stop.set()
