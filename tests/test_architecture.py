"""The walls between the package's rooms (docs/architecture.md), read from the imports."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "otel_progress"

SDK_ALLOWED = {"_config", "_pipeline", "_lifecycle", "testing"}
CELERY_AT_MODULE_LEVEL = {"_celery", "_backend", "celery", "_demo_app"}
"""``_demo_app`` is not a room of the library: it is the Celery application the demo's worker
runs (the seeds as tasks), written as a user writes one."""
PURE = {"_run", "_payload", "_history", "_rate"}
"""Rooms that import neither OpenTelemetry nor Celery, anywhere in the module."""
UPPER = ("web", "cli", "history", "_demo", "_demo_app", "_demo_receiver", "_terminal")
"""Public rooms on top: they read through _backend, _payload and the public API only."""
UPPER_MAY_IMPORT = {
    "otel_progress", "otel_progress._backend", "otel_progress._payload", "otel_progress.celery",
    "otel_progress.testing", "otel_progress._version", "otel_progress._safety",
    "otel_progress._attributes", "otel_progress._history",
}
"""``_history`` holds the two stores (plain Python, redis and sqlite3): the Celery rooms write
through it, the upper rooms read through it."""


def _modules() -> Iterator[tuple[str, Path]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).with_suffix("")
        parts = [p for p in rel.parts if p != "__init__"]
        yield ".".join(parts) or "__init__", path


def _imports(path: Path, *, module_level_only: bool) -> list[str]:
    """Absolute names imported by ``path`` (``from x import y`` yields ``x`` and ``x.y``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if module_level_only else list(ast.walk(tree))
    names: list[str] = []
    for node in nodes:
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.append(node.module)
            names += [f"{node.module}.{alias.name}" for alias in node.names]
    return names


def _room(name: str) -> str:
    return name.split(".")[0]


def _internal(names: list[str]) -> set[str]:
    """otel_progress modules imported (``otel_progress.x`` for ``from otel_progress import x``)."""
    found = set()
    for name in names:
        if name == "otel_progress" or name.startswith("otel_progress."):
            parts = name.split(".")
            if len(parts) == 1:
                found.add(name)
            elif (PACKAGE / f"{parts[1]}.py").exists() or (PACKAGE / parts[1]).is_dir():
                found.add(".".join(parts[:2]))
    return found


MODULES = dict(_modules())


@pytest.mark.parametrize("module", sorted(MODULES))
def test_only_the_export_rooms_import_the_sdk(module: str) -> None:
    """opentelemetry.sdk is imported only by _config, _pipeline, _lifecycle and testing."""
    found = [n for n in _imports(MODULES[module], module_level_only=False)
             if n.startswith("opentelemetry.sdk")]
    if _room(module) not in SDK_ALLOWED:
        assert [] == found


@pytest.mark.parametrize("module", sorted(MODULES))
def test_only_the_celery_rooms_import_celery_at_module_level(module: str) -> None:
    """Celery (and billiard, kombu) at module level only in _celery, _backend and celery."""
    found = [n for n in _imports(MODULES[module], module_level_only=True)
             if _room(n) in ("celery", "billiard", "kombu")]
    if module not in CELERY_AT_MODULE_LEVEL:
        assert [] == found


@pytest.mark.parametrize("module", sorted(PURE))
def test_run_state_and_payload_import_neither_opentelemetry_nor_celery(module: str) -> None:
    """_run and _payload are plain Python: no OpenTelemetry, no Celery, anywhere."""
    found = [n for n in _imports(MODULES[module], module_level_only=False)
             if _room(n) in ("opentelemetry", "celery", "billiard", "kombu")]
    assert [] == found


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _room(m) in UPPER))
def test_upper_rooms_read_only_backend_payload_and_public_api(module: str) -> None:
    """web/, cli, history and the demo read the core through _backend, _payload, the API."""
    imported = _internal(_imports(MODULES[module], module_level_only=False))
    own = {f"otel_progress.{r}" for r in UPPER}
    assert set() == {m for m in imported if m not in UPPER_MAY_IMPORT and m not in own}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_nothing_imports_the_cli(module: str) -> None:
    """The CLI is a leaf: no module imports it."""
    if module != "cli":
        imported = _internal(_imports(MODULES[module], module_level_only=False))
        assert "otel_progress.cli" not in imported


def test_there_is_no_import_cycle() -> None:
    """Module-level imports between otel_progress modules form no cycle."""
    graph = {
        f"otel_progress.{m}" if m != "__init__" else "otel_progress":
            _internal(_imports(p, module_level_only=True)) - {"otel_progress"}
        for m, p in MODULES.items()
    }
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(node: str, path: list[str]) -> bool:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycle.extend([*path, node, nxt])
                return True
            if state.get(nxt) is None and visit(nxt, [*path, node]):
                return True
        state[node] = 2
        return False

    for start in sorted(graph):
        if state.get(start) is None and visit(start, []):
            break
    assert [] == cycle


def test_the_walls_see_every_room() -> None:
    """The wall tests read the real package (a moved file must not slip past them)."""
    assert {"_run", "_payload", "_spans", "_backend", "_celery", "_publish", "celery",
            "_config", "_lifecycle", "testing", "_history", "history"} <= set(MODULES)
