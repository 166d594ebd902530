"""Model architectures built from ``models[].model``.

Input standardisation lives inside the network as buffers, so the exported ONNX graph takes
raw features (digits pixels 0..16) and a client never has to know the training statistics.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from maas.config import ModelArchConfig


class Standardize(nn.Module):
    """(x - mean) / std with statistics fixed at build time; saved in the state dict."""

    def __init__(self, mean: np.ndarray, std: np.ndarray):
        super().__init__()
        # Constant pixels (std 0) would divide by zero; 1.0 leaves them centred at 0.
        safe_std = np.where(std > 1e-6, std, 1.0)
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("inv_std", torch.as_tensor(1.0 / safe_std, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) * self.inv_std


class MLP(nn.Module):
    """Standardize -> [Linear -> ReLU -> Dropout] x len(hidden) -> Linear (logits)."""

    def __init__(self, n_features: int, n_classes: int, hidden: list[int], dropout: float,
                 mean: np.ndarray, std: np.ndarray):
        super().__init__()
        layers: list[nn.Module] = [Standardize(mean, std)]
        width = n_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU(), nn.Dropout(dropout)]
            width = h
        layers.append(nn.Linear(width, n_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Classifier(nn.Module):
    """What gets exported and served: probabilities and the predicted label, not raw logits."""

    def __init__(self, logits_model: nn.Module):
        super().__init__()
        self.logits_model = logits_model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        probabilities = torch.softmax(self.logits_model(x), dim=-1)
        return probabilities, torch.argmax(probabilities, dim=-1)


def build_model(arch: ModelArchConfig, x_train: np.ndarray, n_classes: int) -> nn.Module:
    """A fresh, untrained network for ``arch``, sized and standardised from ``x_train``."""
    if arch.kind == "mlp":
        return MLP(
            n_features=int(x_train.shape[1]),
            n_classes=n_classes,
            hidden=list(arch.hidden),
            dropout=arch.dropout,
            mean=x_train.mean(axis=0),
            std=x_train.std(axis=0),
        )
    raise ValueError(f"model.kind: unknown kind {arch.kind!r}; supported: 'mlp'")


@torch.no_grad()
def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    """Share of rows whose argmax logit equals the label (model put in eval mode)."""
    model.eval()
    device = next(model.parameters()).device
    logits = model(torch.from_numpy(x).to(device))
    return float((logits.argmax(dim=-1).cpu().numpy() == y).mean())
