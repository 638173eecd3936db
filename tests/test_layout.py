"""The layering of the packages: no import cycle, no library module importing a command, small modules."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LIBRARY = ("plumbing", "datasets", "models", "evaluate", "synth", "adapt", "ssl")
ALLOWED = {
    "plumbing": {"plumbing"},
    "datasets": {"plumbing", "datasets"},
    "models": {"plumbing", "models"},
    "evaluate": {"plumbing", "datasets", "models", "evaluate"},
    "synth": {"plumbing", "datasets", "models", "evaluate", "synth"},
    "adapt": {"plumbing", "datasets", "models", "evaluate", "adapt"},
    "ssl": {"plumbing", "datasets", "models", "evaluate", "ssl"},
}
"""The packages each package may import (data flows one way; the pillars do not import each other)."""
MAX_LINES = 600


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for package in LIBRARY for p in sorted((ROOT / package).rglob("*.py"))}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules ``name`` imports anywhere in its file (lazy imports inside functions too)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            targets = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        else:
            continue
        found.update(t for t in targets if t in known and t != name)
    return found


def _is_command(path: Path) -> bool:
    return 'if __name__ == "__main__":' in path.read_text()


def _graph() -> tuple[dict[str, Path], dict[str, set[str]]]:
    modules = _modules()
    return modules, {name: _imports(name, path, set(modules)) for name, path in modules.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (a list of modules, the first repeated at the end), or ``None``."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for child in sorted(graph[node]):
            if state.get(child) == 1:
                return [*path[path.index(child):], child]
            if child not in state and (found := visit(child)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_no_import_cycle() -> None:
    _, graph = _graph()
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_cycle_finder_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_library_module_imports_a_command() -> None:
    modules, graph = _graph()
    wrong = sorted(f"{name} imports {target}" for name, targets in graph.items() for target in targets
                   if _is_command(modules[target]))
    assert not wrong, wrong


def test_packages_import_only_the_packages_below_them() -> None:
    _, graph = _graph()
    wrong = sorted(f"{name} imports {target}" for name, targets in graph.items() for target in targets
                   if target.split(".")[0] not in ALLOWED[name.split(".")[0]])
    assert not wrong, wrong


def test_no_module_is_over_600_lines() -> None:
    long = {name: n for name, path in _modules().items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, long
