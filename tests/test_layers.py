"""The tree's architecture, held: imports run one way, from the entry points down to the
payloads, and every module opens with a docstring that says its one job."""

from __future__ import annotations

import ast
from pathlib import Path

APP = Path(__file__).resolve().parent.parent / "app"

# Highest first. A module may import its own layer and those below it, never one above.
LAYERS: list[tuple[str, ...]] = [
    ("app.main", "app.cli"),  # entry points: the ASGI app and the command line
    ("app.api", "app.http_protocol"),  # HTTP in: routes, their schemas, the server's bounds
    ("app.services",),  # the work that routes and the CLI share
    ("app.outbound",),  # HTTP out: pushing to endpoints
    ("app.db",),  # every query
    ("app.settings", "app.metrics", "app.logs"),
    ("app.rules",),  # decisions, no I/O
    ("app.payloads", "app.errors"),  # what Wavy sends; the error family
]


def layer_of(module: str) -> int:
    for rank, prefixes in enumerate(LAYERS):
        if any(module == prefix or module.startswith(prefix + ".") for prefix in prefixes):
            return rank
    raise AssertionError(f"{module} is in no layer: add it to LAYERS")


def module_name(path: Path) -> str:
    parts = path.relative_to(APP.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(tree: ast.Module) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            # ``from app import metrics`` imports app.metrics.
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name.startswith("app.")}


def known_modules() -> set[str]:
    return {module_name(path) for path in APP.rglob("*.py")}


def test_imports_run_one_way_from_the_entry_points_down_to_the_payloads() -> None:
    modules = known_modules()
    upward = []
    for path in sorted(APP.rglob("*.py")):
        importer = module_name(path)
        for imported in imports_of(ast.parse(path.read_text(encoding="utf-8"))):
            if imported not in modules:
                continue  # a name imported from a module, already counted by its module
            if layer_of(imported) < layer_of(importer):
                upward.append(f"{importer} imports {imported}")
    assert upward == []


def test_every_module_opens_with_a_docstring() -> None:
    missing = [
        module_name(path)
        for path in sorted(APP.rglob("*.py"))
        if not ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
    ]
    assert missing == []
