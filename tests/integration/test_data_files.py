"""User data files read with Ray Data: CSV and Parquet load, train, and bad files are named."""

import numpy as np
import pandas as pd
import pytest

from jobs.train import run_training
from maas.config import DataConfig, parse_config
from maas.data import DataError, load_splits

pytestmark = pytest.mark.integration


def _frame(rows: int = 300) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, rows)
    x = rng.normal(size=(rows, 4)) + y[:, None] * 4.0  # separable: class shifts every feature
    frame = pd.DataFrame(x, columns=[f"f{i}" for i in range(4)])
    frame["species"] = y
    return frame


def test_table_files_load_and_train(serve_port, tmp_path):
    """A CSV file and a Parquet file of one table load to the same rows and splits (the
    format ends at the reader); the loaded rows then train with Ray Train, once (training is
    the same whatever file the rows came from)."""
    frame = _frame()
    frame.to_csv(tmp_path / "data.csv", index=False)
    frame.to_parquet(tmp_path / "data.parquet")
    model_cfg = parse_config({"state_dir": str(tmp_path), "models": [{
        "name": "table", "data": {"source": "data.parquet", "label_column": "species"},
        "model": {"hidden": [16]},
        "train": {"workers": 2, "epochs": 8, "batch_size": 16, "lr": 0.01}}]}).models[0]
    splits = load_splits(model_cfg.data, base_dir=tmp_path)
    from_csv = load_splits(model_cfg.data.model_copy(update={"source": "data.csv"}),
                           base_dir=tmp_path)
    for loaded in (splits, from_csv):
        assert loaded.n_features == 4 and loaded.n_classes == 3
        assert len(loaded.y_train) + len(loaded.y_val) + len(loaded.y_test) == 300
    for part in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
        np.testing.assert_allclose(getattr(from_csv, part), getattr(splits, part), rtol=1e-6)

    outcome = run_training(model_cfg, splits, tmp_path / "train", "table", [])
    assert outcome.metrics["epoch"] == 7
    assert outcome.metrics["val_accuracy"] > 0.8


def test_missing_label_column_is_named(serve_port, tmp_path):
    path = tmp_path / "data.csv"
    _frame().to_csv(path, index=False)
    with pytest.raises(DataError) as info:
        load_splits(DataConfig(source=str(path), label_column="label"))
    assert "data.label_column: 'label' is not a column of" in str(info.value)
    assert "f0, f1, f2, f3, species" in str(info.value)


def test_non_numeric_feature_column_is_named(serve_port, tmp_path):
    path = tmp_path / "data.csv"
    frame = _frame()
    frame["colour"] = "red"
    frame.to_csv(path, index=False)
    with pytest.raises(DataError, match=r"non-numeric feature column\(s\) \['colour'\]"):
        load_splits(DataConfig(source=str(path), label_column="species"))
