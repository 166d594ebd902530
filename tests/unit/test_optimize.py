"""Optimize variants: each is real, smaller where it should be, scored the same way; the pick."""


import onnx
import pytest

from maas.config import DataConfig, ExportConfig, ModelArchConfig, OptimizeConfig, PruneConfig
from maas.data import load_splits
from maas.export import export_onnx
from maas.models import model_for
from maas.optimize import VariantResult, build_variants, finetune, select

pytestmark = pytest.mark.unit
ALL = ["int8_dynamic", "int8_static", "prune_l1", "prune_structured"]


@pytest.fixture(scope="module")
def variants(tmp_path_factory):
    splits = load_splits(DataConfig())
    model = model_for(ModelArchConfig(hidden=[128, 64]), splits)
    finetune(model, splits, PruneConfig(finetune_epochs=15, lr=2e-3, batch_size=32), seed=0)
    workdir = tmp_path_factory.mktemp("variants")
    fp32 = export_onnx(model, splits.n_features, workdir / "fp32.onnx", ExportConfig())
    cfg = OptimizeConfig(variants=ALL, latency_runs=20)
    return {r.name: r for r in build_variants(model, fp32, splits, cfg, ExportConfig(), workdir,
                                              seed=0)}


def test_every_variant_is_measured_against_fp32(variants):
    assert set(variants) == {"fp32", *ALL}
    assert variants["fp32"].accuracy >= 0.95 and variants["fp32"].accuracy_drop == 0.0
    for r in variants.values():
        onnx.checker.check_model(onnx.load(r.path))
        assert set(r.p50_ms) == {1, 64} and all(v > 0 for v in r.p50_ms.values())


def test_int8_files_are_smaller_and_keep_accuracy(variants):
    for name in ("int8_dynamic", "int8_static"):
        assert variants[name].size_ratio < 0.45, name
        assert variants[name].accuracy_drop <= 0.02, name
    graph = onnx.load(variants["int8_static"].path).graph
    assert any(n.op_type == "QuantizeLinear" for n in graph.node)  # QDQ format


def test_structured_pruning_removes_neurons_for_real(variants):
    fp32, pruned = variants["fp32"], variants["prune_structured"]
    assert pruned.parameters < 0.5 * fp32.parameters
    assert pruned.size_ratio < 0.5
    matrices = sorted(tuple(sorted(init.dims)) for init in onnx.load(pruned.path).graph.initializer
                      if len(init.dims) == 2)
    assert matrices == [(10, 32), (32, 64), (64, 64)]  # hidden 128 -> 64 and 64 -> 32 neurons


def test_l1_pruning_zeroes_half_the_weights_but_not_the_file(variants):
    assert variants["prune_l1"].parameters < 0.55 * variants["fp32"].parameters
    assert variants["prune_l1"].size_ratio == pytest.approx(1.0, abs=0.01)


def _result(name: str, drop: float, b64: float, size: int) -> VariantResult:
    return VariantResult(name=name, path=f"/{name}", accuracy=0.97 - drop, accuracy_drop=drop,
                         size_bytes=size, size_ratio=size / 100, p50_ms={1: 1.0, 64: b64},
                         parameters=None, eligible=drop <= 0.01)


def test_select_takes_the_fastest_or_smallest_within_the_accuracy_budget():
    results = [_result("fp32", 0.0, 5.0, 100), _result("fast_but_lossy", 0.05, 1.0, 30),
               _result("quick", 0.005, 2.0, 60), _result("tiny", 0.01, 4.0, 20)]
    assert select(results, OptimizeConfig()).name == "quick"
    assert select(results, OptimizeConfig(select={"policy": "smallest"})).name == "tiny"
    only_lossy = [results[0], results[1]]
    assert select(only_lossy, OptimizeConfig()).name == "fp32"


def test_variants_need_a_classifier_and_structured_pruning_an_mlp():
    from maas.config import ConfigError, parse_config

    with pytest.raises(ConfigError, match="prune_structured removes MLP neurons"):
        parse_config({"models": [{"name": "m", "model": {"kind": "cnn"},
                                  "optimize": {"variants": ["prune_structured"]}}]})
    with pytest.raises(ConfigError, match="ranked by accuracy"):
        parse_config({"models": [{"name": "m", "train": {"loss": "mse"},
                                  "optimize": {"variants": ["int8_dynamic"]}}]})


def test_distillation_loss_blends_soft_targets_and_labels():
    import torch

    from jobs.train_loop import distillation_loss
    from maas.config import DistillConfig

    student = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0]])
    labels = torch.tensor([0, 2])
    hard_only = distillation_loss(student, torch.zeros_like(student), labels,
                                  DistillConfig(alpha=0.0))
    assert hard_only == pytest.approx(float(torch.nn.functional.cross_entropy(student, labels)))
    same = distillation_loss(student, student.clone(), labels, DistillConfig(alpha=1.0))
    assert same == pytest.approx(0.0, abs=1e-6)  # a student equal to its teacher has no soft loss
    apart = distillation_loss(student, -student, labels, DistillConfig(alpha=1.0))
    assert apart > 0.1


def test_distill_variant_needs_its_trainer(tmp_path):
    splits = load_splits(DataConfig())
    model = model_for(ModelArchConfig(hidden=[16]), splits)
    fp32 = export_onnx(model, splits.n_features, tmp_path / "fp32.onnx", ExportConfig())
    with pytest.raises(ValueError, match="distill needs a student trainer"):
        build_variants(model, fp32, splits, OptimizeConfig(variants=["distill"]), ExportConfig(),
                       tmp_path, seed=0)
