"""Celery lifecycle hooks: the task-end hook, queued tracking, revocation and worker shutdown.

The final payload must be written *before* Celery stores the task's own result, and no progress
write may land after it (else a late ``PROGRESS`` write could replace ``SUCCESS``). No Celery
signal fires between the task body returning and ``mark_as_done``, so the hook wraps
``Task.__call__``: Celery's tracer calls ``task`` instead of ``task.run`` when ``__call__`` is
monkey-patched (``task_has_custom`` checks the attribute's module for exactly this), and it must
be patched before the tracers are built, i.e. at ``worker_init`` (Celery's own comment says so)
or earlier through ``ProgressInstrumentor().instrument()``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from otel_progress import _bridge, _lifecycle
from otel_progress._payload import ProgressPayload
from otel_progress._run import FAILED, Run
from otel_progress._safety import internal_error, log_once, safe_str

_original_call: Callable[..., Any] | None = None
_connected: list[tuple[Any, Callable[..., Any]]] = []
track_queued = True


_active = threading.local()


def _task_call(self: Any, *args: Any, **kwargs: Any) -> Any:
    """``Task.__call__`` with the task-end hook: close the run before the result is stored."""
    assert _original_call is not None
    try:
        task_id = self.request.id
    except Exception:  # pragma: no cover - request is always there
        task_id = None
    running: set[str] | None = getattr(_active, "ids", None)
    if running is None:
        running = _active.ids = set()
    if task_id is None or task_id in running:  # a direct (e.g. recursive) call inside the task
        return _original_call(self, *args, **kwargs)
    running.add(task_id)
    try:
        result = _original_call(self, *args, **kwargs)
    except BaseException as exc:
        running.discard(task_id)
        task_ended(str(task_id), exc)
        raise
    running.discard(task_id)
    task_ended(str(task_id), None)
    return result


_task_call.__module__ = __name__  # how Celery's tracer recognises a monkey-patched __call__


def hook_installed() -> bool:
    """Whether the task-end hook is the outermost ``Task.__call__``."""
    from celery.app.task import Task

    return Task.__dict__["__call__"] is _task_call


def install_task_end_hook() -> None:
    """Make ``_task_call`` the outermost ``Task.__call__`` (idempotent).

    A worker replaces ``Task.__call__`` with its "stack protection" wrapper before
    ``worker_init`` and that wrapper calls ``task.run`` directly, bypassing what it wrapped; so
    this runs again at ``worker_init`` and wraps whatever is in place then.
    """
    global _original_call
    from celery.app.task import Task

    current = Task.__dict__["__call__"]
    if current is _task_call:
        return
    _original_call = current
    Task.__call__ = _task_call  # type: ignore[method-assign]


def remove_task_end_hook() -> None:
    """Undo :func:`install_task_end_hook`."""
    global _original_call
    from celery.app.task import Task

    if _original_call is None or Task.__dict__["__call__"] is not _task_call:
        return
    Task.__call__ = _original_call  # type: ignore[method-assign]
    _original_call = None


def task_ended(task_id: str, exc: BaseException | None) -> None:
    """Close the task's open sections, finish its run and make the final write."""
    run = _bridge.forget_task(task_id)
    if run is None:
        return
    try:
        outcome = _outcome(run, exc)
        for node in sorted(run.open_nodes(), key=lambda n: -n.depth):
            run.close_section(node, exc if outcome == FAILED else None)
        if exc is not None and outcome == FAILED and run.latest_exc is not exc:
            # Celery's instrumentation records it on run/<task>: remember it, don't record it.
            run.failed = True
            run.remember_exception(exc)
        _bridge.finalize_run(run, outcome=outcome)
    except Exception as err:
        internal_error("celery.task_ended", err)


def _outcome(run: Run, exc: BaseException | None) -> str | None:
    if exc is None:
        return None  # the run decides: failed if a job failed, else succeeded
    from celery.exceptions import Ignore, Reject, Retry

    try:
        from billiard.exceptions import Terminated
    except ImportError:  # pragma: no cover
        Terminated = ()  # type: ignore[assignment,misc]
    if isinstance(exc, Retry):
        return "retrying"
    if isinstance(exc, Terminated):
        return "revoked"
    if isinstance(exc, (Ignore, Reject)):
        return None
    return FAILED


