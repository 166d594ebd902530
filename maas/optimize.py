"""Compressed variants of an exported classifier, each measured the same way, and the pick.

    models[].optimize.variants: [int8_dynamic, int8_static, prune_l1, prune_structured]

Every variant, and the fp32 export as the baseline, is scored on the same held-out rows with
ONNX Runtime: accuracy, file size, and p50 latency at batch 1 and 64 (1 intra-op thread, as a
replica runs, after a warm-up). ``select`` then picks the variant to publish: the fastest (or
smallest) whose accuracy is within ``max_accuracy_drop`` of fp32.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from maas.config import ExportConfig, OptimizeConfig, PruneConfig, QuantizeConfig
from maas.data import Splits
from maas.export import INPUT_NAME, compact_names, export_onnx, strip_debug_info
from maas.models import MLP
from maas.runtime import ort_session
from maas.variants import p50_ms, pick

log = logging.getLogger(__name__)

BASELINE = "fp32"
LATENCY_BATCHES = (1, 64)


@dataclass(frozen=True)
class VariantResult:
    name: str
    path: str
    accuracy: float
    accuracy_drop: float  # fp32 accuracy minus this one's
    size_bytes: int
    size_ratio: float  # this size / fp32 size
    p50_ms: dict[int, float]  # batch size -> p50 latency in milliseconds
    parameters: int | None  # nonzero weights of the torch model, when there is one
    eligible: bool  # within select.max_accuracy_drop

    def as_row(self) -> dict:
        return asdict(self)

    def metrics(self) -> dict[str, float]:
        """Every measure as a number (for MLflow): p50_ms_b1, p50_ms_b64, ..."""
        numbers = {"accuracy": self.accuracy, "accuracy_drop": self.accuracy_drop,
                   "size_bytes": float(self.size_bytes), "size_ratio": self.size_ratio}
        numbers |= {f"p50_ms_b{b}": ms for b, ms in self.p50_ms.items()}
        if self.parameters is not None:
            numbers["parameters"] = float(self.parameters)
        return numbers

    def cells(self) -> dict[str, str]:
        """The variants table's columns for this variant."""
        return {"accuracy": f"{self.accuracy:.4f}", "drop": f"{self.accuracy_drop:+.4f}",
                "size kB": f"{self.size_bytes / 1000:.1f}", "size x": f"{self.size_ratio:.2f}",
                "p50 ms b=1": f"{self.p50_ms[1]:.4f}", "p50 ms b=64": f"{self.p50_ms[64]:.4f}",
                "nonzero params": "-" if self.parameters is None else str(self.parameters)}


def _onnx_accuracy(session, x: np.ndarray, y: np.ndarray) -> float:
    labels = session.run(["label"], {INPUT_NAME: x})[0]
    return float(np.mean(labels == y))


def _nonzero_parameters(model: nn.Module) -> int:
    return int(sum(int(torch.count_nonzero(p)) for p in model.parameters()))


def finetune(model: nn.Module, splits: Splits, cfg: PruneConfig, seed: int) -> nn.Module:
    """A few epochs of plain single-process training, to recover accuracy after pruning."""
    torch.manual_seed(seed)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
    loss_fn = nn.CrossEntropyLoss()
    x, y = torch.from_numpy(splits.x_train), torch.from_numpy(splits.y_train)
    for _ in range(cfg.finetune_epochs):
        model.train()
        for index in torch.randperm(len(x)).split(cfg.batch_size):
            optimizer.zero_grad()
            loss_fn(model(x[index]), y[index]).backward()
            optimizer.step()
    return model.eval()


