"""Process lifecycle: exit, fork and Celery's worker_* signals, for export and the bridge.

(Interim version; the export room's rewrite replaces it with the same API.)
"""

from __future__ import annotations

import atexit
import os
import threading
import time
from collections.abc import Callable
from typing import Any, Literal

from otel_progress._safety import logger

Stage = Literal["bridge", "export"]

_shutdown: dict[Stage, list[Callable[[float], object]]] = {"bridge": [], "export": []}
_fork: list[Callable[[], object]] = []
_init: list[Callable[[], object]] = []
_owners: set[str] = set()
_connected: list[tuple[Any, Callable[..., Any]]] = []
_lock = threading.Lock()
_done_pid: int | None = None
_bound = 10.0


def set_shutdown_bound(seconds: float) -> None:
    """Seconds the whole shutdown may take (configure() sets its export timeout)."""
    global _bound
    _bound = float(seconds)


def shutdown_bound() -> float:
    """Seconds the whole shutdown may take."""
    return _bound


def on_shutdown(callback: Callable[[float], object], stage: Stage) -> None:
    """Run ``callback(deadline)`` at exit and at a worker's (or pool child's) shutdown."""
    with _lock:
        if callback not in _shutdown[stage]:
            _shutdown[stage].append(callback)


def on_fork_child(callback: Callable[[], object]) -> None:
    """Run ``callback`` in a forked child."""
    with _lock:
        if callback not in _fork:
            _fork.append(callback)


def on_worker_process_init(callback: Callable[[], object]) -> None:
    """Run ``callback`` in a new prefork child (``worker_process_init``)."""
    with _lock:
        if callback not in _init:
            _init.append(callback)


def run_shutdown(reason: str) -> None:
    """Every shutdown callback, bridge first, under one deadline; once per process."""
    global _done_pid
    if _done_pid == os.getpid():
        return
    _done_pid = os.getpid()
    deadline = time.monotonic() + _bound
    stages: tuple[Stage, ...] = ("bridge", "export")
    for stage in stages:
        for callback in list(_shutdown[stage]):
            try:
                callback(deadline)
            except Exception:
                logger.exception("otel_progress: %s callback failed at %s", stage, reason)


def _after_fork() -> None:
    global _done_pid
    _done_pid = None
    for callback in list(_fork):
        try:
            callback()
        except Exception:
            logger.exception("otel_progress: a fork callback failed")


def _on_process_init(**_: object) -> None:
    for callback in list(_init):
        try:
            callback()
        except Exception:
            logger.exception("otel_progress: a worker_process_init callback failed")


def _on_process_shutdown(**_: object) -> None:
    run_shutdown("worker_process_shutdown")


def _on_worker_shutdown(**_: object) -> None:
    run_shutdown("worker_shutdown")


def connect_celery(owner: str) -> None:
    """Connect the worker_* receivers (refcounted by ``owner``)."""
    from celery import signals

    with _lock:
        _owners.add(owner)
        if _connected:
            return
        for signal, handler in (
            (signals.worker_process_init, _on_process_init),
            (signals.worker_process_shutdown, _on_process_shutdown),
            (signals.worker_shutdown, _on_worker_shutdown),
        ):
            signal.connect(handler, weak=False)
            _connected.append((signal, handler))


def disconnect_celery(owner: str) -> None:
    """Disconnect them when no owner is left."""
    with _lock:
        _owners.discard(owner)
        if _owners:
            return
        while _connected:
            signal, handler = _connected.pop()
            signal.disconnect(handler)


atexit.register(run_shutdown, "exit")
os.register_at_fork(after_in_child=_after_fork)
