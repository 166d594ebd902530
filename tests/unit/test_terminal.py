"""The quiet terminal of `maas run` / `python -m jobs.pipeline`: maas's own lines on the
terminal, everything else the process writes (Python prints, logging, warnings, native
writes to the file descriptors) in the log, which can move once the Ray session is known."""

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
