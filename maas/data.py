"""Datasets: load ``models[].data``, refuse bad data before training starts, split it.

Sources: ``sklearn:digits`` (ships with scikit-learn), ``synthetic`` (seeded, any size), and
user files: ``.npz`` with arrays ``x`` and ``y``, or ``.parquet`` / ``.csv`` with a label column,
read with Ray Data. The split (test, then validation from the rest) is a pure function of the
config, so the driver, the export parity check and the smoke prediction see the same rows.
Ray Train workers read their shard of the training rows from :class:`TrainRows`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Literal

import numpy as np

from maas.config import DataConfig, config_relative
from maas.errors import MaasError

Task = Literal["classification", "regression"]


class DataError(MaasError, ValueError):
    """The data cannot be trained on; the message says what is wrong and where."""

    status = 400


@dataclass(frozen=True)
class Splits:
    """Features float32 (n, d); labels int64 (n,) for classes, float32 (n,) or (n, k) else."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    task: Task
    n_outputs: int  # classes, or regression targets
    image_shape: tuple[int, int, int] | None  # (C, H, W) of one row, when the data knows it

    @property
    def n_features(self) -> int:
        return int(self.x_train.shape[1])

    @property
    def n_classes(self) -> int:
        return self.n_outputs

    @cached_property
    def fingerprint(self) -> str:
        """sha256 over every array, so a run records exactly which data it saw."""
        digest = hashlib.sha256()
        for arr in (self.x_train, self.y_train, self.x_val, self.y_val, self.x_test, self.y_test):
            digest.update(str(arr.shape).encode())
            digest.update(np.ascontiguousarray(arr).tobytes())
        return digest.hexdigest()


