"""ONNX export: parity with torch, the dynamic batch axis, compact names (no Ray)."""

import numpy as np
import pytest
import torch

from maas.config import DataConfig, ExportConfig, ModelArchConfig
from maas.data import load_splits
from maas.export import check_parity, export_onnx
from maas.runtime import ort_session
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


def test_sessions_spin_wait_only_when_asked(exported):
    from maas.config import ServeConfig

    _, path = exported
    spinning = "session.intra_op.allow_spinning"
    assert not ServeConfig().ort_spin
    for spin, entry in ((False, "0"), (True, "1")):
        options = ort_session(path, threads=2, spin=spin).get_session_options()
        assert options.get_session_config_entry(spinning) == entry
        assert options.intra_op_num_threads == 2


def test_exported_names_are_compact_but_the_signature_is_kept(exported):
    import onnx

    _, path = exported
    graph = onnx.load(str(path)).graph
    assert [v.name for v in graph.input] == ["input"]
    assert [v.name for v in graph.output] == ["probabilities", "label"]
    inner = [t.name for t in graph.initializer] + [o for n in graph.node for o in n.output]
    assert all(len(name) <= 4 or name in ("probabilities", "label") for name in inner), inner
