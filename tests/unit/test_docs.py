"""Docs that cannot drift: the generated references are what docs/generate.py makes now, every
config field says what it is, and the README stays an entry point."""

import importlib.util
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.unit


def _generator():
    spec = importlib.util.spec_from_file_location("generate", REPO / "docs" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_references_are_fresh():
    stale = [str(p.relative_to(REPO)) for p in _generator().stale()]
    assert not stale, f"run `.venv/bin/python docs/generate.py` and commit: {stale}"


def test_every_config_field_has_a_description():
    from maas.app_args import EmbeddingsArgs, InferenceArgs, ServerArgs
    from maas.config import DeployConfig

    missing = [f"{cls.__name__}.{name}"
               for root in (DeployConfig, InferenceArgs, ServerArgs, EmbeddingsArgs)
               for _, cls in _generator().config_sections(root)
               for name, field in cls.model_fields.items()
               if not (field.description or "").strip()]
    assert not missing, f"add Field(description=...) to {missing}"


def test_the_references_cover_every_key_command_and_route():
    generated = _generator()
    configuration = generated.configuration()
    for key in ("`batching`", "`max_batch_size`", "`parity_cosine`", "`redaction`"):
        assert key in configuration
    cli = generated.cli()
    for command in ("maas run", "maas keys create", "maas models promote", "maas quickstart"):
        assert f"## `{command}`" in cli
    assert "--verbose" in cli and "--json" in cli
    paths = generated.openapi()["paths"]
    for path in ("/", "/v2/health/ready", "/v2/catalog", "/v2/models/digits/infer",
                 "/v2/models/minilm/versions/{version}/infer", "/v1/embeddings"):
        assert path in paths, sorted(paths)


def test_readme_is_an_entry_point_whose_links_resolve():
    readme = (REPO / "README.md").read_text()
    assert len(readme.encode()) <= 12 * 1024, f"README.md is {len(readme.encode())} bytes"
    for link in re.findall(r"\]\(((?:docs|bench|cluster|tests)/[^)#]+)", readme):
        assert (REPO / link).exists(), f"README links to {link}, which does not exist"
