"""Data sources and the checks that refuse bad data before any training starts."""

from pathlib import Path

import numpy as np
import pytest

from maas.config import DataConfig, ModelArchConfig, SyntheticConfig
from maas.data import DataError, TrainRows, load_splits
from maas.models import model_for

pytestmark = pytest.mark.unit


def _npz(tmp_path: Path, x, y, **extra) -> DataConfig:
    path = tmp_path / "data.npz"
    np.savez(path, x=np.asarray(x), y=np.asarray(y))
    return DataConfig(source=str(path), **extra)


def _good(rows: int = 40, features: int = 4):
    rng = np.random.default_rng(0)
    return rng.normal(size=(rows, features)).astype(np.float32), np.arange(rows) % 2


def test_digits_split_sizes_and_image_shape():
    splits = load_splits(DataConfig())
    assert (len(splits.y_train), len(splits.y_val), len(splits.y_test)) == (1293, 144, 360)
    assert splits.image_shape == (1, 8, 8) and splits.n_features == 64 and splits.n_classes == 10


def test_synthetic_source_is_seeded_and_sized():
    cfg = DataConfig(source="synthetic", synthetic=SyntheticConfig(rows=1000, features=8,
                                                                     classes=3, seed=4))
    a, b = load_splits(cfg), load_splits(cfg)
    assert a.fingerprint == b.fingerprint
    assert a.n_features == 8 and a.n_classes == 3
    assert len(a.y_train) + len(a.y_val) + len(a.y_test) == 1000


def test_npz_images_are_flattened_and_keep_their_shape(tmp_path):
    x = np.random.default_rng(0).random((30, 2, 3, 3)).astype(np.float32)
    splits = load_splits(_npz(tmp_path, x, np.arange(30) % 3))
    assert splits.n_features == 18 and splits.image_shape == (2, 3, 3)


def test_relative_paths_resolve_against_the_config_directory(tmp_path):
    x, y = _good()
    np.savez(tmp_path / "rel.npz", x=x, y=y)
    splits = load_splits(DataConfig(source="rel.npz"), base_dir=tmp_path)
    assert splits.n_features == 4


def test_regression_labels_are_floats(tmp_path):
    x, _ = _good()
    splits = load_splits(_npz(tmp_path, x, np.linspace(0, 1, 40)), task="regression")
    assert splits.y_train.dtype == np.float32 and splits.n_outputs == 1


@pytest.mark.parametrize("x, y, extra, message", [
    (np.array([[np.nan, 1.0]] * 20), np.arange(20) % 2, {},
     "features contain 20 NaN or infinite value(s) (first at row 0, column 0)"),
    (np.array([[np.inf, 1.0]] + [[0.0, 1.0]] * 19), np.arange(20) % 2, {},
     "features contain 1 NaN or infinite value(s)"),
    (np.ones((20, 2)), np.array([0, 1] * 9 + [0, -1]), {},
     "label -1 at row 19 is out of range: labels must be integers in [0, 2)"),
    (np.ones((20, 2)), np.array([0, 1] * 9 + [0, 7]), {"num_classes": 3},
     "label 7 at row 19 is out of range: labels must be integers in [0, 3)"),
    (np.ones((20, 2)), np.array([0.5] * 20), {}, "class labels must be whole numbers"),
    (np.ones((20, 2)), np.arange(19) % 2, {}, "x has 20 rows but y has 19"),
    (np.ones((20,)), np.arange(20) % 2, {}, "x has shape [20]; expected (rows, features)"),
    (np.ones((3, 2)), np.arange(3) % 2, {}, "3 rows is too few"),
])
def test_bad_arrays_are_refused_with_their_reason(tmp_path, x, y, extra, message):
    with pytest.raises(DataError) as info:
        load_splits(_npz(tmp_path, x, y, **extra))
    assert message in str(info.value)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(DataError, match=r"file 'nope.csv' does not exist \(looked for .*nope.csv\)"):
        load_splits(DataConfig(source="nope.csv"), base_dir=tmp_path)


def test_npz_without_x_and_y_is_refused(tmp_path):
    path = tmp_path / "bad.npz"
    np.savez(path, features=np.ones((20, 2)))
    with pytest.raises(DataError, match=r"has no array\(s\) \['x', 'y'\]"):
        load_splits(DataConfig(source=str(path)))


def test_a_shape_the_cnn_cannot_take_is_refused(tmp_path):
    x, y = _good(features=10)
    splits = load_splits(_npz(tmp_path, x, y))
    with pytest.raises(DataError, match=r"image_shape: a cnn needs \[channels, height, width\]"):
        model_for(ModelArchConfig(kind="cnn"), splits)
    with pytest.raises(DataError, match=r"\[1, 3, 3\] holds 9 values but each row has 10"):
        model_for(ModelArchConfig(kind="cnn", image_shape=[1, 3, 3]), splits)


def test_unknown_source_kind_is_a_config_error():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="must be 'sklearn:digits', 'synthetic'"):
        DataConfig(source="s3://bucket/data.json")


def test_train_rows_shard_equally_and_in_order_across_workers():
    """Every rank gets the same number of rows (DDP steps in lockstep), contiguous, with the
    teacher's logits beside their rows; the trailing rows that do not divide are left out."""
    x = np.arange(22, dtype=np.float32).reshape(11, 2)
    rows = TrainRows(x, np.arange(11), np.arange(11, dtype=np.float32)[:, None] * 10)
    shards = [rows.shard(rank, 3) for rank in range(3)]
    assert [len(s) for s in shards] == [3, 3, 3]
    assert np.concatenate([s[1] for s in shards]).tolist() == list(range(9))
    assert all((s[0][:, 0] == 2 * s[1]).all() and (s[2][:, 0] == 10 * s[1]).all()
               for s in shards)
    assert len(TrainRows(x, np.arange(11)).shard(1, 2)) == 2  # no teacher: x and y only
