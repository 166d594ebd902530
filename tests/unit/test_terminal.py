"""The quiet terminal of `maas run` / `python -m jobs.pipeline`: maas's own lines on the
terminal, everything else the process writes (Python prints, logging, warnings, native
writes to the file descriptors) in the log, which can move once the Ray session is known."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.unit

SCRIPT = """
import logging, os, sys, warnings
from pathlib import Path
from jobs.terminal import terminal

folder = Path(sys.argv[1])
with terminal(verbose=sys.argv[2] == "verbose", json_out=sys.argv[3] == "json",
              log_dir=folder / "first", name="run.log") as shown:
    shown.console.print("stage line")
    print("a library's print")
    logging.getLogger("ray").warning("a ray warning")
    warnings.warn("a deprecation")
    os.write(2, b"native stderr\\n")
    (folder / "session").mkdir()
    shown.move_log(folder / "session", "run.log")
    print("after the move")
    shown.data.write('{"json": true}\\n')
print("back on stdout")
"""


def _run(tmp_path: Path, *mode: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path), *mode], cwd=REPO,
                          capture_output=True, text=True, timeout=60)


def test_quiet_keeps_only_maas_lines_on_the_terminal(tmp_path):
    run = _run(tmp_path, "quiet", "human")
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == ["stage line", '{"json": true}', "back on stdout"]
    assert run.stderr == ""
    log = (tmp_path / "session" / "run.log").read_text()
    for written in ("a library's print", "a ray warning", "a deprecation", "native stderr",
                    "after the move"):
        assert written in log
    assert not (tmp_path / "first" / "run.log").exists()  # moved, not copied


def test_json_puts_the_stage_lines_on_stderr(tmp_path):
    run = _run(tmp_path, "quiet", "json")
    assert run.stdout.splitlines() == ['{"json": true}', "back on stdout"]
    assert run.stderr.splitlines() == ["stage line"]


def test_verbose_leaves_every_stream_alone(tmp_path):
    run = _run(tmp_path, "verbose", "human")
    assert "a library's print" in run.stdout and "native stderr" in run.stderr
    assert "a ray warning" in run.stderr
    assert not (tmp_path / "first").exists()


PTY_SCRIPT = """
import sys, warnings
from pathlib import Path
from jobs.stages import StageClock
from jobs.terminal import terminal

with terminal(False, False, Path(sys.argv[1]), "run.log") as shown:
    clock = StageClock(shown.console, "m")
    with clock.stage(1, "train") as stage:
        print("printed inside a stage")
        warnings.warn("warned inside a stage")
        stage.result = "fine"
"""


def test_on_a_terminal_a_running_stage_keeps_library_output_in_the_log(tmp_path):
    """rich's live displays reroute stdout and stderr to the terminal unless told not to."""
    import os
    import pty

    leader, follower = pty.openpty()
    child = subprocess.Popen([sys.executable, "-c", PTY_SCRIPT, str(tmp_path)], cwd=REPO,
                             stdout=follower, stderr=follower)
    os.close(follower)
    shown = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the child closed its end
            break
        if not chunk:
            break
        shown += chunk
    assert child.wait(timeout=60) == 0, shown
    os.close(leader)
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", shown.decode(errors="replace"))  # colours
    assert "[1/4] train m: fine" in text
    assert "inside a stage" not in text
    log = (tmp_path / "run.log").read_text()
    assert "printed inside a stage" in log and "warned inside a stage" in log


def test_a_log_folder_that_cannot_be_written_keeps_the_log_where_it_is(tmp_path):
    from rich.console import Console

    from jobs.terminal import Terminal

    first = tmp_path / "run.log"
    handle = open(first, "a")
    shown = Terminal(Console(), Console(), sys.stdout, first, handle)
    shown.move_log(tmp_path / "missing" / "folder", "run.log")
    assert shown.log == first and first.exists()
    handle.close()
