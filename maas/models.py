"""Model architectures built from ``models[].model``.

Input standardisation lives inside the network as buffers, so the exported ONNX graph takes
raw features (digits pixels 0..16) and a client never has to know the training statistics.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from maas.config import ModelArchConfig
from maas.data import DataError


class Standardize(nn.Module):
    """(x - mean) / std with statistics fixed at build time; saved in the state dict."""

    def __init__(self, mean: np.ndarray, std: np.ndarray):
        super().__init__()
        # Constant pixels (std 0) would divide by zero; 1.0 leaves them centred at 0.
        safe_std = np.where(std > 1e-6, std, 1.0)
        # torch.tensor copies: the arrays may be read-only views from Ray's object store.
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32))
        self.register_buffer("inv_std", torch.tensor(1.0 / safe_std, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) * self.inv_std


def dense_layers(width: int, hidden: list[int], n_outputs: int, dropout: float) -> list[nn.Module]:
    """[Linear -> ReLU -> Dropout] per hidden width, then the output Linear."""
    layers: list[nn.Module] = []
    for size in hidden:
        layers += [nn.Linear(width, size), nn.ReLU(), nn.Dropout(dropout)]
        width = size
    layers.append(nn.Linear(width, n_outputs))
    return layers


class MLP(nn.Module):
    """Standardize -> [Linear -> ReLU -> Dropout] x len(hidden) -> Linear (logits)."""

    def __init__(self, n_features: int, n_classes: int, hidden: list[int], dropout: float,
                 mean: np.ndarray, std: np.ndarray):
        super().__init__()
        self.net = nn.Sequential(Standardize(mean, std),
                                 *dense_layers(n_features, hidden, n_classes, dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class CNN(nn.Module):
    """Standardize -> reshape to (C, H, W) -> [3x3 conv -> ReLU] per channel count, a 2x2
    max-pool after the second conv (when the image is large enough) -> dense head.

    The input stays a flat row, so serving a CNN looks exactly like serving an MLP.
    """

    def __init__(self, image_shape: tuple[int, int, int], n_outputs: int, channels: list[int],
                 hidden: list[int], dropout: float, mean: np.ndarray, std: np.ndarray):
        super().__init__()
        self.standardize = Standardize(mean, std)
        self.image_shape = tuple(image_shape)
        c, h, w = self.image_shape
        convs: list[nn.Module] = []
        for index, out_channels in enumerate(channels):
            convs += [nn.Conv2d(c, out_channels, kernel_size=3, padding=1), nn.ReLU()]
            c = out_channels
            if index == 1 and h >= 4 and w >= 4:
                convs.append(nn.MaxPool2d(2))
                h, w = h // 2, w // 2
        self.features = nn.Sequential(*convs)
        self.head = nn.Sequential(nn.Flatten(),
                                  *dense_layers(c * h * w, hidden, n_outputs, dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.standardize(x).reshape(-1, *self.image_shape)
        return self.head(self.features(x))


class Classifier(nn.Module):
    """What gets exported and served: probabilities and the predicted label, not raw logits."""

    def __init__(self, logits_model: nn.Module):
        super().__init__()
        self.logits_model = logits_model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        probabilities = torch.softmax(self.logits_model(x), dim=-1)
        return probabilities, torch.argmax(probabilities, dim=-1)


def build_model(arch: ModelArchConfig, n_features: int, n_outputs: int, mean: np.ndarray,
                std: np.ndarray, image_shape: tuple[int, int, int] | None = None) -> nn.Module:
    """A fresh, untrained network for ``arch``; ``mean``/``std`` are the training statistics."""
    if arch.kind == "mlp":
        return MLP(n_features=n_features, n_classes=n_outputs, hidden=list(arch.hidden),
                   dropout=arch.dropout, mean=mean, std=std)
    shape = tuple(arch.image_shape) if arch.image_shape else image_shape
    if shape is None:
        raise DataError("model.image_shape: a cnn needs [channels, height, width]; this data "
                         "has flat rows, so set model.image_shape")
    if int(np.prod(shape)) != n_features:
        raise DataError(f"model.image_shape: {list(shape)} holds {int(np.prod(shape))} values "
                         f"but each row has {n_features} features")
    return CNN(image_shape=shape, n_outputs=n_outputs, channels=list(arch.channels),
               hidden=list(arch.hidden), dropout=arch.dropout, mean=mean, std=std)


def model_for(arch: ModelArchConfig, splits: Any) -> nn.Module:
    """:func:`build_model` sized and standardised from a :class:`maas.data.Splits`."""
    return build_model(arch, splits.n_features, splits.n_outputs, splits.x_train.mean(axis=0),
                       splits.x_train.std(axis=0), splits.image_shape)


def loss_fn(task: str) -> nn.Module:
    """Cross-entropy for classes, mean squared error for regression."""
    return nn.CrossEntropyLoss() if task == "classification" else nn.MSELoss()


@torch.no_grad()
def evaluate(model: nn.Module, x: np.ndarray, y: np.ndarray, task: str) -> dict[str, float]:
    """Loss (and accuracy for classes) of ``model`` on all of ``x``, in eval mode."""
    model.eval()
    device = next(model.parameters()).device
    out = model(torch.from_numpy(x).to(device))
    target = torch.from_numpy(y).to(device)
    if task == "regression":
        return {"loss": float(loss_fn(task)(out.reshape(target.shape), target))}
    return {"loss": float(loss_fn(task)(out, target)),
            "accuracy": float((out.argmax(dim=-1) == target).float().mean())}
