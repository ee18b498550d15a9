"""The import graph of the packages: layers point down only, no circles, no lazy module tricks.

Layers, bottom to top: core < schemas < {sources, transforms, sinks} < connector < devstack. The three
components in the middle know nothing of each other nor of the application that assembles them
(docs/architecture.md). Every import counts, wherever it is written: at module level, under
`if TYPE_CHECKING:`, or inside a function. An import inside a function is allowed only when it is listed in
`IN_FUNCTION_IMPORTS` with the heavy optional dependency that justifies it.

Each failure names the arrow as `importer -> imported (file:line)`.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]

LAYER = {
    "core": 0,
    "schemas": 1,
    "sources": 2,
    "transforms": 2,
    "sinks": 2,
    "connector": 3,
    "devstack": 4,
}

# (importing module, imported module) -> why the import waits until the function runs.
# None today: every dependency the runtime uses is a required one.
IN_FUNCTION_IMPORTS: dict[tuple[str, str], str] = {}

@dataclass(frozen=True)
class Arrow:
    importer: str
    imported: str
    path: Path
    line: int
    in_function: bool

    def __str__(self) -> str:
        where = " (inside a function)" if self.in_function else ""
        return f"{self.importer} -> {self.imported} ({self.path.relative_to(ROOT)}:{self.line}){where}"


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package in LAYER:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def _is_package(module: str) -> bool:
    return MODULES[module].name == "__init__.py"


def _resolve(importer: str, node: ast.ImportFrom) -> str:
    """The absolute module an `from ... import` statement reads from."""
    if node.level == 0:
        return node.module or ""
    base = importer.split(".") if _is_package(importer) else importer.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def _own(name: str) -> str | None:
    """The project module `name` refers to (the nearest enclosing one), or None for third-party names."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in MODULES:
            return candidate
        parts.pop()
    return None


def _imports(module: str, path: Path) -> Iterator[tuple[str, int, bool]]:
    """(imported name, line, inside a function) for every import statement in the module."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))

    def visit(node: ast.AST, in_function: bool) -> Iterator[tuple[str, int, bool]]:
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno, in_function
        elif isinstance(node, ast.ImportFrom):
            source = _resolve(module, node)
            for alias in node.names:
                # `from package import submodule` imports the submodule.
                submodule = f"{source}.{alias.name}"
                yield (submodule if submodule in MODULES else source), node.lineno, in_function
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            yield from visit(child, inner)

    yield from visit(tree, False)


def _all_imports() -> list[Arrow]:
    arrows = []
    for module, path in MODULES.items():
        for name, line, in_function in _imports(module, path):
            arrows.append(Arrow(module, name, path, line, in_function))
    return arrows


ALL_IMPORTS = _all_imports()
ARROWS = [a for a in ALL_IMPORTS if (own := _own(a.imported)) is not None and own != a.importer]


def _target(arrow: Arrow) -> str:
    own = _own(arrow.imported)
    assert own is not None
    return own


def _layer_violation(arrow: Arrow) -> bool:
    low, high = arrow.importer.split(".")[0], _target(arrow).split(".")[0]
    if low == high:
        return False
    return LAYER[high] > LAYER[low] or LAYER[high] == LAYER[low]


Found = dict[tuple[str, str, str], list[str]]


def _collect(found: Found, key: tuple[str, str, str], line: str) -> None:
    lines = found.setdefault(key, [])
    if line not in lines:
        lines.append(line)


def _upward() -> Found:
    found: Found = {}
    for arrow in ARROWS:
        if _layer_violation(arrow):
            _collect(found, ("upward", arrow.importer, _target(arrow)), str(arrow))
    return found


def _module_getattr() -> Found:
    found: Found = {}
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and node.name == "__getattr__":
                _collect(
                    found,
                    ("getattr", module, ""),
                    f"{module} defines __getattr__ ({path.relative_to(ROOT)}:{node.lineno})",
                )
    return found


def _in_function() -> Found:
    found: Found = {}
    for arrow in ALL_IMPORTS:
        if arrow.in_function and (arrow.importer, arrow.imported) not in IN_FUNCTION_IMPORTS:
            _collect(found, ("in-function", arrow.importer, arrow.imported), str(arrow))
    return found


def _cycles() -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan), each sorted."""
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for arrow in ARROWS:
        graph[arrow.importer].add(_target(arrow))
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []
    counter = 0

    def connect(node: str) -> None:
        nonlocal counter
        index[node] = low[node] = counter
        counter += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return groups


def _unexpected(found: Found) -> list[str]:
    return [line for _, lines in sorted(found.items()) for line in lines]


def test_imports_point_down_only() -> None:
    unexpected = _unexpected(_upward())
    assert not unexpected, (
        "imports that point up or sideways (core < schemas < sources|transforms|sinks < connector < devstack):\n  "
        + "\n  ".join(unexpected)
    )


def test_no_import_circles() -> None:
    lines = []
    for group in _cycles():
        inside = set(group)
        arrows = sorted({str(a) for a in ARROWS if a.importer in inside and _target(a) in inside})
        lines.append(" <-> ".join(group) + ":\n    " + "\n    ".join(arrows))
    assert not lines, "import circles:\n  " + "\n  ".join(lines)


def test_no_module_getattr() -> None:
    unexpected = _unexpected(_module_getattr())
    assert not unexpected, "module-level __getattr__ (import what you export):\n  " + "\n  ".join(unexpected)


def test_imports_inside_functions_are_justified() -> None:
    unexpected = _unexpected(_in_function())
    assert not unexpected, (
        "imports inside functions without a reason in IN_FUNCTION_IMPORTS (move them to module level, or list "
        "the heavy optional dependency that justifies waiting):\n  " + "\n  ".join(unexpected)
    )


def test_allowed_in_function_imports_still_exist() -> None:
    present = {(a.importer, a.imported) for a in ALL_IMPORTS if a.in_function}
    stale = sorted(
        f"{importer} -> {imported}" for importer, imported in IN_FUNCTION_IMPORTS if (importer, imported) not in present
    )
    assert not stale, "IN_FUNCTION_IMPORTS entries with no such import (remove them):\n  " + "\n  ".join(stale)


def test_the_check_sees_every_package() -> None:
    # A check that parsed nothing would pass: the graph must cover every layer and hold real arrows between them.
    assert {m.split(".")[0] for m in MODULES} == set(LAYER)
    assert any(a.importer.startswith("connector.") and _target(a).startswith("core.") for a in ARROWS)
