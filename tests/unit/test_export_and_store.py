"""ONNX export parity and the model store's integrity checks (torch + ONNX Runtime, no Ray)."""

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from maas import artifacts
from maas.config import DataConfig, ExportConfig, ModelArchConfig
from maas.data import load_splits
from maas.export import check_parity, export_onnx, ort_session
from maas.models import model_for

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def splits():
    return load_splits(DataConfig())


@pytest.fixture(scope="module")
def exported(splits, tmp_path_factory):
    torch.manual_seed(0)
    model = model_for(ModelArchConfig(hidden=[32]), splits).eval()
    path = export_onnx(model, splits.n_features, tmp_path_factory.mktemp("onnx") / "m.onnx",
                       ExportConfig())
    return model, path


def test_split_is_stratified_and_reproducible(splits):
    again = load_splits(DataConfig())
    assert splits.fingerprint == again.fingerprint
    assert load_splits(DataConfig(seed=1)).fingerprint != splits.fingerprint
    assert len(splits.y_test) == 360 and splits.n_features == 64 and splits.n_classes == 10
    assert set(np.unique(splits.y_test)) == set(range(10))


def test_onnx_matches_torch_on_held_out_rows(exported, splits):
    model, path = exported
    report = check_parity(model, path, splits.x_test, splits.y_test)
    assert report.rows == 360
    assert report.max_abs_diff < 1e-5
    assert report.label_agreement == 1.0


def test_exported_graph_has_a_dynamic_batch_axis(exported, splits):
    _, path = exported
    session = ort_session(path)
    for rows in (1, 7, 64):
        probs, labels = session.run(None, {"input": splits.x_test[:rows]})
        assert probs.shape == (rows, 10) and labels.shape == (rows,)
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def _publish(state: Path, onnx_path: Path) -> artifacts.ModelManifest:
    return artifacts.publish(state, "m", onnx_path, {"acc": 0.5}, "fp", None, "/ckpt")


def test_publish_then_load_verifies_the_hash(exported, tmp_path):
    _, path = exported
    manifest = _publish(tmp_path, path)
    assert manifest.version == 1
    assert [s.shape for s in manifest.inputs] == [[-1, 64]]
    assert [(s.name, s.datatype) for s in manifest.outputs] == [("probabilities", "FP32"),
                                                                ("label", "INT64")]
    loaded, onnx_path = artifacts.load_manifest(tmp_path, "m", None)
    assert loaded == manifest
    assert artifacts.sha256_file(onnx_path) == manifest.sha256


def test_tampered_artifact_is_refused(exported, tmp_path):
    _, path = exported
    manifest = _publish(tmp_path, path)
    model_file = tmp_path / "models" / "m" / "1" / "model.onnx"
    data = bytearray(model_file.read_bytes())
    data[-1] ^= 0xFF
    model_file.write_bytes(bytes(data))
    with pytest.raises(artifacts.IntegrityError) as info:
        artifacts.load_manifest(tmp_path, "m", 1)
    assert "model 'm' version 1" in str(info.value) and manifest.sha256 in str(info.value)


def test_concurrent_publishes_get_distinct_versions(exported, tmp_path):
    _, path = exported
    with ThreadPoolExecutor(max_workers=4) as pool:
        versions = sorted(m.version for m in pool.map(lambda _: _publish(tmp_path, path),
                                                      range(8)))
    assert versions == list(range(1, 9))
    assert artifacts.list_versions(tmp_path, "m") == versions
    assert artifacts.latest_version(tmp_path, "m") == 8


def test_incomplete_version_is_not_listed_and_unknown_versions_are_named(exported, tmp_path):
    _, path = exported
    _publish(tmp_path, path)
    (tmp_path / "models" / "m" / "2").mkdir()  # a crash before the manifest was written
    assert artifacts.list_versions(tmp_path, "m") == [1]
    with pytest.raises(FileNotFoundError, match=r"no version 2; published: \[1\]"):
        artifacts.load_manifest(tmp_path, "m", 2)
    with pytest.raises(FileNotFoundError, match="run `maas run deploy.yaml` first"):
        artifacts.load_manifest(tmp_path, "other", None)
    assert _publish(tmp_path, path).version == 3
