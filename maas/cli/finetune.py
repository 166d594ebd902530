"""``maas finetune``: chat fine-tuning data, checked and generated.

    maas finetune check FILE.jsonl              every line checked; the first bad one named
    maas finetune example orders OUT_DIR        the shipped example: train / validation /
                                                heldout JSONL (seeded)

A model with a ``finetune`` section in deploy.yaml is tuned by ``maas run`` (jobs.tuned).
"""

from __future__ import annotations

from pathlib import Path

import typer

from maas.cli.common import console, guarded

finetune_app = typer.Typer(no_args_is_help=True,
                           help="Fine-tuning data: check a JSONL file, write the shipped example.")


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
