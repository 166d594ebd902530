"""What the CLI and the pipeline print to a terminal, a pipe or a job log: at full width."""

from __future__ import annotations

from rich.console import Console, RenderableType
from rich.padding import Padding

WIDE = 140  # columns for tables printed to a pipe or a job log (rich assumes 80 there)


def wide(console: Console) -> Console:
    """``console`` itself on a terminal; for a pipe or a job log, a console to the same file
    WIDE columns wide (rich would assume 80 there and cut tables and progress bars short)."""
    if console.is_terminal:
        return console
    return Console(width=max(console.width, WIDE), file=console.file, soft_wrap=True,
                   no_color=console.no_color)


def print_wide(console: Console, renderable: RenderableType, indent: int = 0) -> None:
    """``renderable`` at full width, indented ``indent`` columns."""
    wide(console).print(Padding(renderable, (0, 0, 0, indent), expand=False) if indent
                        else renderable)
