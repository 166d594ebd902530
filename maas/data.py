"""Datasets for training and evaluation, split the same way on every worker and the driver.

The split is a pure function of ``DataConfig`` (source, test fraction, seed), so Ray Train
workers, the export parity check and the smoke prediction all see the same held-out rows
without shipping arrays between processes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from maas.config import DataConfig


@dataclass(frozen=True)
class Splits:
    """Train and held-out arrays: features float32 (n, d), labels int64 (n,)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    n_classes: int

    @property
    def n_features(self) -> int:
        return int(self.x_train.shape[1])

    def fingerprint(self) -> str:
        """sha256 over every array, so a run records exactly which data it saw."""
        digest = hashlib.sha256()
        for arr in (self.x_train, self.y_train, self.x_test, self.y_test):
            digest.update(str(arr.shape).encode())
            digest.update(np.ascontiguousarray(arr).tobytes())
        return digest.hexdigest()


def _load_source(source: str) -> tuple[np.ndarray, np.ndarray]:
    if source == "sklearn:digits":
        # Ships inside scikit-learn: nothing is downloaded.
        from sklearn.datasets import load_digits

        bunch = load_digits()
        return bunch.data.astype(np.float32), bunch.target.astype(np.int64)
    raise ValueError(f"data.source: unknown source {source!r}; supported: 'sklearn:digits'")


def load_splits(cfg: DataConfig) -> Splits:
    """Load ``cfg.source`` and split it, stratified by label, with ``cfg.seed``."""
    from sklearn.model_selection import train_test_split

    x, y = _load_source(cfg.source)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=cfg.test_fraction, random_state=cfg.seed, stratify=y
    )
    return Splits(
        x_train=np.ascontiguousarray(x_train),
        y_train=np.ascontiguousarray(y_train),
        x_test=np.ascontiguousarray(x_test),
        y_test=np.ascontiguousarray(y_test),
        n_classes=int(y.max()) + 1,
    )
