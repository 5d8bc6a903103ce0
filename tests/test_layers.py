"""The package's layers point one way (STYLE lesson 17): data → diffusion → rectifier / edit /
guidance → pipeline → train / eval → cli / serve, on a floor of small shared modules.

Every module is parsed (imports inside functions count: a lazy import is still a dependency),
so a helper that reaches up a layer fails here instead of in a review."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src" / "hifiedit"

# Rank of each unit (a sub-package, or a top-level module): a unit may import only units of a
# lower or equal rank, and the graph between units has no cycle (so, within one rank, imports
# still point one way: train may use eval's metrics, eval never a trainer).
RANKS = {
    "hifiedit": 0, "errors": 0, "config": 0, "runtime": 0, "weights": 0, "models": 0,
    "data": 1,
    "diffusion": 2,
    "rectifier": 3, "edit": 3, "guidance": 3,
    "pipeline": 4,
    "train": 5, "eval": 5,
    "cli": 6, "serve": 6, "__main__": 6,
}
LIBRARY = {"data", "diffusion", "rectifier", "edit", "guidance", "pipeline"}
TOP = {"train", "eval", "cli", "serve", "__main__"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "hifiedit"


def _imports(path: Path) -> list[tuple[str, list[str], int]]:
    """(imported hifiedit module, names taken from it, line) for every import in the file."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(a.name, [], node.lineno) for a in node.names if a.name.split(".")[0] == "hifiedit"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] == "hifiedit":
                found.append((target, [a.name for a in node.names], node.lineno))
    return found


def _graph() -> dict[str, list[tuple[str, str, list[str], int]]]:
    """unit → [(importing module, imported module, names, line)] over the whole package."""
    edges: dict[str, list] = {}
    for path in sorted(SRC.rglob("*.py")):
        module = _module_name(path)
        for target, names, line in _imports(path):
            edges.setdefault(_unit(module), []).append((module, target, names, line))
    return edges


def test_every_unit_has_a_layer():
    units = {_unit(_module_name(p)) for p in SRC.rglob("*.py")}
    assert units <= set(RANKS), f"give these a layer in RANKS: {sorted(units - set(RANKS))}"


def test_imports_never_climb_a_layer():
    bad = [f"{m}:{line} imports {t} ({_unit(m)} → {_unit(t)})"
           for unit, edges in _graph().items() for m, t, _, line in edges
           if RANKS[_unit(t)] > RANKS[unit]]
    assert not bad, "\n".join(bad)


def test_library_never_imports_training_evaluation_or_the_cli():
    bad = [f"{m}:{line} imports {t}" for unit, edges in _graph().items() if unit in LIBRARY
           for m, t, _, line in edges if _unit(t) in TOP]
    assert not bad, "\n".join(bad)


def test_no_import_cycles_between_units():
    graph = {u: {_unit(t) for _, t, _, _ in edges} - {u} for u, edges in _graph().items()}
    state: dict[str, int] = {}

    def visit(u, trail):
        state[u] = 1
        for v in sorted(graph.get(u, ())):
            if state.get(v) == 1:
                pytest.fail("import cycle: " + " → ".join(trail[trail.index(v):] + [v]))
            if v not in state:
                visit(v, trail + [v])
        state[u] = 2

    for u in sorted(graph):
        if u not in state:
            visit(u, [u])


def test_no_private_names_imported_across_units():
    bad = [f"{m}:{line} takes {', '.join(n for n in names if n.startswith('_'))} from {t}"
           for unit, edges in _graph().items() for m, t, names, line in edges
           if _unit(t) != unit and any(n.startswith("_") and not n.startswith("__") for n in names)]
    assert not bad, "\n".join(bad)


def test_the_checker_sees_lazy_and_relative_imports(tmp_path):
    """The parser itself: an import inside a function and a relative import are both found."""
    pkg = tmp_path / "hifiedit" / "data"
    pkg.mkdir(parents=True)
    f = pkg / "x.py"
    f.write_text("def f():\n    from hifiedit.train.edit import g\n\nfrom ..eval import grids\n")
    global SRC
    old, SRC = SRC, tmp_path / "hifiedit"
    try:
        found = _imports(f)
    finally:
        SRC = old
    assert ("hifiedit.train.edit", ["g"], 2) in found
    assert ("hifiedit.eval", ["grids"], 4) in found
