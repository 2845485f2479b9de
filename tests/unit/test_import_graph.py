"""The packages' modules import each other without a circle (imports under TYPE_CHECKING count: a circle there
is a circle in the design, kept out of the way only at run time)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = {"whm_ha": ROOT / "operator" / "whm_ha", "whm_ha_proxy": ROOT / "proxy" / "whm_ha_proxy"}


def module_name(package: str, folder: Path, path: Path) -> str:
    parts = [package, *path.relative_to(folder).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(package: str, folder: Path) -> dict[str, set[str]]:
    """Each module of the package, and the modules of the package it imports."""
    modules = {module_name(package, folder, p): p for p in folder.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        here = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = here.split(".")[: len(here.split(".")) - node.level + 1]
                    base = ".".join([*anchor, *([base] if base else [])])
                found.add(base)
                found.update(f"{base}.{alias.name}" for alias in node.names)
        graph[name] = {m for m in found if m in modules and m != name and not name.startswith(f"{m}.")}
    return graph


def circle(graph: dict[str, set[str]]) -> list[str] | None:
    """A circle of imports, if there is one (depth-first search)."""
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> list[str] | None:
        if name in path:
            return [*path[path.index(name) :], name]
        if name in done:
            return None
        for other in sorted(graph[name]):
            found = visit(other, [*path, name])
            if found:
                return found
        done.add(name)
        return None

    for name in sorted(graph):
        found = visit(name, [])
        if found:
            return found
    return None


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_no_module_imports_itself_through_others(package: str) -> None:
    graph = imports(package, PACKAGES[package])
    assert len(graph) > 5, "the package's modules were found"
    found = circle(graph)
    assert found is None, " -> ".join(found or [])


def test_a_circle_is_found() -> None:
    assert circle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert circle({"a": {"b"}, "b": set()}) is None
