"""One process of the torchrun baseline for bench/finetune_bench.py: the same fine-tuning steps
as a Ray Train worker (jobs.finetune_loop.train_steps), under plain torch.distributed.

    torchrun --standalone --nproc_per_node 2 bench/finetune_torchrun.py INPUTS.pkl OUT.json

INPUTS.pkl is a pickled jobs.finetune_loop.FinetuneInputs (the bench writes it); rank 0 writes
OUT.json: every step's metrics and wall time, and each rank's peak RSS.
"""

from __future__ import annotations

import json
import os
import pickle
import resource
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    import torch
    import torch.distributed as dist

    from jobs.finetune_loop import Resumed, load_model, optimizer_for, train_steps

    inputs = pickle.loads(Path(sys.argv[1]).read_bytes())
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(inputs.cfg.threads_per_worker)
    model = load_model(inputs)
    optimizer, scheduler = optimizer_for(inputs, model, world)
    wrapped = torch.nn.parallel.DistributedDataParallel(model)
    steps: list[dict[str, float]] = []
    last = [time.perf_counter()]

    def report(metrics: dict[str, float], checkpoint: bool) -> None:
        now = time.perf_counter()
        steps.append(metrics | {"wall_s": now - last[0]})
        last[0] = now

    train_steps(inputs, wrapped, optimizer, scheduler, rank, world, torch.device("cpu"),
                Resumed(), report)
    peak = torch.tensor([resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0])
    peaks = [torch.zeros(1) for _ in range(world)]
    dist.all_gather(peaks, peak)
    if rank == 0:
        Path(sys.argv[2]).write_text(json.dumps({
            "steps": steps, "peak_rss_mb": [float(p) for p in peaks],
            "pid": os.getpid()}))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
