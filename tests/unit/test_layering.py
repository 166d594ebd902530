"""The layers of the house, held by a test that fails on a new violation.

    maas/        the library: imports neither jobs nor serve_apps (its CLI package may: it
                 starts jobs and, through them, deploys apps)
    jobs/        never imports another job module's private names
    everywhere   no import cycles between modules of maas, jobs and serve_apps

Every import statement counts, also one inside a function; ``from a.b import c`` is an edge
to the module ``a.b.c`` when there is one, else to ``a.b``.
"""

import ast
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("maas", "jobs", "serve_apps")
LIBRARY, LIBRARY_EXCEPTION = "maas", "maas.cli"
pytestmark = pytest.mark.unit


def _modules(root: Path) -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (root / package).rglob("*.py"):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, list[str]]]:
    """(module imported, names taken from it) for every import in ``path``."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package this module is in
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                full = f"{base}.{alias.name}"
                found.append((full, []) if full in modules else (base, [alias.name]))
    return found


def _in(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of two or more modules (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def violations(root: Path) -> list[str]:
    """Every break of the layering rules in the tree at ``root``."""
    modules = _modules(root)
    graph: dict[str, set[str]] = {name: set() for name in modules}
    problems = []
    for name, path in sorted(modules.items()):
        for target, names in _imports(name, path, modules):
            if _in(name, LIBRARY) and not _in(name, LIBRARY_EXCEPTION) and (
                    _in(target, "jobs") or _in(target, "serve_apps")):
                problems.append(f"{name} imports {target}: the library knows no job and no "
                                f"app (only {LIBRARY_EXCEPTION} may)")
            private = [n for n in names if n.startswith("_")]
            if _in(name, "jobs") and _in(target, "jobs") and target != name and private:
                problems.append(f"{name} takes private {private} from {target}")
            if target in modules and target != name:
                graph[name].add(target)
    problems += [f"import cycle: {' -> '.join(group)}" for group in _cycles(graph)]
    return problems


def test_the_project_keeps_its_layers():
    assert violations(REPO) == []


def _copy(tmp_path: Path) -> Path:
    for package in PACKAGES:
        shutil.copytree(REPO / package, tmp_path / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


@pytest.mark.parametrize("where, planted, fragment", [
    ("maas/routes.py", "from serve_apps.server import api\n",
     "maas.routes imports serve_apps.server: the library knows no job"),
    ("maas/config/load.py", "import jobs.pipeline\n", "maas.config.load imports jobs.pipeline"),
    ("jobs/trained.py", "from jobs.stages import _smoke_key\n",
     "jobs.trained takes private ['_smoke_key'] from jobs.stages"),
    ("maas/text.py", "def f():\n    from maas.embedder import build\n",
     "import cycle: maas.embedder -> maas.pretrained -> maas.text"),
])
def test_a_planted_violation_fails_the_check(tmp_path, where, planted, fragment):
    root = _copy(tmp_path)
    with open(root / where, "a") as source:
        source.write("\n" + planted)
    found = violations(root)
    assert any(fragment in problem for problem in found), found


def test_the_cli_may_start_jobs(tmp_path):
    root = _copy(tmp_path)
    assert any("jobs.pipeline" in line for line in (root / "maas/cli/app.py").read_text()
               .splitlines() if "import" in line)
    assert violations(root) == []
