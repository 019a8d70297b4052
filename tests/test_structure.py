"""The package's shape: no import cycles (imports inside functions included), no print in
library code, a short pipeline module, and a Ray-free algorithm core."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "mosaic_ray"


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PKG.rglob("*.py")}


def _imports(path: Path, name: str, known: set[str]) -> set[str]:
    """mosaic_ray modules imported anywhere in ``path`` (top level and inside functions)."""
    tree = ast.parse(path.read_text())
    pkg = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = pkg.split(".")
                base = ".".join(up[:len(up) - node.level + 1] + ([base] if base else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name and t.startswith("mosaic_ray"):
                out.add(t)
    return out


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods)
    g = {}
    for name, path in mods.items():
        deps = _imports(path, name, known)
        # importing a.b.c also runs the package __init__s a and a.b: not an edge of a's own code
        g[name] = {d for d in deps if not name.startswith(d + ".")}
    return g


def _cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_between_modules():
    cycles = _cycles(_graph())
    assert not cycles, f"import cycles: {cycles}"


def test_no_print_in_library_modules():
    offenders = []
    for name, path in _modules().items():
        if name in ("mosaic_ray.cli",):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
                offenders.append(f"{path.relative_to(PKG.parent)}:{node.lineno}")
    assert not offenders, f"print in library code: {offenders}"


def test_pipeline_module_is_the_step_list_and_runner():
    lines = (PKG / "pipeline.py").read_text().splitlines()
    assert len(lines) < 150, len(lines)
    from mosaic_ray import pipeline

    assert pipeline.STEP_NAMES == ("ingest", "base", "score", "score_train", "domains", "pilot", "select",
                                   "train", "report", "synthesize", "embed", "cluster", "rounds", "autoscale_report")
    for step in pipeline.STEPS:
        mod = sys.modules[step.run.__module__]
        assert mod.__name__.startswith("mosaic_ray.stages."), (step.name, mod.__name__)


def test_algorithm_core_imports_no_ray():
    core = ["mosaic_ray.scoring.epdms", "mosaic_ray.selection.methods", "mosaic_ray.selection.allocator",
            "mosaic_ray.selection.scaling_law", "mosaic_ray.planner.training", "mosaic_ray.planner.model",
            "mosaic_ray.report.summary", "mosaic_ray.config", "mosaic_ray.storage", "mosaic_ray.layout"]
    code = ("import sys\n" + "".join(f"import {m}\n" for m in core)
            + "bad = sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.'))\n"
              "assert not bad, bad[:5]\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
