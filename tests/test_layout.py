"""The package's shape: no import circles, one optimiser loop, one rollout loop, the library never reads
bench/, bench/ never imports tests/."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "policydistill"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports (anywhere in the file, lazy imports included). A package's
    ``__init__`` importing its own children, or a module importing its own ancestors, is not an edge."""
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    edges: dict[str, set[str]] = {m: set() for m in files}
    for mod, path in files.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + [base]).strip(".")
                names = [base, *(f"{base}.{a.name}" for a in node.names)]
            for name in names:
                while name and name not in files:
                    name = name.rpartition(".")[0]
                if name and name != mod and not mod.startswith(name + ".") \
                        and not (name.startswith(mod + ".") and path.name == "__init__.py"):
                    edges[mod].add(name)
    return edges


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in edges:
        if v not in index:
            visit(v)
    return out


def test_the_circle_finder_finds_a_circle():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_the_package_has_no_import_circles():
    graph = import_graph()
    assert len(graph) > 50 and graph["policydistill.distill.runner"]  # the graph is the package's
    assert circles(graph) == []


def grep(pattern: str) -> dict[str, int]:
    """Per library file (relative path), the number of lines matching ``pattern``."""
    out = {}
    for path in PACKAGE.rglob("*.py"):
        n = sum(bool(re.search(pattern, line)) for line in path.read_text().splitlines())
        if n:
            out[str(path.relative_to(PACKAGE))] = n
    return out


def test_one_optimiser_loop():
    """Optimiser steps and backward passes happen in the fit loop only (kickstarting adds its distillation
    term to stable-baselines3's PPO update through its optimiser's zero_grad, which back-propagates it)."""
    assert grep(r"\.backward\(") == {"distill/fit.py": 3, "distill/kickstart.py": 1}
    assert grep(r"(optimizer|opt)\.step\(") == {"distill/fit.py": 2}


def test_one_rollout_loop():
    """Episodes are stepped by one loop (``drive``); envs are stepped only by the batched adapters it drives, the
    env wrappers (fault catching; kickstarting's padding to the suite's widest spaces, stepped by stable-baselines3),
    and the runtime's simulated robot (a fixed-rate control loop, not a rollout)."""
    assert grep(r"^def drive\(|^def rollout\(") == {"eval/rollout.py": 2}
    assert set(grep(r"env\.step\(|\.envs\[i\]\.step\(|task\.step\(|vec_env\.step\(|venv\.step\(")) == {
        "suites/batched/gymnasium.py", "suites/batched/vectask.py", "suites/batched/rsl_rl.py", "suites/wrappers.py",
        "distill/kickstart.py", "runtime/run.py", "eval/rollout.py"}


def test_the_library_never_reads_bench_and_bench_never_imports_tests():
    assert grep(r"[\"'/]bench[\"'/]|bench/results") == {}
    for path in (ROOT / "bench").glob("*.py"):
        text = path.read_text()
        assert not re.search(r"^\s*(from|import) (tests|conftest|runtime_fixtures)\b|sys\.path.*tests", text,
                             re.MULTILINE), path
