"""The MLflow Model Registry as maas uses it: tags, integrity, encryption, concurrency, aliases,
and the `maas models` commands. Real MLflow on a temporary SQLite database; no Ray."""

import json
import multiprocessing
import os
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from maas import crypto
from maas.cli import app
from maas.config import PromotionConfig, load_config
from maas.runtime import ort_session
from maas.registry import (IntegrityError, Registry, RegistryError, check_promotion,
                           sha256_bytes)

pytestmark = pytest.mark.unit
KEY_ENV = "MAAS_TEST_MODEL_KEY"


def _tiny_onnx(path: Path, seed: int = 0) -> Path:
    """A 4-feature, 3-class linear classifier: the same signature shape as a maas export."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = np.random.default_rng(seed).normal(size=(4, 3)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "w"], ["logits"]),
         helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
         helper.make_node("ArgMax", ["probabilities"], ["label"], axis=1, keepdims=0)],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 3]),
         helper.make_tensor_value_info("label", TensorProto.INT64, ["batch"])],
        [numpy_helper.from_array(weights, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> dict:
    """A registry database, an experiment and a run to attach versions to."""
    root = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    registry = Registry(uri)
    experiment = registry.client.create_experiment("t", artifact_location=(root / "art").as_uri())
    run_id = registry.client.create_run(experiment).info.run_id
    return {"root": root, "uri": uri, "run_id": run_id,
            "model": _tiny_onnx(root / "tiny.onnx"), "other": _tiny_onnx(root / "b.onnx", 1)}


def _register(store: dict, name: str, registry: Registry | None = None, accuracy: float = 0.9,
              which: str = "model"):
    registry = registry or Registry(store["uri"])
    return registry.register(name, store[which], run_id=store["run_id"],
                             metrics={"held_out_accuracy": accuracy}, variant="fp32",
                             data_fingerprint="data-fp", config_digest="cfg-hash")


def _stored_file(info) -> Path:
    from urllib.parse import urlparse

    return Path(urlparse(info.source).path) / ("model.onnx.enc" if info.encrypted
                                               else "model.onnx")


def test_a_version_carries_its_hash_signature_metrics_and_lineage(store):
    info = _register(store, "tagged")
    assert info.version == 1 and info.variant == "fp32" and info.opset == 18
    assert info.sha256 == info.artifact_sha256 and not info.encrypted
    assert [(s.name, s.shape) for s in info.inputs] == [("input", [-1, 4])]
    assert [(s.name, s.datatype) for s in info.outputs] == [("probabilities", "FP32"),
                                                            ("label", "INT64")]
    assert info.metrics == {"held_out_accuracy": 0.9}
    assert (info.data_fingerprint, info.config_hash) == ("data-fp", "cfg-hash")
    assert info.source_run == store["run_id"]
    loaded = Registry(store["uri"]).load(info)
    assert loaded == store["model"].read_bytes()
    labels = ort_session(loaded).run(["label"], {"input": np.eye(4, dtype=np.float32)})[0]
    assert labels.shape == (4,)


def test_a_version_number_past_mlflows_column_is_no_version_not_a_crash(store):
    _register(store, "huge")
    registry = Registry(store["uri"])
    for ref in (10**30, 2**31, "99999999999999999999"):
        with pytest.raises(RegistryError, match="has no version"):
            registry.get("huge", ref)


def test_a_tampered_artifact_is_refused_naming_model_version_and_both_hashes(store):
    info = _register(store, "tampered")
    path = _stored_file(info)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    registry = Registry(store["uri"])
    with pytest.raises(IntegrityError) as caught:
        registry.load(info)
    message = str(caught.value)
    assert "model 'tampered' version 1" in message
    assert info.artifact_sha256 in message
    assert sha256_bytes(bytes(data)) in message
    assert registry.get("tampered", 1) == info  # the registry entry is untouched
    with pytest.raises(IntegrityError):  # nor can a tampered version be promoted
        registry.promote("tampered", 1)


def test_an_encrypted_artifact_round_trips_and_a_wrong_key_is_refused(store, monkeypatch):
    key = crypto.new_key()
    monkeypatch.setenv(KEY_ENV, key)
    sealed = Registry(store["uri"], key_env=KEY_ENV, encrypt=True)
    info = _register(store, "sealed", sealed)
    plaintext = store["model"].read_bytes()
    stored = _stored_file(info).read_bytes()
    assert info.encrypted and stored.startswith(crypto.MAGIC)
    assert plaintext[:64] not in stored and info.artifact_sha256 != info.sha256
    assert Registry(store["uri"], key_env=KEY_ENV).load(info) == plaintext

    monkeypatch.setenv(KEY_ENV, crypto.new_key())
    with pytest.raises(RegistryError) as wrong:
        Registry(store["uri"], key_env=KEY_ENV).load(info)
    assert "model 'sealed' version 1" in str(wrong.value)
    assert "not the one this artifact was encrypted with" in str(wrong.value)
    assert key not in str(wrong.value)

    monkeypatch.delenv(KEY_ENV)
    with pytest.raises(RegistryError, match=f"environment variable {KEY_ENV} is not set"):
        Registry(store["uri"], key_env=KEY_ENV).load(info)
    with pytest.raises(RegistryError, match="is not set"):  # nothing is written without a key
        _register(store, "sealed", sealed)
    assert [v.version for v in sealed.versions("sealed")] == [1]


def test_assets_and_a_served_signature_are_stored_verified_and_sealed(store, monkeypatch):
    from maas.oip import TensorSpec

    text_in = [TensorSpec(name="text", datatype="BYTES", shape=[-1])]
    out = [TensorSpec(name="embedding", datatype="FP32", shape=[-1, 3])]
    vocab = '{"a tokenizer": true}'.encode()
    key = crypto.new_key()
    monkeypatch.setenv(KEY_ENV, key)
    for name, registry in (("with-asset", Registry(store["uri"])),
                           ("sealed-asset", Registry(store["uri"], key_env=KEY_ENV,
                                                     encrypt=True))):
        info = registry.register(name, store["model"], run_id=store["run_id"], metrics={},
                                 variant="fp32", data_fingerprint="weights", config_digest="c",
                                 kind="text-embedding", signature=(text_in, out),
                                 assets={"tokenizer.json": vocab})
        assert info.kind == "text-embedding" and info.inputs == text_in and info.outputs == out
        assert info.assets["tokenizer.json"].sha256 == sha256_bytes(vocab)
        assert registry.load_asset(info, "tokenizer.json") == vocab
        stored = _stored_file(info).parent / ("tokenizer.json.enc" if info.encrypted
                                              else "tokenizer.json")
        assert (vocab in stored.read_bytes()) is not info.encrypted
        stored.write_bytes(stored.read_bytes() + b" ")
        with pytest.raises(IntegrityError, match="the stored asset tokenizer.json has sha256"):
            registry.load_asset(info, "tokenizer.json")
        with pytest.raises(IntegrityError):  # a version with a changed asset is not promoted
            registry.promote(name, info.version)
        with pytest.raises(RegistryError, match="has no asset 'vocab.txt'"):
            registry.load_asset(info, "vocab.txt")
    with pytest.raises(RegistryError, match="asset names must be plain file names"):
        Registry(store["uri"]).register("bad-asset", store["model"], run_id=store["run_id"],
                                        metrics={}, variant="fp32", data_fingerprint="w",
                                        config_digest="c", assets={"../x": b""})


@pytest.mark.parametrize("value, fragment", [("not base64!", "not valid base64"),
                                             ("c2hvcnQ=", "decodes to 5 bytes")])
def test_a_malformed_key_is_a_clear_error(monkeypatch, value, fragment):
    monkeypatch.setenv(KEY_ENV, value)
    with pytest.raises(crypto.EncryptionError, match=fragment):
        crypto.key_from_env(KEY_ENV)


def test_an_encrypted_file_only_opens_as_its_own_model():
    key = os.urandom(crypto.KEY_BYTES)
    blob = crypto.seal(b"onnx bytes", key, b"maas:a:hash")
    assert crypto.unseal(blob, key, b"maas:a:hash") == b"onnx bytes"
    with pytest.raises(crypto.EncryptionError):
        crypto.unseal(blob, key, b"maas:b:hash")


def _register_in_process(uri: str, run_id: str, model: str, barrier) -> int:
    registry = Registry(uri)
    barrier.wait(timeout=60)
    info = registry.register("raced", Path(model), run_id=run_id, metrics={}, variant="fp32",
                             data_fingerprint="d", config_digest="c")
    return info.version


def test_concurrent_registrations_get_distinct_versions(store):
    Registry(store["uri"]).client.search_registered_models()  # schema created before the race
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager:
        barrier = manager.Barrier(2)
        with context.Pool(2) as pool:
            jobs = [pool.apply_async(_register_in_process,
                                     (store["uri"], store["run_id"], str(model), barrier))
                    for model in (store["model"], store["other"])]
            versions = sorted(job.get(timeout=120) for job in jobs)
    assert versions == [1, 2]
    registry = Registry(store["uri"])
    infos = registry.versions("raced")
    assert [v.version for v in infos] == [1, 2]
    assert {registry.load(v) for v in infos} == {store["model"].read_bytes(),
                                                 store["other"].read_bytes()}


def test_promote_and_rollback_walk_the_production_history(store):
    registry = Registry(store["uri"])
    for _ in range(3):
        _register(store, "aliased")
    assert registry.current("aliased") is None
    with pytest.raises(RegistryError, match="no production version to roll back from"):
        registry.rollback("aliased")
    assert registry.promote("aliased", 1) is None
    with pytest.raises(RegistryError, match="nothing to roll back to"):
        registry.rollback("aliased")
    assert registry.promote("aliased", 3, "canary") is None
    assert registry.promote("aliased", 2) == 1
    assert registry.promote("aliased", 3) == 2  # the canary graduates
    assert registry.get("aliased").version == 3
    assert registry.get("aliased", 3).aliases == ["production"]
    assert registry.rollback("aliased") == (3, 2)
    assert registry.rollback("aliased") == (2, 1)
    assert registry.get("aliased").version == 1
    with pytest.raises(RegistryError, match="no version 9; versions: \\[1, 2, 3\\]"):
        registry.promote("aliased", 9)
    with pytest.raises(RegistryError, match="alias 'staging' is not one maas serves"):
        registry.promote("aliased", 1, "staging")
    with pytest.raises(RegistryError, match="no registered model 'nope'"):
        registry.get("nope")


def test_the_promotion_check(store):
    candidate = _register(store, "gated", accuracy=0.95)
    production = _register(store, "gated", accuracy=0.97)
    assert check_promotion(PromotionConfig(), candidate, None).passed
    assert not check_promotion(PromotionConfig(), candidate, production).passed  # 2 points worse
    assert check_promotion(PromotionConfig(max_regression=0.05), candidate, production).passed
    refused = check_promotion(PromotionConfig(min_accuracy=0.96), candidate, None)
    assert not refused.passed and "promotion.min_accuracy 0.96" in refused.reason


def test_models_commands_print_json(store, tmp_path):
    config = tmp_path / "deploy.yaml"
    config.write_text(yaml.safe_dump({
        "state_dir": str(store["root"]), "tracking": {"uri": store["uri"]},
        "models": [{"name": "cli"}]}))
    assert load_config(config).registry_uri == store["uri"]
    for _ in range(2):
        _register(store, "cli")
    runner = CliRunner()

    def run(*args: str) -> object:
        result = runner.invoke(app, ["models", *args, "-c", str(config), "--json"])
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    assert run("promote", "cli", "1") == {"name": "cli", "alias": "production", "version": 1,
                                          "previous": None}
    assert run("promote", "cli", "2")["previous"] == 1
    listed = {m["name"]: m for m in run("list")}
    assert listed["cli"]["aliases"] == {"production": 2} and listed["cli"]["versions"] == 2
    shown = run("show", "cli")
    assert [v["version"] for v in shown["versions"]] == [1, 2]
    assert shown["versions"][1]["aliases"] == ["production"]
    assert run("rollback", "cli") == {"name": "cli", "alias": "production", "from": 2, "to": 1}
    missing = runner.invoke(app, ["models", "show", "nope", "-c", str(config)])
    assert missing.exit_code == 1 and "no registered model 'nope'" in missing.output
    table = runner.invoke(app, ["models", "show", "cli", "-c", str(config)])
    assert table.exit_code == 0 and "production" in table.output


def test_the_promotion_check_of_a_chat_llm(store):
    registered = _register(store, "chatty", accuracy=0.9)

    def llm(perplexity: float):
        return registered.model_copy(update={"metrics": {
            "perplexity": perplexity, "perplexity_ratio": perplexity / 37.4,
            "token_agreement": 0.6}})

    first = check_promotion(PromotionConfig(), llm(43.3), None)
    assert first.passed and "perplexity 43.300 (x1.158 of fp32)" in first.reason
    assert check_promotion(PromotionConfig(), llm(43.6), llm(43.3)).passed  # 0.7% worse
    worse = check_promotion(PromotionConfig(), llm(45.0), llm(43.3))  # 3.9% worse
    assert not worse.passed and "max_regression 0.01 (relative)" in worse.reason
