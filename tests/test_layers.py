"""The structure the code promises (docs/design.md), checked from its own imports: every module under
one name, imports only downward between the packages, no import circle, no module over 400 lines,
no dynamic import of our own modules."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: folder → the package name it is imported under (the checkout's eval/ and app/ ship inside discovery)
PACKAGES = {"discovery": "discovery", "eval": "discovery.eval", "app": "discovery.app", "bench": "bench"}
MAX_LINES = 400


def _modules() -> dict[str, Path]:
    found = {}
    for folder, package in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join((package, *parts))] = path
    return found


MODULES = _modules()


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _imports(name: str) -> list[tuple[str, int]]:
    """Our modules that ``name`` imports (function-level imports included), with line numbers."""
    tree = ast.parse(MODULES[name].read_text())
    base = name if _is_package(name) else name.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                module = ".".join([*anchor, node.module] if node.module else anchor)
            else:
                module = node.module or ""
            targets = [module] + [f"{module}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target and target != name:
                out.append((target, node.lineno))
    return out


def _layer(name: str) -> int:
    """0: the library; 1: the harness; 2: the app and the bench; 3: the command line."""
    if name == "discovery.cli" or name.startswith("discovery.commands") or name == "discovery.__main__":
        return 3
    if name.startswith(("discovery.app", "bench")):
        return 2
    if name.startswith("discovery.eval"):
        return 1
    return 0


def test_imports_only_go_down_between_the_layers():
    upward = [
        f"{MODULES[name].relative_to(ROOT)}:{line} imports {target}"
        for name in MODULES for target, line in _imports(name) if _layer(target) > _layer(name)
    ]
    assert not upward, upward


def test_no_import_circle():
    graph = {name: {target for target, _ in _imports(name)} for name in MODULES}
    # a package's __init__ importing its own submodules is how Python packages work, not a circle
    graph = {n: {t for t in ts if not (_is_package(n) and t.startswith(n + "."))} for n, ts in graph.items()}
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                pytest.fail("import circle: " + " -> ".join(path[path.index(nxt):] + [node, nxt]) if nxt in path else f"{node} -> {nxt}")
            if nxt not in state:
                visit(nxt, path + [node])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [])


def test_every_module_is_imported_under_one_name():
    """The harness and the app are ``discovery.eval`` / ``discovery.app`` everywhere, never ``eval`` / ``app``."""
    bad = []
    for path in [*MODULES.values(), *sorted((ROOT / "tests").glob("*.py"))]:
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module] if isinstance(node, ast.ImportFrom) and not node.level and node.module else [])
            bad += [f"{path.relative_to(ROOT)}:{node.lineno} {n}" for n in names if n.split(".")[0] in ("eval", "app")]
    assert not bad, bad


def test_no_module_over_the_line_ceiling():
    long = {str(p.relative_to(ROOT)): n for p in MODULES.values() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, long


def test_no_dynamic_import_of_our_own_modules():
    """The user's ``module:pkg.mod:factory`` is the one dynamic import (discovery/external.py)."""
    dynamic = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                func = node.func
                called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                if called in ("import_module", "__import__") and name != "discovery.external":
                    dynamic.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not dynamic, dynamic
