"""``models[].finetune``: a pretrained chat model (``pretrained``) tuned on a tenant's chat
examples before it is built, gated and served (``source: pretrained``, ``task: chat``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from maas.config.base import StrictModel

# Every projection of a Llama-style block: attention and MLP (what the measured LoRA
# run adapted; SmolLM2 is a Llama).
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class LoraConfig(StrictModel):
    """Low-rank adapters (peft): only these weights train; merged into the base after."""

    rank: int = Field(16, ge=1, le=1024, description="rank r of each adapter")
    alpha: float = Field(32.0, gt=0.0, description="scale: the update is alpha / rank x B A")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="dropout on the adapters' input")
    target_modules: list[str] = Field(
        default_factory=lambda: list(LORA_TARGETS), min_length=1,
        description="names of the Linear layers adapted (every block's)")


class FinetuneGateConfig(StrictModel):
    """When a tuned version may take live traffic: base and tuned measured side by side."""

    min_task_gain: float = Field(
        0.2, ge=-1.0, le=1.0,
        description="the tuned model's held-out task score (exact answers, 0-1) must beat the "
                    "base's by at least this")
    max_probe_drop: float = Field(
        0.05, ge=0.0, le=1.0,
        description="and its general probe score (maas/finetune/probe.jsonl, 0-1) may fall at "
                    "most this much below the base's (forgetting)")


class FinetuneRecipe(StrictModel):
    """How to fine-tune: the method, the workers, the steps and the gate (everything but the
    data). deploy.yaml's ``fine_tuning.recipe`` is the one /v1/fine_tuning jobs use."""

    validation_fraction: float = Field(
        0.1, gt=0.0, lt=0.5, description="share of the training file kept for validation")
    heldout_fraction: float = Field(
        0.1, gt=0.0, lt=0.5, description="share of the training file kept for the held-out "
                                         "score")
    method: Literal["lora", "full"] = Field(
        "lora", description="lora: adapters on the target modules, merged after; full: every "
                            "weight trains")
    lora: LoraConfig = Field(default_factory=LoraConfig, description="method lora only")
    strategy: Literal["ddp", "fsdp"] = Field(
        "ddp", description="ddp: a copy of the model per worker, gradients averaged; fsdp: "
                           "parameters sharded across workers (models that do not fit one "
                           "device)")
    workers: int = Field(2, ge=1, description="Ray Train data-parallel workers")
    use_gpu: bool = Field(False, description="one GPU per worker (nccl)")
    cpus_per_worker: float = Field(1.0, gt=0.0, description="CPUs Ray reserves per worker")
    threads_per_worker: int = Field(1, ge=1, le=256, description="torch threads per worker")
    epochs: int = Field(1, ge=1, le=100, description="passes over the training examples")
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimizer "
                                                          "steps; unset: every epoch")
    batch_size: int = Field(4, ge=1, le=1024, description="examples per step, per worker")
    grad_accum: int = Field(1, ge=1, le=1024, description="micro-batches per optimizer step")
    lr: float = Field(3e-4, gt=0.0, le=1.0, description="peak learning rate (AdamW)")
    weight_decay: float = Field(0.0, ge=0.0, le=1.0, description="AdamW's decoupled decay")
    warmup_steps: int = Field(5, ge=0, description="linear warm-up from 0 to lr")
    schedule: Literal["cosine", "linear", "constant"] = Field(
        "cosine", description="after warm-up: to 0 by the last step (cosine, linear), or flat")
    max_length: int = Field(256, ge=16, le=32_768,
                            description="tokens per example; a longer one is an error")
    packing: bool = Field(False, description="pack examples end to end into max_length windows "
                                             "instead of padding each batch")
    checkpoint_every: int = Field(10, ge=1, description="optimizer steps between checkpoints")
    max_failures: int = Field(2, ge=-1, description="worker-group restarts; -1: unlimited")
    # Steps take seconds: polling faster only takes CPU from them (0.1 s measured 11% slower
    # steps than torchrun's on 2 cores), and a worker runs one report ahead of the poll.
    report_poll_s: float = Field(1.0, gt=0.0, le=10.0,
                                 description="Ray Train controller poll interval (seconds)")
    eval_max_tokens: int = Field(128, ge=1, le=4096,
                                 description="tokens generated per held-out and probe answer")
    gate: FinetuneGateConfig = Field(default_factory=FinetuneGateConfig,
                                     description="the promotion gate, base against tuned")
    seed: int = Field(0, description="seed of the adapters, the splits and the shuffling")

    @model_validator(mode="after")
    def _method_settings(self) -> FinetuneRecipe:
        if self.method == "full" and "lora" in self.model_fields_set:
            raise ValueError("lora: only used with method: lora; remove it")
        if self.strategy == "fsdp" and self.method == "lora":
            raise ValueError("strategy: fsdp shards whole weights, use it with method: full "
                             "(LoRA's adapters are small enough for ddp)")
        if self.strategy == "fsdp" and not self.use_gpu:
            raise ValueError("strategy: fsdp shards a model across GPUs (use_gpu: true); on "
                             "CPU workers use ddp")
        return self


class FinetuneConfig(FinetuneRecipe):
    """Fine-tuning with Ray Train: the data, then the recipe (method, steps, gate)."""

    train_file: str = Field(min_length=1, description="chat examples, OpenAI's fine-tuning "
                                                      "JSONL (relative paths from deploy.yaml's "
                                                      "folder)")
    validation_file: str | None = Field(
        None, description="scored every epoch (loss, perplexity); unset: validation_fraction "
                          "of train_file")
    heldout_file: str | None = Field(
        None, description="scored once, base against tuned (the task score and the gate); "
                          "unset: heldout_fraction of train_file")


class FineTuningConfig(StrictModel):
    """``fine_tuning``: tenants fine-tune chat models themselves through OpenAI's API on /v1
    (``/v1/files``, ``/v1/fine_tuning/jobs``); each job is a Ray job running ``recipe``."""

    models: list[str] = Field(
        default_factory=list, description="chat models (names under models) tenants may "
                                          "fine-tune; empty: the fine-tuning API is off")
    recipe: FinetuneRecipe = Field(default_factory=FinetuneRecipe,
                                   description="how every job trains; a job's hyperparameters "
                                               "(n_epochs, batch_size, learning_rate_multiplier) "
                                               "adjust it")
    variant: Literal["int8", "int4"] = Field(
        "int8", description="the precision tuned models are built and served at (int4 lost "
                            "the tuned answer format in the bench, int8 kept it)")
    max_file_bytes: int = Field(16 * 2**20, ge=1024, le=2**30,
                                description="larger uploads get 413")
    max_file_lines: int = Field(50_000, ge=4, description="files with more lines get 400")
    retention_days: int = Field(30, ge=1, le=3650,
                                description="uploaded files are deleted, bytes and all, after "
                                            "this many days")
    max_active_jobs: int = Field(2, ge=1, le=100,
                                 description="queued or running jobs per tenant; more get 429")
    max_epochs: int = Field(10, ge=1, le=100, description="the most n_epochs a job may ask for")