def _synthetic(cfg: DataConfig) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian clusters around random class centres: learnable, seeded, cheap at any size."""
    syn = cfg.synthetic
    rng = np.random.default_rng(syn.seed)
    centres = rng.normal(0.0, 1.0, size=(syn.classes, syn.features)).astype(np.float32)
    y = rng.integers(0, syn.classes, size=syn.rows)
    x = centres[y] + rng.normal(0.0, 1.5, size=(syn.rows, syn.features)).astype(np.float32)
    return x.astype(np.float32), y.astype(np.int64)


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path, allow_pickle=False) as archive:
        missing = [k for k in ("x", "y") if k not in archive.files]
        if missing:
            raise DataError(f"data.source: {path} has no array(s) {missing}; an .npz needs 'x' "
                            f"(rows, features...) and 'y' (rows,), found {archive.files}")
        return archive["x"], archive["y"]


def _read_table(path: Path, label_column: str) -> tuple[np.ndarray, np.ndarray]:
    import ray.data

    dataset = (ray.data.read_parquet(str(path)) if path.suffix == ".parquet"
               else ray.data.read_csv(str(path)))
    frame = dataset.to_pandas()
    if label_column not in frame.columns:
        raise DataError(f"data.label_column: {label_column!r} is not a column of {path}; "
                        f"columns: {', '.join(map(str, frame.columns))}")
    features = frame.drop(columns=[label_column])
    non_numeric = [str(c) for c in features.columns if features[c].dtype.kind not in "biuf"]
    if non_numeric:
        raise DataError(f"data.source: {path} has non-numeric feature column(s) {non_numeric}; "
                        f"encode them as numbers first")
    return features.to_numpy(dtype=np.float32), frame[label_column].to_numpy()


def _load_raw(cfg: DataConfig, base_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    if cfg.source == "sklearn:digits":
        from sklearn.datasets import load_digits

        bunch = load_digits()  # ships inside scikit-learn: nothing is downloaded
        return bunch.images.astype(np.float32), bunch.target.astype(np.int64)
    if cfg.source == "synthetic":
        return _synthetic(cfg)
    path = config_relative(cfg.source, base_dir)
    if not path.is_file():
        raise DataError(f"data.source: file {cfg.source!r} does not exist (looked for {path})")
    return _read_npz(path) if path.suffix == ".npz" else _read_table(path, cfg.label_column)


def _flatten(x: np.ndarray) -> tuple[np.ndarray, tuple[int, int, int] | None]:
    """(rows, features) float32, and (C, H, W) when rows are images (3-D or 4-D x)."""
    if x.ndim == 2:
        shape = None
    elif x.ndim == 3:
        shape = (1, int(x.shape[1]), int(x.shape[2]))
    elif x.ndim == 4:
        shape = (int(x.shape[1]), int(x.shape[2]), int(x.shape[3]))
    else:
        raise DataError(f"data: x has shape {list(x.shape)}; expected (rows, features), "
                        f"(rows, H, W) or (rows, C, H, W)")
    if x.dtype.kind not in "biuf":
        raise DataError(f"data: x has dtype {x.dtype}; features must be numbers")
    return np.ascontiguousarray(x.reshape(len(x), -1), dtype=np.float32), shape


def _first_bad(mask: np.ndarray) -> str:
    where = np.argwhere(mask)[0]
    return f"row {where[0]}" + (f", column {where[1]}" if len(where) > 1 else "")


def _check_labels(y: np.ndarray, task: Task, cfg: DataConfig) -> tuple[np.ndarray, int]:
    if y.dtype.kind not in "biuf":
        raise DataError(f"data: labels have dtype {y.dtype}; they must be numbers")
    if y.dtype.kind == "f" and not np.isfinite(y).all():
        raise DataError(f"data: labels contain NaN or infinity (first at {_first_bad(~np.isfinite(y))}); "
                        f"drop or fix those rows")
    if task == "regression":
        y = y.astype(np.float32)
        return y, 1 if y.ndim == 1 else int(y.shape[1])
    if y.ndim != 1:
        raise DataError(f"data: class labels must be one integer per row, got shape {list(y.shape)}")
    if y.dtype.kind == "f" and not np.all(y == np.round(y)):
        raise DataError(f"data: class labels must be whole numbers (first bad at "
                        f"{_first_bad(y != np.round(y))}); use train.loss: mse for regression")
    y = y.astype(np.int64)
    classes = cfg.num_classes or int(y.max()) + 1
    out_of_range = (y < 0) | (y >= classes)
    if out_of_range.any():
        bad = int(y[out_of_range][0])
        raise DataError(f"data: label {bad} at {_first_bad(out_of_range)} is out of range: "
                        f"labels must be integers in [0, {classes})"
                        + ("" if cfg.num_classes else "; set data.num_classes if classes are missing"))
    return y, classes


def load_splits(cfg: DataConfig, task: Task = "classification",
                base_dir: Path | None = None) -> Splits:
    """Load, validate and split ``cfg``; raise :class:`DataError` naming the problem.

    ``base_dir`` resolves relative file paths (the directory of deploy.yaml; default: cwd).
    """
    from sklearn.model_selection import train_test_split

    raw_x, raw_y = _load_raw(cfg, base_dir or Path.cwd())
    x, image_shape = _flatten(np.asarray(raw_x))
    y = np.asarray(raw_y)
    if len(x) != len(y):
        raise DataError(f"data: x has {len(x)} rows but y has {len(y)}; they must match")
    if len(x) < 10:
        raise DataError(f"data: {len(x)} rows is too few to split into train/validation/test")
    bad = ~np.isfinite(x)
    if bad.any():
        raise DataError(f"data: features contain {int(bad.sum())} NaN or infinite value(s) "
                        f"(first at {_first_bad(bad)}); drop or impute them before training")
    y, n_outputs = _check_labels(y, task, cfg)

    def split(a: np.ndarray, b: np.ndarray, fraction: float, seed: int) -> list[np.ndarray]:
        strata = b if task == "classification" and np.bincount(b).min(initial=2) >= 2 else None
        return train_test_split(a, b, test_size=fraction, random_state=seed, stratify=strata)

    x_rest, x_test, y_rest, y_test = split(x, y, cfg.test_fraction, cfg.seed)
    x_train, x_val, y_train, y_val = split(x_rest, y_rest, cfg.val_fraction, cfg.seed + 1)
    arrays = [np.ascontiguousarray(a) for a in (x_train, y_train, x_val, y_val, x_test, y_test)]
    return Splits(*arrays, task=task, n_outputs=n_outputs, image_shape=image_shape)


@dataclass(frozen=True)
class TrainRows:
    """The training rows Ray Train workers share: ``x``, ``y`` and, for distillation, ``t``
    (the teacher's logits per row). The driver puts them in Ray's object store once; every
    worker on a node reads the same copy without a copy of its own (numpy in Plasma)."""

    x: np.ndarray
    y: np.ndarray
    t: np.ndarray | None = None

    def shard(self, rank: int, world: int) -> tuple[np.ndarray, ...]:
        """Worker ``rank``'s contiguous rows of ``world`` equal shards (DDP needs the same
        number of steps on every rank: up to ``world - 1`` trailing rows are left out)."""
        per = len(self.x) // world
        part = slice(rank * per, (rank + 1) * per)
        return tuple(a[part] for a in (self.x, self.y, self.t) if a is not None)
