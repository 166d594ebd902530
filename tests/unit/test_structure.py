"""The house rules that keep every room small enough to read: no module of maas/, jobs/ or
serve_apps/ over 350 lines, no function over 60 lines outside tests."""

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("maas", "jobs", "serve_apps")
MAX_MODULE_LINES = 350
MAX_FUNCTION_LINES = 60
pytestmark = pytest.mark.unit


def _sources(*folders: str) -> list[Path]:
    # bench/out holds what the benches make, the peer servers' venvs included: not ours.
    return sorted(p for folder in folders for p in (REPO / folder).rglob("*.py")
                  if not p.is_relative_to(REPO / "bench" / "out"))


def long_functions(path: Path) -> list[str]:
    """``path:line name (n lines)`` for each function longer than MAX_FUNCTION_LINES."""
    shown = path.relative_to(REPO) if path.is_relative_to(REPO) else path.name
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            lines = node.end_lineno - node.lineno + 1
            if lines > MAX_FUNCTION_LINES:
                found.append(f"{shown}:{node.lineno} {node.name} ({lines} lines)")
    return found


def test_no_module_of_the_packages_is_over_350_lines():
    long = [f"{p.relative_to(REPO)} ({n} lines)" for p in _sources(*PACKAGES)
            if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES]
    assert not long, f"split these by concern: {long}"


def test_no_function_outside_tests_is_over_60_lines():
    found = [f for p in _sources(*PACKAGES, "bench", "docs") for f in long_functions(p)]
    assert not found, f"split these into named steps: {found}"


def test_the_checks_find_what_they_look_for(tmp_path):
    planted = tmp_path / "planted.py"
    planted.write_text("def long():\n" + "    x = 1\n" * MAX_FUNCTION_LINES)
    assert long_functions(planted) == ["planted.py:1 long (61 lines)"]


def test_every_bench_script_still_imports():
    """bench/ is run by hand (`make bench`), not by the tests: a moved name must not break
    it silently."""
    import subprocess
    import sys

    scripts = sorted(p.stem for p in (REPO / "bench").glob("*.py"))
    code = ("import importlib, sys; sys.path.insert(0, 'bench'); "
            f"[importlib.import_module(m) for m in {scripts!r}]")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
