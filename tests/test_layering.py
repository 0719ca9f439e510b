"""The structure the design promises, checked on the source: an import graph without circles,
layers that point one way, and files and functions small enough to read.

The graph has one node per source file of the library and its applications (vlp/, eval/,
data_prep/, benchmarks/, train.py) and an edge for every import of a project module anywhere in
a file (top level or inside a function: a lazy import is still a dependency).
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, Iterator, List, Set

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("vlp", "eval", "data_prep")
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 80

# who may not import whom: (importer prefix, imported prefix). Applications (eval, data_prep,
# train.py) sit over the library; inside the library the parts a batch passes through (data,
# models, losses) know nothing of what drives them (config, train, export, interop).
FORBIDDEN = [
    ("vlp", "eval"), ("vlp", "data_prep"), ("vlp", "benchmarks"),
    ("eval", "data_prep"), ("data_prep", "eval"),
    ("vlp.data", "vlp.train"), ("vlp.data", "vlp.export"), ("vlp.data", "vlp.interop"), ("vlp.data", "vlp.models"),
    ("vlp.models", "vlp.train"), ("vlp.models", "vlp.export"), ("vlp.models", "vlp.interop"),
    ("vlp.losses", "vlp.train"), ("vlp.losses", "vlp.export"), ("vlp.losses", "vlp.interop"),
    ("vlp.losses", "vlp.models"), ("vlp.losses", "vlp.data"), ("vlp.losses", "vlp.config"),
    ("vlp.interop", "vlp.train"), ("vlp.interop", "vlp.export"), ("vlp.export", "vlp.train"),
]


def source_files() -> Iterator[Path]:
    for package in PACKAGES:
        yield from sorted((ROOT / package).rglob("*.py"))
    yield from sorted((ROOT / "benchmarks").glob("*.py"))
    yield ROOT / "train.py"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(source: str, package: str, known: Set[str]) -> Set[str]:
    """The project modules a file of ``package`` with ``source`` imports (``from a.b import c``
    counts as a.b.c when that is a module, else a.b; relative imports resolve from ``package``)."""
    found: Set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


def import_graph() -> Dict[str, Set[str]]:
    files = {module_name(p): p for p in source_files()}
    known = set(files)
    graph = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        graph[name] = imported_modules(path.read_text(), package, known) - {name}
    return graph


def cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """Strongly connected components of more than one node (Tarjan), each sorted."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    found: List[List[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for child in graph.get(node, ()):
            if child not in index:
                visit(child)
                low[node] = min(low[node], low[child])
            elif child in on_stack:
                low[node] = min(low[node], index[child])
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


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def test_the_graph_reader_sees_a_planted_cycle_and_a_forbidden_import():
    graph = {"vlp.a": {"vlp.b"}, "vlp.b": {"vlp.c"}, "vlp.c": {"vlp.a"}, "vlp.d": {"eval.x"}}
    assert cycles(graph) == [["vlp.a", "vlp.b", "vlp.c"]]
    assert [(m, d) for m, deps in graph.items() for d in deps for a, b in FORBIDDEN
            if _within(m, a) and _within(d, b)] == [("vlp.d", "eval.x")]


def test_import_reader_counts_lazy_relative_and_from_imports():
    known = {"vlp", "vlp.a", "vlp.a.b", "vlp.c", "eval", "eval.x"}
    source = ("import vlp.a.b\nfrom vlp import c\nfrom . import b\n"
              "def f():\n    from eval.x import thing\n    import os\n")
    assert imported_modules(source, "vlp.a", known) == {"vlp.a.b", "vlp.c", "eval.x"}


def test_no_import_circle():
    assert cycles(import_graph()) == []


def test_layers_point_one_way():
    wrong = sorted(f"{module} imports {dep}" for module, deps in import_graph().items() for dep in deps
                   for importer, imported in FORBIDDEN if _within(module, importer) and _within(dep, imported))
    assert wrong == []


def _shape_problems(path: Path) -> Iterator[str]:
    text = path.read_text()
    lines = text.count("\n")
    if lines > MAX_FILE_LINES:
        yield f"{path.relative_to(ROOT)}: {lines} lines"
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            if length > MAX_FUNCTION_LINES:
                yield f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {length} lines"


@pytest.mark.parametrize("where", ["library and applications", "tests"])
def test_files_and_functions_stay_small(where):
    paths = list(source_files()) if where != "tests" else sorted((ROOT / "tests").rglob("*.py"))
    assert [problem for path in paths for problem in _shape_problems(path)] == []
