"""The package's layers hold: no import runs up a floor or sideways to a peer, and no two modules import each other.

Every import counts, the ones inside functions too (a lazy import is still a dependency), so a module that
is fine at start-up but reaches upward at run time fails here.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from tests.conftest import ROOT

PACKAGE = ROOT / "tratree"

# Floors, lowest first. A module may import its own package and anything on a lower floor, nothing else.
FLOORS: list[set[str]] = [
    {"tratree", "errors", "catalog", "interrupts", "progress", "analysis"},
    {"store"},
    {"records"},
    {"spec", "method"},
    {"envs", "models"},
    {"policy"},
    {"agent", "train"},
    {"pipeline"},
    {"cli"},
    {"__main__"},
]
FLOOR = {name: i for i, names in enumerate(FLOORS) for name in names}


def module_name(path: Path, base: Path = ROOT) -> str:
    parts = list(path.relative_to(base).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}
OPERATOR = ROOT / "operator"
OPERATOR_MODULES = {module_name(p, OPERATOR): p for p in (OPERATOR / "tratree_operator").rglob("*.py")}

# The operator's rooms, lowest first: what they hand each other, then observing, rendering status, making
# manifests and calling the API; then deciding; then the controller that runs the step; then kopf's handlers.
OPERATOR_FLOORS: list[set[str]] = [
    {"tratree_operator", "types", "config", "metrics", "capacity"},
    {"observe", "status", "jobs", "kube", "views"},
    {"decide", "peering"},
    {"controller"},
    {"handlers"},
    {"__main__"},
]
OPERATOR_FLOOR = {name: i for i, names in enumerate(OPERATOR_FLOORS) for name in names}


def imports(name: str, modules: dict[str, Path] = MODULES) -> Iterator[str]:
    """The modules of ``modules`` that ``name`` imports, wherever in the file the import is."""
    path = modules[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*up, base] if base else up)
            # ``from pkg import module`` depends on the module, ``from module import name`` on the module
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        yield from (t for t in targets if t in modules)


GRAPH = {name: set(imports(name)) - {name} for name in MODULES}
OPERATOR_GRAPH = {name: set(imports(name, OPERATOR_MODULES)) - {name} for name in OPERATOR_MODULES}


def room(name: str) -> str:
    """The top-level piece of tratree a module belongs to: its subpackage, or the module itself."""
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else "tratree"


def test_every_piece_of_the_package_has_a_floor():
    assert {room(m) for m in MODULES} <= set(FLOOR), {room(m) for m in MODULES} - set(FLOOR)


def test_no_import_runs_up_a_floor_or_across_to_a_peer():
    wrong = sorted(
        f"{m} -> {d}"
        for m, deps in GRAPH.items()
        for d in deps
        if room(d) != room(m) and FLOOR[room(d)] >= FLOOR[room(m)]
    )
    assert wrong == []


def test_the_operators_rooms_import_only_downward_and_kube_only_types():
    def room_of(name: str) -> str:
        return name.split(".")[1] if "." in name else name

    assert {room_of(m) for m in OPERATOR_MODULES} == set(OPERATOR_FLOOR)
    wrong = sorted(f"{m} -> {d}" for m, deps in OPERATOR_GRAPH.items() for d in deps
                   if OPERATOR_FLOOR[room_of(d)] >= OPERATOR_FLOOR[room_of(m)] and room_of(d) != "tratree_operator")
    assert wrong == []
    assert OPERATOR_GRAPH["tratree_operator.kube"] == {"tratree_operator.types"}


def test_no_circle_among_modules():
    # Tarjan's strongly connected components; any component of two or more modules is a circle
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in GRAPH[v]:
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
                circles.append(sorted(component))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    assert circles == []


def test_the_test_sees_imports_inside_functions():
    # both are imported only inside a function: the stage actions when a stage runs, the records' pydantic
    # models when a line needs them
    assert "tratree.pipeline.actions.data" in GRAPH["tratree.pipeline.actions"]
    assert "tratree.records.formats" in GRAPH["tratree.method.tree"]


def top_level_imports(path: Path) -> set[str]:
    """The top-level packages a file imports from outside (absolute imports), wherever in the file."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_the_operator_never_imports_the_kubernetes_client():
    # its image leaves the package out: ~60 MiB of the operator's memory, and kopf imports it whenever installed
    everything = {**MODULES, **OPERATOR_MODULES}
    seen: set[str] = set()
    todo = list(OPERATOR_MODULES)
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(imports(name, everything))
    assert "tratree.spec.crd" in seen  # the walk follows the operator into tratree
    assert sorted(m for m in seen if "kubernetes" in top_level_imports(everything[m])) == []
