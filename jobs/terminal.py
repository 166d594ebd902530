"""What the pipeline shows on the terminal, and where everything else goes.

By default only maas's own lines reach the terminal: stage lines, a progress bar per training
run, the summary. Everything else the process prints (Ray's driver logs, MLflow's and the ML
libraries' messages and warnings, native libraries' output) is written to a log file, moved
into the Ray session's log folder once the cluster is known, where the dashboard shows it next
to the workers' logs; the workers' own output stays in their session files and is not
streamed here. ``--verbose`` leaves every stream as it is and streams the workers' logs too.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from rich.console import Console


@dataclass
class Terminal:
    """``console``: maas's lines (stderr with ``--json``); ``errors``: why a run failed
    (stderr); ``data``: stdout, for ``--json``; ``log``: where the rest goes (None with
    ``--verbose``)."""

    console: Console
    errors: Console
    data: IO[str]
    log: Path | None = None
    _log_file: IO[str] | None = field(default=None, repr=False)

    def move_log(self, folder: Path | None, name: str) -> None:
        """Continue the log as ``folder/name`` (its lines so far copied there); where that
        cannot be written, the log stays where it is."""
        if self._log_file is None or self.log is None or folder is None:
            return
        target = folder / name
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            moved = open(target, "a", encoding="utf-8", buffering=1)
        except OSError as exc:  # e.g. a session folder of another user's head
            print(f"maas: the log stays at {self.log}: {target} is not writable ({exc})",
                  file=sys.stderr, flush=True)
            return
        with open(self.log, encoding="utf-8", errors="replace") as written:
            shutil.copyfileobj(written, moved)
        moved.flush()
        os.dup2(moved.fileno(), 1)
        os.dup2(moved.fileno(), 2)
        self._log_file.close()
        self.log.unlink(missing_ok=True)
        self._log_file, self.log = moved, target


@contextmanager
def terminal(verbose: bool, json_out: bool, log_dir: Path, name: str) -> Iterator[Terminal]:
    """The pipeline's terminal: quiet (the rest into ``log_dir/name``) unless ``verbose``."""
    if verbose:
        yield Terminal(Console(file=sys.stderr if json_out else sys.stdout, soft_wrap=True),
                       Console(stderr=True, soft_wrap=True), sys.stdout)
        return
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / name
    log_file = open(log, "a", encoding="utf-8", buffering=1)  # first: nothing to undo if not
    sys.stdout.flush()
    sys.stderr.flush()
    saved_out, saved_err = os.dup(1), os.dup(2)
    out = os.fdopen(os.dup(saved_out), "w", encoding="utf-8", buffering=1)
    err = os.fdopen(os.dup(saved_err), "w", encoding="utf-8", buffering=1)
    shown = Terminal(Console(file=err if json_out else out, soft_wrap=True),
                     Console(file=err, soft_wrap=True), out, log, log_file)
    try:
        os.dup2(log_file.fileno(), 1)
        os.dup2(log_file.fileno(), 2)
        yield shown
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved_out, 1)
        os.dup2(saved_err, 2)
        for handle in (saved_out, saved_err):
            os.close(handle)
        if shown._log_file is not None:
            shown._log_file.close()
        out.close()
        err.close()