# --- signals -----------------------------------------------------------------------------------
def _on_worker_init(**_kwargs: Any) -> None:
    install_task_end_hook()


def _on_before_publish(
    sender: Any = None, headers: dict[str, Any] | None = None, **_kwargs: Any
) -> None:
    """A task is tracked from publish: record it ``queued``, and as a child of the running one."""
    try:
        if not headers:
            return
        task_id = headers.get("id")
        if not task_id:
            return
        parent = _bridge.current_celery_task()
        if parent is not None and parent.task_id != str(task_id):  # retry() re-publishes itself
            run = _bridge.run_of_task(parent.task_id)
            if run is not None and len(run.children) < 10_000:
                run.children.append(str(task_id))
        if track_queued:
            _write_queued(str(task_id), safe_str(headers.get("task") or sender or "task"))
    except Exception as exc:
        internal_error("celery.before_task_publish", exc)


def _write_queued(task_id: str, task_name: str) -> None:
    from celery import current_app

    backend = current_app.backend
    now = time.time()
    from otel_progress._payload import SCHEMA_VERSION, iso

    payload: ProgressPayload = {
        "schema": SCHEMA_VERSION, "state": "queued", "pending": True, "current": 0, "total": 100,
        "percent": 0.0, "indeterminate": True, "description": "", "exc_type": None,
        "exc_message": None, "task_name": task_name, "task_uuid": task_id, "start": None,
        "end": None, "log": "", "exception": None, "finished": False, "status": 2,
        "jobs": {"finished": 0, "total": 0}, "sections": [], "trace_id": None, "span_id": None,
        "attempt": 1, "children": [], "updated": iso(now) or "",
    }
    try:
        _bridge.write_own_key(backend, task_id, payload)
    except Exception as exc:
        log_once("queued-write", "otel_progress: cannot record queued task %s: %s", task_id,
                 safe_str(exc, 200))


def _on_revoked(request: Any = None, terminated: bool = False, **_kwargs: Any) -> None:
    """A running task revoked with terminate: its run ends ``revoked``."""
    try:
        task_id = getattr(request, "id", None) or getattr(request, "task_id", None)
        if not task_id:
            return
        run = _bridge.forget_task(str(task_id))
        if run is not None:
            _bridge.finalize_run(run, outcome="revoked")
    except Exception as exc:
        internal_error("celery.task_revoked", exc)


def _on_postrun(task_id: str | None = None, **_kwargs: Any) -> None:
    """Fallback when the task-end hook was not installed in time: finish late, but finish."""
    if task_id and _bridge.run_of_task(str(task_id)) is not None:
        log_once("no-hook", "otel_progress: the task-end hook was not installed before the "
                 "worker started; call ProgressInstrumentor().instrument() at import time")
        task_ended(str(task_id), None)


def _on_worker_shutdown(deadline: float) -> None:
    """Write what is pending before a pool child or the worker goes away (the export stage of
    ``_lifecycle`` flushes the spans after it, under the same deadline)."""
    try:
        _bridge.flush_all(timeout=max(deadline - time.monotonic(), 0.0))
    except Exception as exc:
        internal_error("celery.shutdown", exc)


def connect_signals() -> None:
    """Connect the publish-side handlers (queued tracking, children) (idempotent)."""
    if _connected:
        return
    from celery import signals

    pairs: list[tuple[Any, Callable[..., Any]]] = [
        (signals.before_task_publish, _on_before_publish),
    ]
    for signal, handler in pairs:
        signal.connect(handler, weak=False)
        _connected.append((signal, handler))


def disconnect_signals() -> None:
    """Undo :func:`connect_signals`."""
    while _connected:
        signal, handler = _connected.pop()
        signal.disconnect(handler)


def _connect_worker_init() -> None:
    """Importing otel_progress in a worker is enough to get the task-end hook in time."""
    try:
        from celery import signals
    except ImportError:  # pragma: no cover - celery is a dependency
        return
    signals.worker_init.connect(_on_worker_init, weak=False)
    signals.task_postrun.connect(_on_postrun, weak=False)
    signals.task_revoked.connect(_on_revoked, weak=False)


_connect_worker_init()
_lifecycle.on_shutdown(_on_worker_shutdown, "bridge")
