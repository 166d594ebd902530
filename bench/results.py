"""Shared by the bench scripts: rewrite one section of bench/RESULTS.md, leaving the others."""

from __future__ import annotations

from pathlib import Path

RESULTS_MD = Path(__file__).resolve().parent / "RESULTS.md"


def update_section(title: str, lines: list[str], results_md: Path = RESULTS_MD) -> None:
    """Replace the ``## title`` section (up to the next ``## ``) with ``lines``, or append it."""
    header = f"## {title}"
    section = "\n".join([header, "", *lines]) + "\n"
    text = results_md.read_text() if results_md.exists() else "# Benchmark results\n\n"
    if header in text:
        head, _, rest = text.partition(header)
        tail = rest[rest.find("\n## ") + 1:] if "\n## " in rest else ""
        text = head + section + ("\n" + tail if tail else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    results_md.write_text(text)