def prune_l1(model: nn.Module, splits: Splits, cfg: PruneConfig, seed: int) -> nn.Module:
    """Zero the ``amount`` smallest-magnitude weights of every Linear/Conv layer, fine-tune
    with the mask held, then make the zeros permanent. The dense ONNX file keeps its size."""
    from torch.nn.utils import prune

    pruned = copy.deepcopy(model)
    layers = [m for m in pruned.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    for layer in layers:
        prune.l1_unstructured(layer, name="weight", amount=cfg.amount)
    finetune(pruned, splits, cfg, seed)
    for layer in layers:
        prune.remove(layer, "weight")
    return pruned


def prune_structured(model: MLP, splits: Splits, cfg: PruneConfig, seed: int) -> nn.Module:
    """Remove the ``amount`` of hidden neurons with the smallest L1 weight norm from every
    hidden layer of an MLP, so the exported matrices really are smaller, then fine-tune."""
    pruned = copy.deepcopy(model)
    layers = pruned.net
    linear_at = [i for i, m in enumerate(layers) if isinstance(m, nn.Linear)]
    for this, following in zip(linear_at, linear_at[1:]):
        layer, nxt = layers[this], layers[following]
        keep_n = max(1, int(round(layer.out_features * (1.0 - cfg.amount))))
        keep = torch.argsort(layer.weight.abs().sum(dim=1), descending=True)[:keep_n]
        keep = torch.sort(keep).values
        smaller = nn.Linear(layer.in_features, keep_n)
        smaller.weight.data = layer.weight.data[keep].clone()
        smaller.bias.data = layer.bias.data[keep].clone()
        narrower = nn.Linear(keep_n, nxt.out_features)
        narrower.weight.data = nxt.weight.data[:, keep].clone()
        narrower.bias.data = nxt.bias.data.clone()
        layers[this], layers[following] = smaller, narrower
    return finetune(pruned, splits, cfg, seed)


class _Calibration:
    """ONNX Runtime's CalibrationDataReader protocol over training rows, 64 at a time."""

    def __init__(self, x: np.ndarray):
        self._batches = iter(np.array_split(x, max(1, len(x) // 64)))

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {INPUT_NAME: np.ascontiguousarray(batch)}


def _preprocessed(fp32: Path, out: Path) -> Path:
    """ORT's recommended pre-processing (shape inference, graph optimisation) before quantizing."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = out.with_name(f"{out.stem}.pre.onnx")
    quant_pre_process(str(fp32), str(prepared))
    return prepared


def quantize_dynamic(fp32: Path, out: Path) -> Path:
    """int8 weights; activations quantized on the fly at run time."""
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization import quantize_dynamic as ort_quantize_dynamic

    prepared = _preprocessed(fp32, out)
    ort_quantize_dynamic(str(prepared), str(out), weight_type=QuantType.QInt8)
    prepared.unlink(missing_ok=True)
    return _strip(out)


def quantize_static(fp32: Path, out: Path, x_train: np.ndarray, cfg: QuantizeConfig,
                    seed: int) -> Path:
    """QDQ int8 weights and activations, MinMax-calibrated on training rows."""
    from onnxruntime.quantization import QuantFormat, QuantType
    from onnxruntime.quantization import quantize_static as ort_quantize_static

    prepared = _preprocessed(fp32, out)
    rows = np.random.default_rng(seed).permutation(len(x_train))[:cfg.calibration_rows]
    # Biases stay fp32: int32 biases take the same bytes plus a scale and a zero point per
    # channel, and measured no faster here.
    ort_quantize_static(str(prepared), str(out), _Calibration(x_train[rows]),
                        quant_format=QuantFormat.QDQ, per_channel=cfg.per_channel,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        extra_options={"QuantizeBias": False})
    prepared.unlink(missing_ok=True)
    return _strip(out)


def _strip(path: Path) -> Path:
    """Drop the shape-inference value_info the quantizers leave behind (it is not needed to
    run the graph and is a quarter of a small model's file) and shorten their long names."""
    import onnx

    onnx.save(compact_names(strip_debug_info(onnx.load(str(path)))), str(path))
    return path


def build_variants(model: nn.Module, fp32: Path, splits: Splits, cfg: OptimizeConfig,
                   export_cfg: ExportConfig, workdir: Path, seed: int,
                   distill: Callable[[], nn.Module] | None = None) -> list[VariantResult]:
    """Make every configured variant of ``model`` (exported at ``fp32``) and measure them all.

    ``distill`` trains the student for the ``distill`` variant; the caller supplies it because
    that training runs as a Ray Train job (jobs.train.train_student)."""
    made: dict[str, tuple[Path, int | None]] = {BASELINE: (fp32, _nonzero_parameters(model))}

    def from_torch(name: str, make: Callable[[], nn.Module]) -> None:
        variant = make()
        path = export_onnx(variant, splits.n_features, workdir / f"{name}.onnx", export_cfg)
        made[name] = (path, _nonzero_parameters(variant))

    for name in cfg.variants:
        if name == "int8_dynamic":
            made[name] = (quantize_dynamic(fp32, workdir / f"{name}.onnx"), None)
        elif name == "int8_static":
            made[name] = (quantize_static(fp32, workdir / f"{name}.onnx", splits.x_train,
                                          cfg.quantize, seed), None)
        elif name == "prune_l1":
            from_torch(name, lambda: prune_l1(model, splits, cfg.prune, seed))
        elif name == "prune_structured":
            if not isinstance(model, MLP):
                raise ValueError("optimize.variants: prune_structured needs an MLP")
            from_torch(name, lambda: prune_structured(model, splits, cfg.prune, seed))
        elif name == "distill":
            if distill is None:
                raise ValueError("optimize.variants: distill needs a student trainer")
            from_torch(name, distill)
    return _measure(made, splits, cfg)


def _latency(sessions: dict[str, object], x: np.ndarray, runs: int) -> dict[str, float]:
    """p50 ms of each variant's session on the same rows ``x``."""
    return p50_ms({name: (lambda s=session: s.run(None, {INPUT_NAME: x}))
                   for name, session in sessions.items()}, runs)


def _measure(made: dict[str, tuple[Path, int | None]], splits: Splits,
             cfg: OptimizeConfig) -> list[VariantResult]:
    sessions = {name: ort_session(path, threads=1) for name, (path, _) in made.items()}
    accuracies = {name: _onnx_accuracy(session, splits.x_test, splits.y_test)
                  for name, session in sessions.items()}
    base_size = made[BASELINE][0].stat().st_size
    latency = {b: _latency(sessions, np.ascontiguousarray(
        np.resize(splits.x_test, (b, splits.n_features))), cfg.latency_runs)
        for b in LATENCY_BATCHES}
    results = []
    for name, (path, parameters) in made.items():
        accuracy = accuracies[name]
        drop = accuracies[BASELINE] - accuracy
        results.append(VariantResult(
            name=name, path=str(path), accuracy=accuracy, accuracy_drop=drop,
            size_bytes=path.stat().st_size, size_ratio=path.stat().st_size / base_size,
            p50_ms={b: latency[b][name] for b in LATENCY_BATCHES},
            parameters=parameters, eligible=drop <= cfg.select.max_accuracy_drop + 1e-12))
    return results


def select(results: list[VariantResult], cfg: OptimizeConfig) -> VariantResult:
    """The fastest (or smallest) eligible variant; fp32 is always eligible."""
    chosen = pick(results, cfg.select.policy, lambda r: r.eligible or r.name == BASELINE,
                  lambda r: r.p50_ms[cfg.select.latency_batch])
    assert chosen is not None  # fp32 is always among the results, and always eligible
    return chosen
