"""The package's modules import in one direction: no cycle between its top-level parts, function-level imports
counted (a lazy import hides a cycle from Python, not from the design). Read with ``ast``, nothing imported."""

from __future__ import annotations

import ast
from pathlib import Path

import dpo_diff

ROOT = Path(dpo_diff.__file__).parent


def _modules() -> dict[str, Path]:
    out = {}
    for f in ROOT.rglob("*.py"):
        parts = list(f.relative_to(ROOT.parent).with_suffix("").parts)
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


def _imported(name: str, path: Path, known: set[str]) -> set[str]:
    """The package modules ``path`` imports anywhere in it (``from a import b``: ``a.b`` where that is a module)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([node.module] if node.module else []))
            names.add(base)
            names.update(f"{base}.{a.name}" for a in node.names)
    out = set()
    for n in names:
        while n and n not in known:
            n = n.rpartition(".")[0]
        if n and n != name:
            out.add(n)
    return out


def _part(module: str) -> str:
    return ".".join(module.split(".")[:2])  # dpo_diff.bench.config -> dpo_diff.bench


def _part_graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        for dep in _imported(name, path, set(modules)):
            if _part(dep) != _part(name):
                graph.setdefault(_part(name), set()).add(_part(dep))
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(v: str) -> list[str] | None:
        state[v] = 1
        path.append(v)
        for w in sorted(graph.get(v, ())):
            if state.get(w) == 1:
                return path[path.index(w):] + [w]
            if w not in state and (found := visit(w)):
                return found
        state[v] = 2
        path.pop()
        return None

    for v in sorted(graph):
        if v not in state and (found := visit(v)):
            return found
    return None


def test_the_parts_of_the_package_import_without_cycles():
    graph = _part_graph()
    assert "dpo_diff.relax_chunks" in graph["dpo_diff.backends"]  # the graph sees function-level imports
    assert "dpo_diff.bench" not in graph.get("dpo_diff.judges", set())
    assert "dpo_diff.relax_chunks" not in graph.get("dpo_diff.relax", set())
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_the_cycle_finder_finds_cycles():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b", "c"}, "b": {"c"}}) is None
