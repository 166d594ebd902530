"""The files of a built LLM variant, and a registered version laid out as a directory.

    <folder>/model.onnx            the graph (the registry's model file)
             model.onnx.data       its weights, found by the graph under this very name
             genai_config.json     what onnxruntime-genai needs to run it (context length,
                                   KV-cache layout, token ids)
             tokenizer.json, tokenizer_config.json, chat_template.jinja

The graph is registered as the version's model, the rest as its assets, so each file is
sha256-verified on every read and sealed at rest when ``registry.encrypt`` is on. An engine
(``og.Model(folder)``) loads from a directory, so a replica calls :func:`materialize`: it
writes the verified files of one version into a folder of their own and returns it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from maas.oip import TensorSpec
from maas.registry import MODEL_FILE, RegistryError, RegistryView, VersionInfo

KIND = "llm"  # the registry's ``kind`` tag of a served language model
GRAPH_FILE = MODEL_FILE  # "model.onnx": genai_config.json names it as the decoder's file
WEIGHTS_FILE = "model.onnx.data"
GENAI_CONFIG_FILE = "genai_config.json"
TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"
ASSET_FILES = (WEIGHTS_FILE, GENAI_CONFIG_FILE, TOKENIZER_FILE, TOKENIZER_CONFIG_FILE,
               CHAT_TEMPLATE_FILE)
BUILT_FILES = (GRAPH_FILE, *ASSET_FILES)
TEXT = "text"  # the served signature's one input and one output


def served_signature() -> tuple[list[TensorSpec], list[TensorSpec]]:
    """What clients of a language model send and get: text in, generated text out (the graph's
    own inputs are token ids and a KV cache per layer, which only the engine sees)."""
    return ([TensorSpec(name=TEXT, datatype="BYTES", shape=[-1])],
            [TensorSpec(name=TEXT, datatype="BYTES", shape=[-1])])


def file_sha256(path: Path) -> str:
    """sha256 of one file, read in 1 MiB blocks (the weights are hundreds of MB)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def missing_files(folder: Path) -> list[str]:
    """The files of a built variant that ``folder`` lacks."""
    return [name for name in BUILT_FILES if not (folder / name).is_file()]


def size_bytes(folder: Path) -> int:
    """Bytes on disk of a built variant's files."""
    return sum((folder / name).stat().st_size for name in BUILT_FILES)


def context_length(folder: Path) -> int:
    """The longest sequence (prompt and answer, in tokens) the built model takes."""
    config = json.loads((folder / GENAI_CONFIG_FILE).read_text())
    return int(config["model"]["context_length"])


def assets(folder: Path) -> dict[str, bytes]:
    """Every file of a built variant but the graph, by name: what is registered with it."""
    missing = missing_files(folder)
    if missing:
        raise RegistryError(f"{folder} is not a built LLM variant: it lacks {missing}; "
                            f"rebuild it (delete the folder, then re-run the pipeline)",
                            status=400)
    return {name: (folder / name).read_bytes() for name in ASSET_FILES}


def expected_sha256(info: VersionInfo) -> dict[str, str]:
    """File name -> sha256 of its plaintext, as the registry recorded them."""
    if info.kind != KIND:
        raise RegistryError(f"model {info.name!r} version {info.version} is of kind "
                            f"{info.kind!r}, not {KIND!r}: it is no language model", status=400)
    absent = [name for name in ASSET_FILES if name not in info.assets]
    if absent:
        raise RegistryError(f"model {info.name!r} version {info.version} lacks the assets "
                            f"{absent}; register it again with the pipeline")
    return {GRAPH_FILE: info.sha256} | {name: info.assets[name].sha256 for name in ASSET_FILES}


def _intact(folder: Path, expected: dict[str, str]) -> bool:
    return all((folder / name).is_file() and file_sha256(folder / name) == sha256
               for name, sha256 in expected.items())


def materialize(registry: RegistryView, info: VersionInfo, root: Path) -> Path:
    """A directory holding every file of ``info``, verified: ``root/<name>/<version>-<sha>``.

    A folder already there (another replica on this node, a restart) is reused only when
    every file's sha256 matches the registry's; otherwise the files are read from the
    registry (verified, decrypted when sealed), written into a temporary folder beside it and
    renamed into place, so no reader ever sees half a version. The folder is private to this
    user (0700): with ``registry.encrypt`` on, it holds the plaintext weights."""
    expected = expected_sha256(info)
    folder = root / info.name / f"{info.version}-{info.sha256[:12]}"
    if _intact(folder, expected):
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        (staging / GRAPH_FILE).write_bytes(registry.load(info))
        for name in ASSET_FILES:
            (staging / name).write_bytes(registry.load_asset(info, name))
        if folder.exists():  # a stale or damaged copy: replaced whole
            shutil.rmtree(folder)
        try:
            os.replace(staging, folder)
        except OSError:  # another process put the same version there first
            if not _intact(folder, expected):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder
