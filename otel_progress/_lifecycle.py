"""Exit and fork in one place: atexit, ``os.register_at_fork``, Celery's worker_* signals. Each way
out (atexit; ``worker_process_shutdown``, as a prefork child leaves by ``os._exit``; or
``worker_shutdown``) runs one shutdown per process: "bridge" callbacks, then "export" ones, under
one deadline."""

from __future__ import annotations

import atexit
import os
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Any, Final, Literal, Protocol

from otel_progress._safety import logger

Stage = Literal["bridge", "export"]
DEFAULT_SHUTDOWN_BOUND_S: Final = 10.0
"""Seconds a whole shutdown may take unless configure() set its export timeout."""

_lock = threading.Lock()
_callbacks: Final[dict[str, dict[Callable[..., object], None]]] = {  # ordered sets: once each
    kind: {} for kind in ("bridge", "export", "fork", "worker_process_init")}
_bound = DEFAULT_SHUTDOWN_BOUND_S
_shut_down_in: int | None = None
_owners: set[str] = set()
_connected: list[tuple[Any, Callable[..., None]]] = []


def on_shutdown(callback: Callable[[float], object], stage: Stage) -> None:
    """Run ``callback(deadline)`` (a ``time.monotonic()`` value) when this process shuts down."""
    _callbacks[stage][callback] = None


def on_fork_child(callback: Callable[[], object]) -> None:
    """Run ``callback()`` in the child right after each ``fork()``."""
    _callbacks["fork"][callback] = None


def on_worker_process_init(callback: Callable[[], object]) -> None:
    """Run ``callback()`` in each new Celery prefork child (once :func:`connect_celery` ran)."""
    _callbacks["worker_process_init"][callback] = None


class PostMortem(Protocol):
    """The export rooms' way to end spans another process opened and died with (the SDK wall:
    building a span with given ids needs the SDK, so ``_config`` installs this)."""

    def ready(self) -> bool:
        """Whether this process has an SDK provider that would export them."""

    def export(self, spans: list[dict[str, Any]], end_time: float, error_type: str,
               message: str, task_name: str) -> int:
        """End ``spans`` (``OpenSpan`` dicts) at ``end_time``, ERROR; return how many."""


_post_mortem: PostMortem | None = None


def set_post_mortem(exporter: PostMortem | None) -> None:
    """Install the exporter of post-mortem spans (``_config`` does, at import)."""
    global _post_mortem
    _post_mortem = exporter


def post_mortem_ready() -> bool:
    """Whether dead spans can be exported from this process."""
    return _post_mortem is not None and _post_mortem.ready()


def export_post_mortem(spans: list[dict[str, Any]], end_time: float, error_type: str,
                       message: str, task_name: str) -> int:
    """Export spans a dead process left open, once, with their ids; 0 without an SDK."""
    if _post_mortem is None:
        return 0
    return _post_mortem.export(spans, end_time, error_type, message, task_name)


def set_shutdown_bound(seconds: float) -> None:
    """Let a whole shutdown take ``seconds`` (configure() passes its export timeout)."""
    global _bound
    _bound = seconds


def shutdown_bound() -> float:
    """Seconds the whole shutdown may take: the export timeout configure() set, default 10."""
    return _bound


def run_shutdown(reason: str, **_: object) -> None:
    """Run every bridge, then every export callback, under one deadline; once per process."""
    global _shut_down_in
    with _lock:
        if _shut_down_in == os.getpid():  # e.g. atexit after worker_shutdown: no second wait
            return
        _shut_down_in = os.getpid()
    _run(("bridge", "export"), reason, time.monotonic() + _bound)


def _run(kinds: tuple[str, ...], reason: str, *args: float, **_: object) -> None:
    for callback in [callback for kind in kinds for callback in list(_callbacks[kind])]:
        try:
            callback(*args)
        except Exception:  # an exit or fork path: log, never raise into atexit or Celery
            logger.warning("otel_progress internal error in lifecycle.%s (ignored)", reason,
                           exc_info=True)


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.Lock()  # another thread may have held it at fork()
    _run(("fork",), "fork")


def connect_celery(owner: str) -> None:
    """Connect the worker_* receivers on behalf of ``owner`` ("configure", "instrument")."""
    from celery import signals

    with _lock:
        _owners.add(owner)
        for signal, receiver in () if _connected else (
            (signals.worker_process_init, partial(_run, ("worker_process_init",), "init")),
            (signals.worker_process_shutdown, partial(run_shutdown, "worker_process_shutdown")),
            (signals.worker_shutdown, partial(run_shutdown, "worker_shutdown")),
        ):
            signal.connect(receiver, weak=False)  # strong: teardown must not drop them
            _connected.append((signal, receiver))


def disconnect_celery(owner: str) -> None:
    """Forget ``owner``; with no owner left, disconnect exactly what was connected."""
    with _lock:
        _owners.discard(owner)
        while not _owners and _connected:
            signal, receiver = _connected.pop()
            signal.disconnect(receiver)


atexit.register(run_shutdown, "atexit")
os.register_at_fork(after_in_child=_after_fork_in_child)
