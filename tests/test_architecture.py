"""The shape of the code (docs/architecture.md), checked from the source: which package may import
which, and no import cycle anywhere. Imports are read with ``ast``, those inside functions
included: an import hidden in a function still ties two modules together.

That edge/ never reaches torch is checked by tests/test_edge_without_torch.py (every module
imported with torch blocked, and no edge source naming torch, training or quantization).
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SIDES = ("edge", "training", "quantization")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(packages=SIDES) -> dict[str, dict[str, int]]:
    """module -> {imported module of ours: line of the first such import}, for every module of ``packages``."""
    modules = {module_name(p): p for package in packages for p in sorted((REPO / package).rglob("*.py"))}
    graph: dict[str, dict[str, int]] = {}
    for name, path in modules.items():
        edges: dict[str, int] = {}
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                # ``from a.b import c``: a.b, and a.b.c too where c is a module
                targets = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            else:
                continue
            for target in targets:
                if target in modules and target != name:
                    edges.setdefault(target, node.lineno)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, {}):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def describe(component: list[str], graph: dict[str, dict[str, int]]) -> str:
    edges = [f"{a} -> {b} (line {graph[a][b]})" for a in component for b in graph[a] if b in component]
    return "; ".join(edges)


def test_no_import_cycle_in_any_side():
    graph = import_graph()
    assert {"training.identity.train", "training.identity.evaluate", "edge.cli"} <= set(graph)  # the walk found them
    found = cycles(graph)
    assert found == [], "\n".join(describe(c, graph) for c in found)


def test_the_cycle_finder_finds_a_cycle_hidden_in_a_function():
    graph = {"a": {"b": 3}, "b": {"c": 9}, "c": {"a": 40}, "d": {"a": 1}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert "c -> a (line 40)" in describe(["a", "b", "c"], graph)


# edge/ by floor, lowest first; a module may import its own floor and those below it. "base" is
# every model-level package and helper (detect, landmarks, geometry, runtime, sources, datasets,
# metrics, registry, shipped, imageio, oneline, the package itself); "entry" is the command line
# (edge.cli) and the python -m aliases at the old paths.
EDGE_FLOORS = ("base", "storage", "core", "app", "tools", "entry")
ENTRY_MODULES = {"cli", "run", "enroll", "config", "bench", "calibrate", "faults", "demo", "demo_people"}


def edge_floor(module: str) -> str:
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in ("storage", "core", "app", "tools"):
        return parts[1]
    if len(parts) == 2 and parts[1] in ENTRY_MODULES:
        return "entry"
    return "base"


def test_edge_floors_import_only_downwards():
    """storage <- core <- app <- tools: the device's own code never imports the tools, the core
    never the service shell, storage neither of them, and the model-level packages none of these."""
    graph = import_graph(("edge",))
    assert {edge_floor(m) for m in graph} == set(EDGE_FLOORS)  # every floor has modules
    rank = {floor: i for i, floor in enumerate(EDGE_FLOORS)}
    upward = [
        f"{module} ({edge_floor(module)}) imports {target} ({edge_floor(target)}, line {line})"
        for module, edges in graph.items()
        for target, line in edges.items()
        if rank[edge_floor(target)] > rank[edge_floor(module)]
    ]
    assert upward == []


def test_dependencies_point_one_way_quantization_training_edge():
    """quantization/ may import training/ and edge/; training/ only edge/; edge/ neither."""
    allowed = {"edge": {"edge"}, "training": {"edge", "training"}, "quantization": set(SIDES)}
    wrong = [
        f"{module} imports {target} (line {line})"
        for module, edges in import_graph().items()
        for target, line in edges.items()
        if target.split(".")[0] not in allowed[module.split(".")[0]]
    ]
    assert wrong == []
