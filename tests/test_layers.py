"""The layout holds: the layers of pyproject.toml's import-linter contract,
no circle of imports anywhere, no import hidden in a function without its
reason, and a tree that ruff passes.

These run the tools as a developer would (``lint-imports``, ``ruff check``)
from the checkout; an upward import planted in a copy of the tree shows the
contract can fail.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("shmalloc", "reporter", "hypervisor_stub", "launcher")
BIN = Path(sys.executable).parent

#: why an import may sit inside a function: said on its line or in the
#: comment just above it (imports in between may share the comment)
REASONS = ("start-up", "optional dependency", "being timed")


def _tool(name: str) -> str:
    path = BIN / name
    if not path.exists():
        path = shutil.which(name)
        if path is None:
            pytest.fail(f"{name} is not installed: pip install -e '.[test]'")
    return str(path)


def _lint_imports(cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([_tool("lint-imports"), "--no-cache"], cwd=cwd, capture_output=True,
                          text=True, timeout=120, env=env)


@pytest.mark.timeout(120)
def test_the_layers_contract_is_kept():
    res = _lint_imports(ROOT)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "1 kept, 0 broken" in res.stdout, res.stdout


@pytest.mark.timeout(120)
@pytest.mark.parametrize("module, upward", [
    ("shmalloc/buddy.py", "import reporter.process"),                  # core -> reporter
    ("launcher/experiment/run.py", "import launcher.output.summary"),  # experiment -> output
    ("launcher/output/summary.py", "import launcher.capture.record"),  # sibling -> sibling
    ("launcher/comparison/stats.py", "import launcher.cli.main"),      # -> the command line
])
def test_an_upward_import_breaks_the_contract(tmp_path, module, upward):
    """The contract can fail: in a copy of the tree, one import that goes
    up (or across independent siblings) makes lint-imports exit non-zero
    and name the broken contract."""
    for pkg in PACKAGES:
        shutil.copytree(ROOT / pkg, tmp_path / pkg,
                        ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    target = tmp_path / module
    target.write_text(target.read_text() + f"\n{upward}  # noqa\n")
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    probe = subprocess.run([sys.executable, "-c", "import launcher; print(launcher.__file__)"],
                           env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert probe.stdout.strip().startswith(str(tmp_path)), probe   # the copy is what is checked
    res = _lint_imports(tmp_path, env)
    assert res.returncode != 0, res.stdout
    assert "BROKEN" in res.stdout, res.stdout
    assert "0 kept, 1 broken" in res.stdout, res.stdout


def _cycles(graph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.find_modules_directly_imported_by(v):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in sorted(graph.modules):
        if v not in index:
            visit(v)
    return out


def test_no_circle_of_imports_anywhere():
    graph = grimp.build_graph(*PACKAGES, cache_dir=None)
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_circle():
    """The check above can fail: two modules importing each other are one
    circle."""
    graph = grimp.ImportGraph()
    for m in ("a", "a.x", "a.y", "a.z"):
        graph.add_module(m)
    graph.add_import(importer="a.x", imported="a.y")
    graph.add_import(importer="a.y", imported="a.x")
    graph.add_import(importer="a.z", imported="a.x")
    assert _cycles(graph) == [["a.x", "a.y"]]


def _tree_files() -> list[Path]:
    files = [p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")]
    files += [p for p in (ROOT / "scripts").iterdir() if p.is_file() and p.suffix != ".md"]
    return sorted(files)


def hidden_imports(path: Path, root: Path = ROOT) -> list[str]:
    """Imports inside a function whose reason is not given just above them."""
    src = path.read_text()
    lines = src.splitlines()
    bad = []
    for fn in ast.walk(ast.parse(src)):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(fn):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                i = node.lineno - 1
                said = [lines[i]]
                while i > 0 and lines[i - 1].strip().startswith(("#", "import ", "from ")):
                    i -= 1
                    said.append(lines[i])
                if not any(reason in " ".join(said) for reason in REASONS):
                    bad.append(f"{path.relative_to(root)}:{node.lineno}: "
                               f"{lines[node.lineno - 1].strip()}")
    return bad


def test_no_import_hides_in_a_function_without_its_reason():
    bad = [line for path in _tree_files() for line in hidden_imports(path)]
    assert bad == []


def test_a_hidden_import_is_found(tmp_path):
    """The check above can fail: an import in a function without a reason
    is reported, one with its reason is not."""
    path = tmp_path / "probe.py"
    path.write_text("def f():\n    import json\n    return json\n\n\n"
                    "def g():\n    # imported here for start-up\n    import json\n"
                    "    import os\n    return json, os\n\n\n"
                    "def h():\n    x = 1  # start-up\n    import json\n    return json, x\n")
    assert hidden_imports(path, tmp_path) == ["probe.py:2: import json",
                                              "probe.py:15: import json"]


@pytest.mark.timeout(120)
def test_ruff_passes_over_the_tree():
    res = subprocess.run([_tool("ruff"), "check", "--no-cache", "."], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
