"""The package's shape, as docs/pipeline.rst draws it: no import circle, small modules, layers
that never import each other."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "flask_apiguard"
MAX_LINES = 500


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package modules ``name`` imports at run time (``TYPE_CHECKING`` blocks excluded;
    imports inside functions included: they are circles too, only later)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    class Visitor(ast.NodeVisitor):
        def visit_If(self, node: ast.If) -> None:
            if isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
                for child in node.orelse:
                    self.visit(child)
                return
            self.generic_visit(node)

        def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            for alias in node.names:
                if f"{target}.{alias.name}" in modules:
                    found.add(f"{target}.{alias.name}")
                elif target in modules:
                    found.add(target)

        def visit_Import(self, node: ast.Import) -> None:
            found.update(alias.name for alias in node.names if alias.name in modules)

    Visitor().visit(ast.parse(path.read_text(encoding="utf-8")))
    found.discard(name)
    found.discard("flask_apiguard")  # the package's own __init__ re-exports only
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def test_no_import_circle() -> None:
    graph = _graph()
    visiting: list[str] = []
    done: set[str] = set()
    circles: list[list[str]] = []

    def visit(name: str) -> None:
        if name in done:
            return
        if name in visiting:
            circles.append([*visiting[visiting.index(name):], name])
            return
        visiting.append(name)
        for other in sorted(graph.get(name, ())):
            visit(other)
        visiting.pop()
        done.add(name)

    for name in sorted(graph):
        visit(name)
    assert circles == []


def test_no_module_over_500_lines() -> None:
    long = {str(path.relative_to(PACKAGE.parent)): n for path in PACKAGE.rglob("*.py")
            if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert long == {}


def test_a_layer_imports_no_other_layer_and_no_store() -> None:
    allowed = {"flask_apiguard.config", "flask_apiguard.readers", "flask_apiguard.errors",
               "flask_apiguard.identity", "flask_apiguard.layers", "flask_apiguard.fields"}
    graph = _graph()
    for name, imported in graph.items():
        if not name.startswith("flask_apiguard.layers."):
            continue
        layer = name.split(".")[2]
        for other in imported:
            own = other.startswith(f"flask_apiguard.layers.{layer}")
            shared = other in allowed or other.startswith("flask_apiguard.fields.")
            assert own or shared, f"{name} imports {other}"
