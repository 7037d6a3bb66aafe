"""The package's import graph has no cycle, counting imports inside functions too (issue #15)."""

from __future__ import annotations

import ast
from pathlib import Path

import optimum_shapley

ROOT = Path(optimum_shapley.__path__[0])


def _modules() -> dict[str, Path]:
    modules = {}
    for path in ROOT.rglob("*.py"):
        parts = ["optimum_shapley", *path.relative_to(ROOT).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def import_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports anywhere in its source (``from .x import y`` names ``x.y`` when that
    is a module, else ``x``)."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package[: len(package) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                for alias in node.names:
                    candidate = f"{target}.{alias.name}"
                    deps.add(candidate if candidate in modules else target)
            elif isinstance(node, ast.Import):
                deps.update(alias.name for alias in node.names)
        graph[name] = {d for d in deps if d in modules and d != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for dep in sorted(graph[node]):
            if dep not in index:
                visit(dep)
                low[node] = min(low[node], low[dep])
            elif dep in stack:
                low[node] = min(low[node], index[dep])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_cycle_finder_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]


def test_the_graph_sees_imports_inside_functions():
    graph = import_graph()
    assert "optimum_shapley.surgery" in graph["optimum_shapley.evaluation.evaluator"]  # imported inside methods


def test_the_package_has_no_import_cycle():
    assert cycles(import_graph()) == []


def test_the_leaves_import_nothing_of_the_package():
    graph = import_graph()
    for leaf in ("optimum_shapley.registry", "optimum_shapley.encoding", "optimum_shapley.atomic"):
        assert graph[leaf] == set(), (leaf, graph[leaf])


def test_no_two_modules_share_a_name():
    """Issue #15: shapley.py beside criteria/shapley.py, masking.py beside evaluation/masks.py made imports and
    tracebacks ambiguous; every module's own name is unique in the package."""
    names: dict[str, list[str]] = {}
    for module in import_graph():
        if module != "optimum_shapley":
            names.setdefault(module.rsplit(".", 1)[-1], []).append(module)
    assert {leaf: where for leaf, where in names.items() if len(where) > 1} == {}
