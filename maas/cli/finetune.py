"""``maas finetune``: chat fine-tuning data, checked and generated.

    maas finetune check FILE.jsonl              every line checked; the first bad one named
    maas finetune example orders OUT_DIR        the shipped example: train / validation /
                                                heldout JSONL (seeded)
    maas finetune jobs [--tenant acme]          tenants' fine-tuning jobs (/v1/fine_tuning)

A model with a ``finetune`` section in deploy.yaml is tuned by ``maas run`` (jobs.tuned);
tenants tune the models of ``fine_tuning.models`` over /v1 (jobs.finetune_service).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from maas.cli.common import (ConfigOption, JsonOption, console, deploy_config, echo_json,
                             guarded, print_table)

finetune_app = typer.Typer(no_args_is_help=True,
                           help="Fine-tuning: check a JSONL file, write the shipped example, "
                                "list tenants' jobs.")


@finetune_app.command("check")
def check(path: Path = typer.Argument(..., help="chat examples, OpenAI's fine-tuning JSONL")
          ) -> None:
    """Validate every line; print the example count and the file's sha256."""
    from maas.finetune.examples import read_jsonl

    data = guarded(lambda: read_jsonl(path))
    console.print(f"OK: {path}: {data.rows} examples, sha256 {data.sha256}", highlight=False)


@finetune_app.command("example")
def example(name: str = typer.Argument(..., help="the example: orders"),
            out: Path = typer.Argument(..., help="folder to write train/validation/heldout.jsonl"),
            seed: int = typer.Option(0, help="the generator's seed: the same seed, the same "
                                             "files")) -> None:
    """Write a shipped fine-tuning example: ``orders`` turns order sentences into JSON."""
    from maas.finetune import orders

    if name != "orders":
        console.print(f"no example {name!r}; the shipped one is 'orders'", style="red")
        raise typer.Exit(2)
    paths = orders.generate(seed).write(out)
    for split, path in paths.items():
        rows = len(path.read_text().splitlines())
        console.print(f"{split}: {path} ({rows} examples)", highlight=False)


@finetune_app.command("jobs")
def jobs(tenant: Optional[str] = typer.Option(None, "--tenant", "-t"),
         limit: int = typer.Option(50, min=1, help="the newest this many"),
         config: Path = ConfigOption, as_json: bool = JsonOption) -> None:
    """Tenants' fine-tuning jobs, newest first: status, base, tuned model, trained tokens."""
    from rich.table import Table

    from maas.access import iso
    from maas.finetune.runs import JobStore

    cfg = deploy_config(config)
    found = guarded(lambda: JobStore(cfg.access_store).recent(tenant, limit))
    if as_json:
        echo_json([{"id": j.job_id, "tenant": j.tenant, "model": j.base, "status": j.status,
                    "fine_tuned_model": j.fine_tuned_model, "trained_tokens": j.trained_tokens,
                    "created_at": iso(j.created_at), "finished_at": iso(j.finished_at),
                    "error": j.error.message if j.error else None} for j in found])
        return
    table = Table(title="fine-tuning jobs")
    for column in ("job", "tenant", "base", "status", "fine-tuned model", "tokens", "created"):
        table.add_column(column)
    for j in found:
        table.add_row(j.job_id, j.tenant, j.base, j.status + (f": {j.error.message[:60]}"
                                                             if j.error else ""),
                      j.fine_tuned_model or "-", str(j.trained_tokens or "-"),
                      iso(j.created_at) or "-")
    print_table(table)
