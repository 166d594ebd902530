"""What every Ray Train worker of a fine-tune runs: its share of the chat examples, DDP (or
FSDP) steps, validation, reports and rank 0's checkpoints.

    python -m jobs.pipeline deploy.yaml     # jobs.finetune starts the workers with this loop

Rank r trains on examples r, r + N, r + 2N, ... (the same count on every rank, as DDP needs).
The learning rate warms up, then follows the schedule to the last step. Every
``checkpoint_every`` steps and at the end, rank 0 saves what trains (the adapters for LoRA,
every weight for full tuning) with the optimizer and schedule; a restarted worker group
resumes from the newest checkpoint, at the step after it.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import ray.train
import ray.train.torch
import torch

from maas.config.finetune import FinetuneConfig
from maas.finetune.tokens import Encoded, batches

STATE_FILE = "trainable.pt"


def planned_steps(cfg: FinetuneConfig, rows: int, world: int) -> tuple[int, int]:
    """(optimizer steps per epoch, steps in all) for ``rows`` training examples over
    ``world`` workers: every rank takes ``rows // world`` of them, the rest wait a turn."""
    per_epoch = max(1, (rows // world) // (cfg.batch_size * cfg.grad_accum))
    total = cfg.epochs * per_epoch
    return per_epoch, min(total, cfg.max_steps) if cfg.max_steps else total


@dataclass(frozen=True)
class FinetuneInputs:
    """Everything a worker needs, sent once with the loop config."""

    hf_dir: str  # the base model as a Hugging Face directory (every node reads it)
    cfg: FinetuneConfig
    train: list[Encoded]
    validation: list[Encoded]
    pad_id: int

    def steps_per_epoch(self, world: int) -> int:
        return planned_steps(self.cfg, len(self.train), world)[0]

    def total_steps(self, world: int) -> int:
        return planned_steps(self.cfg, len(self.train), world)[1]


def load_model(inputs: FinetuneInputs) -> torch.nn.Module:
    """The base model in fp32, with LoRA adapters when the method is lora."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(inputs.hf_dir, dtype=torch.float32)
    cfg = inputs.cfg
    if cfg.method == "full":
        return model
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(cfg.seed)  # the adapters' initial A matrices
    return get_peft_model(model, LoraConfig(
        r=cfg.lora.rank, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
        target_modules=list(cfg.lora.target_modules), task_type="CAUSAL_LM"))


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """What trains: the adapters' weights (LoRA), or every weight (full)."""
    names = {name for name, p in model.named_parameters() if p.requires_grad}
    return {k: v.detach().clone() for k, v in model.state_dict().items() if k in names}


def _schedule(cfg: FinetuneConfig, total: int) -> Any:
    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / (cfg.warmup_steps + 1)
        if cfg.schedule == "constant":
            return 1.0
        done = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
        return max(0.0, 1.0 - done) if cfg.schedule == "linear" else \
            0.5 * (1.0 + math.cos(math.pi * min(1.0, done)))
    return factor


@dataclass
class Resumed:
    step: int = 0
    from_step: int = -1


def _saved_state() -> dict[str, Any] | None:
    """The newest checkpoint of this run (Ray Train hands it to a restarted group)."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder:
        return torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=False)


def _tensors(batch: Any, device: torch.device) -> dict[str, torch.Tensor]:
    return {"input_ids": torch.from_numpy(batch.input_ids).to(device),
            "attention_mask": torch.from_numpy(batch.attention_mask).to(device),
            "labels": torch.from_numpy(batch.labels).to(device)}


def validation_loss(model: torch.nn.Module, rows: list[Encoded], pad_id: int,
                    batch_size: int, device: torch.device) -> float:
    """Mean cross-entropy per learnt token over ``rows`` (every rank scores all of them, so
    an FSDP model's shards all take part)."""
    model.eval()
    total, tokens = 0.0, 0
    with torch.no_grad():
        for batch in batches(rows, batch_size, pad_id):
            count = batch.trained_tokens
            if count:
                total += float(model(**_tensors(batch, device)).loss) * count
                tokens += count
    model.train()
    return total / max(tokens, 1)


def _micro_batches(inputs: FinetuneInputs, rank: int, world: int, epoch: int) -> list[Any]:
    """This rank's micro-batches of one epoch, shuffled by (seed, epoch) the same on every
    rank, then dealt out by rank."""
    cfg = inputs.cfg
    order = np.random.default_rng([cfg.seed, epoch]).permutation(len(inputs.train))
    per_rank = len(inputs.train) // world
    mine = order[rank::world][:per_rank]
    return list(batches(inputs.train, cfg.batch_size, inputs.pad_id, order=mine,
                        mode="packing" if cfg.packing else "padding", max_length=cfg.max_length))


Report = Callable[[dict[str, float], bool], None]  # (metrics, save a checkpoint now)


def train_steps(inputs: FinetuneInputs, wrapped: torch.nn.Module, optimizer: Any,
                scheduler: Any, rank: int, world: int, device: torch.device,
                resumed: Resumed, report: Report) -> None:
    """Optimizer steps from ``resumed.step`` to the last, each reported with its metrics
    (validation at each epoch's end); the same code under Ray Train and under torchrun
    (bench/finetune_bench.py)."""
    cfg = inputs.cfg
    total, per_epoch = inputs.total_steps(world), inputs.steps_per_epoch(world)
    step = resumed.step
    wrapped.train()
    while step < total:
        epoch = step // per_epoch
        micro = _micro_batches(inputs, rank, world, epoch)
        for first in range((step % per_epoch) * cfg.grad_accum, per_epoch * cfg.grad_accum,
                           cfg.grad_accum):
            if step >= total:
                break
            started = time.perf_counter()
            loss_sum, tokens = 0.0, 0
            optimizer.zero_grad()
            for batch in micro[first:first + cfg.grad_accum]:
                loss = wrapped(**_tensors(batch, device)).loss / cfg.grad_accum
                loss.backward()
                loss_sum += loss.item() * cfg.grad_accum
                tokens += int(batch.attention_mask.sum())
            optimizer.step()
            scheduler.step()
            elapsed = time.perf_counter() - started
            metrics = {"step": step, "epoch": epoch, "train_loss": loss_sum / cfg.grad_accum,
                       "lr": scheduler.get_last_lr()[0], "total_steps": total,
                       "tokens_per_s": tokens * world / max(elapsed, 1e-9), "step_s": elapsed,
                       "restored_from_step": resumed.from_step}
            last = step == total - 1
            if (last or (step + 1) % per_epoch == 0) and inputs.validation:
                val = validation_loss(wrapped, inputs.validation, inputs.pad_id,
                                      cfg.batch_size, device)
                metrics |= {"val_loss": val, "val_perplexity": math.exp(min(val, 50.0))}
            report(metrics, last or (step + 1) % cfg.checkpoint_every == 0)
            step += 1


def optimizer_for(inputs: FinetuneInputs, model: torch.nn.Module, world: int) -> tuple[Any, Any]:
    """AdamW over what trains, and the warm-up-then-schedule learning rate."""
    cfg = inputs.cfg
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(
        optimizer, _schedule(cfg, inputs.total_steps(world)))


def finetune_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker."""
    inputs: FinetuneInputs = loop_config["inputs"]
    cfg = inputs.cfg
    torch.set_num_threads(cfg.threads_per_worker)
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    model = load_model(inputs)
    state = _saved_state()
    if state is not None:  # weights before wrapping: FSDP shards what it is given
        model.load_state_dict(state["trainable"], strict=False)
    fsdp = cfg.strategy == "fsdp"
    wrapped = ray.train.torch.prepare_model(model, parallel_strategy="fsdp" if fsdp else "ddp")
    # FSDP replaces the parameters with flat shards: its optimizer is built on the wrapper.
    optimizer, scheduler = optimizer_for(inputs, wrapped if fsdp else model, world)
    resumed = Resumed()
    if state is not None:
        scheduler.load_state_dict(state["scheduler"])
        if state["optimizer"] is not None:
            optimizer.load_state_dict(state["optimizer"])
        resumed = Resumed(step=state["step"] + 1, from_step=state["step"])
    train_steps(inputs, wrapped, optimizer, scheduler, rank, world,
                ray.train.torch.get_device(), resumed,
                lambda metrics, checkpoint: _report(metrics, model, wrapped, optimizer,
                                                    scheduler, checkpoint, fsdp))


def _full_state(wrapped: torch.nn.Module) -> dict[str, torch.Tensor]:
    """An FSDP model's whole weights, gathered on rank 0 (every rank must call this)."""
    from torch.distributed.fsdp import FullStateDictConfig, StateDictType
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    with FSDP.state_dict_type(wrapped, StateDictType.FULL_STATE_DICT,
                              FullStateDictConfig(offload_to_cpu=True, rank0_only=True)):
        return wrapped.state_dict()


def _report(metrics: dict[str, float], model: torch.nn.Module, wrapped: torch.nn.Module,
            optimizer: Any, scheduler: Any, checkpoint: bool, fsdp: bool) -> None:
    """Report ``metrics``, with rank 0's checkpoint when ``checkpoint``: what trains, the
    optimizer (DDP; under FSDP its state is sharded, and a resumed run starts AdamW's moments
    afresh) and the schedule."""
    rank = ray.train.get_context().get_world_rank()
    weights = (_full_state(wrapped) if fsdp else trainable_state(model)) if checkpoint else {}
    with tempfile.TemporaryDirectory() as tmp:
        saved = None
        if checkpoint and rank == 0:
            torch.save({"trainable": weights,
                        "optimizer": None if fsdp else optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(), "step": int(metrics["step"])},
                       Path(tmp) / STATE_FILE)
            (Path(tmp) / "metrics.json").write_text(json.dumps(metrics))
            saved = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report(metrics, checkpoint=saved)
