"""Fine-tuning a pretrained chat model with Ray Train, started from the pipeline driver.

    python -m jobs.pipeline deploy.yaml     # a chat model with a `finetune` section comes here

The driver reads and checks the chat examples (maas.finetune.examples), splits off validation
and held-out rows when no files are given for them, tokenizes every row with the base model's
chat template (maas.finetune.tokens), and starts ``finetune.workers`` workers running
:func:`jobs.finetune_loop.finetune_loop_per_worker`. The trained weights (LoRA adapters merged
into the base) are saved as a Hugging Face directory, which the LLM path then builds,
measures, gates, registers and serves like any pretrained model.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import ray.train
import ray.train.torch
import torch

from jobs.finetune_loop import STATE_FILE, FinetuneInputs, finetune_loop_per_worker, load_model
from maas.config import config_relative
from maas.config.finetune import FinetuneConfig
from maas.finetune.examples import ChatData, ChatExample, FinetuneDataError, read_jsonl
from maas.finetune.tokens import encode_all
from maas.llm.convert import atomic_build


@dataclass(frozen=True)
class FinetuneData:
    """The three splits, and the training file's lineage."""

    train: list[ChatExample]
    validation: list[ChatExample]
    heldout: list[ChatExample]
    sha256: str  # of the training file (the validation and held-out files too, when given)
    train_file: str

    def lineage(self) -> dict[str, str]:
        """The data's part of a tuned version's lineage tags."""
        return {"data_sha256": self.sha256, "train_rows": str(len(self.train)),
                "validation_rows": str(len(self.validation)),
                "heldout_rows": str(len(self.heldout)), "train_file": self.train_file}

    def tags(self) -> dict[str, str]:
        """The same, as MLflow run tags."""
        return {f"maas.finetune.{k}": v for k, v in self.lineage().items()}


def load_data(cfg: FinetuneConfig, base_dir: Path) -> FinetuneData:
    """The examples of ``cfg.train_file`` (and the validation and held-out files), split by
    the configured fractions where a file is not given; a 400 naming the line otherwise."""
    train = read_jsonl(config_relative(cfg.train_file, base_dir), min_rows=4)
    digest = hashlib.sha256(train.sha256.encode())
    rows = list(train.examples)
    order = np.random.default_rng(cfg.seed).permutation(len(rows))
    rows = [rows[i] for i in order]

    def taken(ref: str | None, fraction: float) -> list[ChatExample]:
        nonlocal rows
        if ref is not None:
            data: ChatData = read_jsonl(config_relative(ref, base_dir))
            digest.update(data.sha256.encode())
            return data.examples
        count = max(1, int(round(fraction * len(train.examples))))
        part, rows = rows[:count], rows[count:]
        return part

    heldout = taken(cfg.heldout_file, cfg.heldout_fraction)
    validation = taken(cfg.validation_file, cfg.validation_fraction)
    if len(rows) < cfg.workers:
        raise FinetuneDataError(f"{len(rows)} training examples left after the splits, fewer "
                                f"than finetune.workers ({cfg.workers})", param="training_file")
    return FinetuneData(rows, validation, heldout, digest.hexdigest()
                        if cfg.heldout_file or cfg.validation_file else train.sha256,
                        cfg.train_file)


@dataclass(frozen=True)
class FinetuneOutcome:
    """What the driver gets back: the tuned model as a Hugging Face directory, the metrics of
    the last report, and where Ray Train kept the run."""

    hf_dir: Path
    metrics: dict[str, Any]
    checkpoint_path: str
    run_path: str
    steps: int


def tokenizer_of(hf_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(hf_dir))


def finetune_inputs(cfg: FinetuneConfig, data: FinetuneData, base_hf: Path,
                    tokenizer: Any) -> FinetuneInputs:
    """What the workers get: the rows tokenized with the base model's (``tokenizer_of``) chat
    template."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else \
        tokenizer.eos_token_id
    return FinetuneInputs(hf_dir=str(base_hf), cfg=cfg, pad_id=int(pad_id),
                          train=encode_all(data.train, tokenizer, cfg.max_length),
                          validation=encode_all(data.validation, tokenizer, cfg.max_length))


def fit(inputs: FinetuneInputs, storage_path: Path, run_name: str,
        callbacks: list[ray.train.UserCallback]) -> ray.train.Result:
    """The Ray Train run: ``workers`` workers, a checkpoint every ``checkpoint_every`` steps,
    ``max_failures`` restarts of the worker group from the newest one."""
    cfg = inputs.cfg
    # Read by the driver and handed by Ray Train to the controller it starts.
    os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = str(cfg.report_poll_s)
    resources = {"CPU": cfg.cpus_per_worker} | ({"GPU": 1} if cfg.use_gpu else {})
    trainer = ray.train.torch.TorchTrainer(
        finetune_loop_per_worker, train_loop_config={"inputs": inputs},
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.workers, use_gpu=cfg.use_gpu,
                                               resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            name=run_name, storage_path=str(storage_path),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
            callbacks=callbacks))
    return trainer.fit()


def run_finetune(cfg: FinetuneConfig, data: FinetuneData, base_hf: Path, out_dir: Path,
                 storage_path: Path, run_name: str,
                 callbacks: list[ray.train.UserCallback]) -> FinetuneOutcome:
    """Train on the connected cluster and save the merged model in ``out_dir``. The same
    ``run_name`` and ``storage_path`` as an interrupted run resume it from its newest
    checkpoint."""
    tokenizer = tokenizer_of(base_hf)
    inputs = finetune_inputs(cfg, data, base_hf, tokenizer)
    result = fit(inputs, storage_path, run_name, callbacks)
    if result.checkpoint is None:
        raise RuntimeError(f"fine-tuning finished without a checkpoint (see the Ray Train "
                           f"logs under {result.path})")
    checkpoint = result.checkpoint
    atomic_build(out_dir, lambda folder: _merge(inputs, checkpoint, tokenizer, folder))
    return FinetuneOutcome(hf_dir=out_dir, metrics=dict(result.metrics),
                           checkpoint_path=checkpoint.path, run_path=result.path,
                           steps=inputs.total_steps(cfg.workers))


def _merge(inputs: FinetuneInputs, checkpoint: ray.train.Checkpoint, tokenizer: Any,
           folder: Path) -> None:
    """The base with the checkpoint's trained weights (LoRA: merged into the base weights),
    saved as a plain Hugging Face model the onnxruntime-genai builder reads."""
    model = load_model(inputs)
    with checkpoint.as_directory() as ckpt:
        state = torch.load(Path(ckpt) / STATE_FILE, map_location="cpu", weights_only=False)
    missing = set(state["trainable"]) - set(model.state_dict())
    if missing:
        raise RuntimeError(f"the checkpoint has weights the model lacks: {sorted(missing)[:3]}")
    model.load_state_dict(state["trainable"], strict=False)
    if inputs.cfg.method == "lora":
        model = model.merge_and_unload()
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
