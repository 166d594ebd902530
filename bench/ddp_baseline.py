"""The hand-written baseline for bench/train_bench.py: plain PyTorch DDP under torchrun.

    torchrun --standalone --nproc_per_node 2 bench/ddp_baseline.py --rows 60000 --epochs 5 \
        --out bench/out/ddp.json

Same data (maas.data synthetic source, same seed), model, optimizer, batch size per process and
per-epoch work (a training pass, then validation on the full validation set) as maas's Ray Train
loop; the data is in memory and sharded with a DistributedSampler. Rank 0 writes the time at
which each epoch ends.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from maas.config import DataConfig, ModelArchConfig, SyntheticConfig, TrainConfig  # noqa: E402
from maas.data import load_splits  # noqa: E402
from maas.models import evaluate, model_for  # noqa: E402
from jobs.train_loop import make_optimizer, shuffled_batches  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, required=True)
    parser.add_argument("--features", type=int, default=64)
    parser.add_argument("--hidden", type=int, nargs="+", default=[256, 128])
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    started = time.time()

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    data = DataConfig(source="synthetic", synthetic=SyntheticConfig(rows=args.rows,
                                                                     features=args.features))
    splits = load_splits(data)
    model = model_for(ModelArchConfig(hidden=args.hidden), splits)
    ddp_model = DistributedDataParallel(model)
    optimizer = make_optimizer(TrainConfig(), model.parameters())
    world = dist.get_world_size()
    x = torch.from_numpy(splits.x_train[rank::world].copy())
    y = torch.from_numpy(splits.y_train[rank::world].copy())
    loss_fn = torch.nn.CrossEntropyLoss()

    ends: list[float] = []
    first_epoch_at = time.time()
    for epoch in range(args.epochs):
        ddp_model.train()
        for features, labels in shuffled_batches(x, y, args.batch_size, seed=(0, epoch, rank)):
            optimizer.zero_grad()
            loss_fn(ddp_model(features), labels).backward()
            optimizer.step()
        evaluate(model, splits.x_val, splits.y_val, "classification")
        dist.barrier()
        ends.append(time.time())
    if rank == 0:
        Path(args.out).write_text(json.dumps({
            "process_start": started, "first_epoch_at": first_epoch_at, "epoch_ends": ends,
            "train_rows": len(splits.y_train), "omp_threads": os.environ.get("OMP_NUM_THREADS")}))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
