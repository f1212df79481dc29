"""Celery: the task-end hook, signals, the current-task lookup, Celery's control-flow exceptions.

The final payload must be written *before* Celery stores the task's own result, and no progress
write may land after it. No Celery signal fires between the task body returning and
``mark_as_done``, so the hook wraps ``Task.__call__``: Celery's tracer calls ``task`` instead of
``task.run`` when ``__call__`` is monkey-patched (``task_has_custom`` checks the attribute's
module for exactly this), and it must be patched before the tracers are built, i.e. at
``worker_init`` or earlier through ``ProgressInstrumentor().instrument()`` / :func:`install`.
Nothing here is connected at import: :func:`install` connects it and :func:`uninstall`
disconnects exactly that.
"""

from __future__ import annotations

import datetime
import functools
import threading
import time
import uuid
import weakref
from collections.abc import Callable
from typing import Any, Final, cast

from billiard.exceptions import (
    SoftTimeLimitExceeded,
    Terminated,
    TimeLimitExceeded,
    WorkerLostError,
)
from celery import current_app, current_task, signals
from celery.app.task import Task
from celery.exceptions import Ignore, Reject, Retry

from otel_progress import _backend, _lifecycle, _publish, _spans
from otel_progress._publish import DuckTarget
from otel_progress._run import FAILED, RETRYING, REVOKED, Outcome, Run, TaskCancelled
from otel_progress._safety import (
    exception_text,
    guard,
    internal_error,
    log_once,
    redact,
    safe_str,
)

CONTROL_FLOW: Final = (Retry, Ignore, Reject)
"""Exceptions that steer Celery: they pass through sections unchanged and are not errors."""
NEVER_SUPPRESSED: Final = (SoftTimeLimitExceeded, Terminated, TimeLimitExceeded, WorkerLostError)
"""Errors that are recorded as errors but never suppressed by a section (DECISIONS 3)."""

UNINSTRUMENTED_WARNING: Final = (
    "otel_progress: this Celery worker was not instrumented, so task progress is recorded as "
    "spans but not published to the result backend. Call "
    "otel_progress.celery.ProgressInstrumentor().instrument() (or otel_progress.celery.install()) "
    "in the module that defines the Celery app."
)

DEFAULT_TRACK_QUEUED: Final = True
_track_queued = DEFAULT_TRACK_QUEUED
_send_events = False
_original_call: Callable[..., Any] | None = None
_connected: list[tuple[Any, Callable[..., Any]]] = []
_active = threading.local()
_runs_lock = threading.Lock()
_runs_by_task: dict[str, Run] = {}
_unhooked_runs: weakref.WeakValueDictionary[str, Run] = weakref.WeakValueDictionary()
"""Runs of a worker without the task-end hook: kept only while a facade holds them."""


def outcome_of(exc: BaseException | None) -> Outcome:
    """How an exception leaving a section ends it: an error, or control flow that steers."""
    if exc is None:
        return "succeeded"
    if isinstance(exc, TaskCancelled):
        return "cancelled"
    if isinstance(exc, CONTROL_FLOW):
        return "interrupted"
    if not isinstance(exc, Exception):
        return "aborted"  # SystemExit, KeyboardInterrupt...: not an error, not done either
    return "failed"


def never_suppressed(exc: BaseException) -> bool:
    """True for exceptions a section records but always re-raises."""
    return not isinstance(exc, Exception) or isinstance(exc, CONTROL_FLOW + NEVER_SUPPRESSED)


def configure_bridge(*, min_interval: float | None = None, track_queued: bool | None = None,
                     send_events: bool | None = None) -> None:
    """Options of ``instrument()``; None restores the default."""
    global _track_queued, _send_events
    _publish.set_min_interval(_publish.DEFAULT_MIN_INTERVAL if min_interval is None
                              else min_interval)
    _track_queued = DEFAULT_TRACK_QUEUED if track_queued is None else bool(track_queued)
    _send_events = bool(send_events)


# --- the current task and its run ---------------------------------------------------------------
class CeleryTaskInfo:
    """What the bridge needs of the Celery task executing in this thread."""

    __slots__ = ("attempt", "eager", "name", "request", "task", "task_id")

    def __init__(self, task: Any, request: Any, task_id: str, name: str, attempt: int) -> None:
        self.task = task
        self.request = request
        self.task_id = task_id
        self.name = name
        self.attempt = attempt
        self.eager = bool(getattr(request, "is_eager", False))


def current_celery_task() -> CeleryTaskInfo | None:
    """The Celery task this thread is executing (worker or eager), or None."""
    task = current_task
    if task is None:
        return None
    try:
        request = task.request
        task_id = request.id
    except Exception:
        return None
    if not task_id:
        return None
    retries = getattr(request, "retries", 0) or 0
    real = getattr(task, "_get_current_object", lambda: task)()
    return CeleryTaskInfo(real, request, str(task_id), str(task.name), retries + 1)


def carry_task() -> Callable[[Callable[[], Any]], Any] | None:
    """What runs a call in another thread as part of the Celery task executing here, or None.

    Celery's current task and its request are thread-local, so a thread the task starts sees
    no task: the returned ``carry(call)`` pushes both around ``call()`` in that thread (and
    leaves a thread already executing this task alone), so a ``TaskUpdater()`` or
    ``Observer(self)`` made there joins the task's run and ``self.request.id`` reads right.
    """
    info = current_celery_task()
    if info is None:
        return None
    task, request = info.task, info.request
    from celery import _state

    state: Any = _state  # celery-types does not declare the push/pop helpers

    def carry(call: Callable[[], Any]) -> Any:
        if _state.get_current_task() is task and getattr(task.request, "id", None) == info.task_id:
            return call()
        state.push_current_task(task)
        task.request_stack.push(request)
        try:
            return call()
        finally:
            task.request_stack.pop()
            state.pop_current_task()

    return carry


def run_for_current_task(
    task_uuid: object = None,
    task_name: object = None,
    *,
    expected_sections: int | None = None,
    observed_task: Any = None,
    include_traceback: bool = False,
) -> Run:
    """The run of the Celery task executing here (shared by every facade in it), or a new one.

    ``observed_task`` is what an Observer was given: a Celery task, any object with
    ``update_state(state=, meta=)``, or None.
    """
    info = current_celery_task()
    if info is not None and (observed_task is None or observed_task is info.task
                             or getattr(observed_task, "name", None) == info.name):
        hooked = hook_installed()
        registry: Any = _runs_by_task if hooked else _unhooked_runs
        with _runs_lock:
            run = cast(Run | None, registry.get(info.task_id))
            if run is not None and not (run.finished and run.attempt != info.attempt):
                return run
            run = Run(
                redact(safe_str(task_uuid)) if task_uuid is not None else info.task_id,
                redact(safe_str(task_name)) if task_name is not None else info.name,
                expected_sections=expected_sections,
                celery_task_id=info.task_id,
                attempt=info.attempt,
                include_traceback=include_traceback,
            )
            run.ends_on_drop = not hooked
            registry[info.task_id] = run
        _spans.start_run(run, info.name, in_celery=True)
        if not hooked:
            if not info.eager:
                log_once("uninstrumented", UNINSTRUMENTED_WARNING)
        elif _backend.has_result_backend(info.task.backend):
            target = _backend.TaskTarget(info.task, info.task_id, info.request)
            _publish.publish(run, target, _event_sender(info.task, info.task_id))
        return run
    name = redact(safe_str(task_name)) if task_name is not None else _default_name(observed_task)
    run = Run(
        redact(safe_str(task_uuid)) if task_uuid is not None else str(uuid.uuid4()),
        name,
        expected_sections=expected_sections,
        include_traceback=include_traceback,
    )
    _spans.start_run(run, name, in_celery=False)
    if _is_duck_sink(observed_task):
        _publish.publish(run, DuckTarget(observed_task))
    return run


def _event_sender(task: Any, task_id: str) -> Callable[[Any], None] | None:
    """Celery's ``task-progress`` event with each write, when ``send_events`` is on."""
    if not _send_events:
        return None

    def send(payload: Any) -> None:
        with task.app.events.default_dispatcher() as dispatcher:
            dispatcher.send("task-progress", uuid=task_id, progress=payload)

    return send


def _is_duck_sink(obj: Any) -> bool:
    """An object with ``update_state`` that is not a Celery task outside its execution (a
    Celery task has no id to write under then: ``task.run()`` called directly, say)."""
    if obj is None or not callable(getattr(obj, "update_state", None)):
        return False
    return not isinstance(obj, Task)


def _default_name(observed_task: Any) -> str:
    name = getattr(observed_task, "name", None) if observed_task is not None else None
    return safe_str(name) if isinstance(name, str) and name else "Task"


def forget_task(task_id: str) -> Run | None:
    """Drop the run of a finished task from the registry and return it."""
    with _runs_lock:
        return _runs_by_task.pop(task_id, None)


def run_of_task(task_id: str) -> Run | None:
    """The live run of ``task_id`` in this process, if any."""
    return _runs_by_task.get(task_id)


# --- the task-end hook ----------------------------------------------------------------------------
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
    started = time.time()
    try:
        result = _body(self)(*args, **kwargs)
    except BaseException as exc:
        running.discard(task_id)
        task_ended(str(task_id), exc, started=started)
        if isinstance(exc, TaskCancelled):
            # A requested cancel is no failure: Celery stores REVOKED (bounded), and Ignore keeps
            # its tracer from storing a FAILURE over it or reporting an error.
            _backend.mark_revoked(self, str(task_id), str(exc))
            raise Ignore(str(exc)) from exc
        raise
    running.discard(task_id)
    task_ended(str(task_id), None, started=started)
    return result


def _body(task: Any) -> Callable[..., Any]:
    """What runs the task under the tracer: ``task.run`` where Celery would call it directly.

    Without this wrapper Celery's tracer calls ``task.run`` itself, with the request it pushed.
    A wrapped ``__call__`` makes the tracer call ``Task.__call__``, which pushes a request of its
    own: before Celery 5.4 that request is empty, so ``self.request.id`` read None inside eager
    tasks. Celery's own ``__call__`` (or its worker stack protection) is skipped exactly when
    Celery would skip it; any other ``__call__`` (another library's wrapper) still runs.
    """
    assert _original_call is not None
    if getattr(_original_call, "__module__", None) in ("celery.app.task", "celery.app.trace"):
        stack = task.request_stack
        request = stack.top
        if request is not None and len(stack) == 1 and not request.called_directly:
            run: Callable[..., Any] = task.run
            return run
    return functools.partial(_original_call, task)


_task_call.__module__ = __name__  # how Celery's tracer recognises a monkey-patched __call__


def hook_installed() -> bool:
    """Whether the task-end hook is the outermost ``Task.__call__``."""
    return Task.__dict__["__call__"] is _task_call


def _install_hook() -> None:
    """Make ``_task_call`` the outermost ``Task.__call__`` (idempotent).

    A worker replaces ``Task.__call__`` with its "stack protection" wrapper before
    ``worker_init`` and that wrapper calls ``task.run`` directly, bypassing what it wrapped; so
    this runs again at ``worker_init`` and wraps whatever is in place then.
    """
    global _original_call
    current = Task.__dict__["__call__"]
    if current is _task_call:
        return
    _original_call = current
    Task.__call__ = _task_call  # type: ignore[method-assign]


def _remove_hook() -> None:
    global _original_call
    if _original_call is None or Task.__dict__["__call__"] is not _task_call:
        return
    Task.__call__ = _original_call  # type: ignore[method-assign]
    _original_call = None


def task_ended(task_id: str, exc: BaseException | None, *, started: float | None = None) -> None:
    """Close the task's open sections, finish its run and make the final write."""
    run = forget_task(task_id)
    if run is None:
        if started is not None:
            with guard("celery.task_ended.history"):
                _history_bare_end(task_id, exc, started)
        return
    with guard("celery.task_ended"):
        outcome = _run_outcome(exc)
        section_outcome: Outcome = "succeeded"
        if run.cancelled:  # TaskCancelled was raised, even if the task caught it
            outcome, section_outcome = REVOKED, "cancelled"
        elif outcome in (FAILED, REVOKED):
            section_outcome = "failed" if isinstance(exc, Exception) else "aborted"
        killed = dying(exc)
        for node in run.open_nodes():
            if killed:
                _spans.leave_for_post_mortem(run, node)
            if run.close_section(node, section_outcome,
                                 exc if section_outcome != "succeeded" else None) and not killed:
                _spans.end_section(run, node, exc if section_outcome != "succeeded" else None)
        if isinstance(exc, Retry):
            run.retry_at = _retry_at(exc)
        # History: the final payload written below (state revoked, exc_type TaskCancelled for a
        # cancel) is the one a history store records at the task end.
        if exc is not None and outcome in (FAILED, REVOKED) and run.latest_exc is not exc:
            # Celery's instrumentation records it on run/<task>: remember it, don't record it.
            run.failed = True
            run.remember_exception(exc)
        # A dying child writes now; a cancel's REVOKED is stored on a helper thread (bounded):
        # neither may leave the final write for Celery's store on this thread.
        finish(run, outcome=outcome, complete=exc is None or outcome == RETRYING,
               defer=not killed and not isinstance(exc, TaskCancelled))


def _history_bare_end(task_id: str, exc: BaseException | None, started: float) -> None:
    """The history row of a task that made no TaskUpdater/Observer: its outcome, from Celery's
    own view of the exception (the final write of a run does this for the others)."""
    info = current_celery_task()
    if info is None or info.task_id != task_id or info.eager:
        return
    outcome = _run_outcome(exc)
    state = "succeeded" if outcome is None else str(outcome)
    row: dict[str, Any] = {"task_id": task_id, "task_name": info.name, "state": state,
                           "attempt": info.attempt, "start": started,
                           "parent_id": getattr(info.request, "parent_id", None)}
    if state != RETRYING:
        row["end"] = time.time()
    if exc is not None and state in (FAILED, REVOKED):
        row.update(exc_type=type(exc).__name__, exc_message=safe_str(exc, 1000))
    _backend.history_record(info.task.app, row)


def dying(exc: BaseException | None) -> bool:
    """Whether ``exc`` is billiard killing this pool child: the ``SystemExit(-(256 - signum))``
    its SIGTERM handler raises (a revoke's terminate, a hard time limit), SIGKILL 0.1 s behind.

    Too soon to export anything: the open spans are left unended and listed in the final
    payload's private part, and the main worker process ends them (post-mortem), once, as
    ERROR with ``error.type`` ``Terminated``/``TimeLimitExceeded``."""
    if not isinstance(exc, SystemExit) or not isinstance(exc.code, int) or exc.code >= 0:
        return False
    info = current_celery_task()
    return info is not None and not info.eager


def _retry_at(exc: Retry) -> float | None:
    """When the retry is due: ``Retry.when`` is an ETA datetime or a countdown in seconds."""
    when = getattr(exc, "when", None)
    if isinstance(when, datetime.datetime):
        if when.tzinfo is None:
            when = when.replace(tzinfo=datetime.timezone.utc)
        return when.timestamp()
    if isinstance(when, (int, float)) and not isinstance(when, bool):
        return time.time() + float(when)
    return None


def finish(run: Run, *, outcome: Any = None, complete: bool = True, defer: bool = False) -> None:
    """Finish ``run``, end its span, and make its final write (bounded by FINAL_TIMEOUT;
    ``defer``: in Celery's own store of the state that follows, see ``_backend.defer_final``)."""
    if run.finish(outcome=outcome, complete=complete):
        _spans.end_run(run)
    _publish.final_write(run, defer=defer)


def _on_postrun(**_kwargs: Any) -> None:
    """After Celery stored the task's state: a final write it did not take is made now."""
    with guard("celery.task_postrun"):
        _backend.write_pending()


def _run_outcome(exc: BaseException | None) -> Any:
    if exc is None or isinstance(exc, (Ignore, Reject)):
        return None  # the run decides: failed if a job failed, else succeeded
    if isinstance(exc, Retry):
        return RETRYING
    if isinstance(exc, Terminated):
        return REVOKED
    return FAILED


# --- signals -----------------------------------------------------------------------------------
def _on_worker_init(**_kwargs: Any) -> None:
    _install_hook()


def _on_before_publish(
    sender: Any = None, headers: dict[str, Any] | None = None, body: Any = None, **_kwargs: Any
) -> None:
    """A task is tracked from publish: record it ``queued``, and as a child of the running one."""
    with guard("celery.before_task_publish"):
        if not headers:
            return
        task_id = headers.get("id")
        if not task_id:
            return
        parent = current_celery_task()
        if parent is not None and parent.task_id != str(task_id):  # retry() re-publishes itself
            run = run_of_task(parent.task_id)
            if run is not None:
                _add_child(run, str(task_id))
                callback = _chord_callback_id(headers, body)
                if callback is not None:
                    _add_child(run, callback)
        if _track_queued:
            name = safe_str(headers.get("task") or sender or "task")
            retry = parent is not None and parent.task_id == str(task_id)
            _backend.write_queued(current_app, str(task_id), name, None if retry else {
                "task_id": str(task_id), "task_name": name, "state": "queued",
                "parent_id": headers.get("parent_id")})


def _add_child(run: Run, task_id: str) -> None:
    if len(run.children) < 10_000 and task_id not in run.children[-200:]:
        run.children.append(task_id)


def _chord_callback_id(headers: dict[str, Any], body: Any) -> str | None:
    """The id of a chord's callback, which each header task's message carries (protocol 2:
    ``body = (args, kwargs, {"chord": <callback signature>, ...})``; protocol 1: a header)."""
    chord = headers.get("chord")
    if chord is None and isinstance(body, (tuple, list)) and len(body) == 3 \
            and isinstance(body[2], dict):
        chord = body[2].get("chord")
    if isinstance(chord, dict):
        task_id = (chord.get("options") or {}).get("task_id")
        return str(task_id) if task_id else None
    return None


def _on_revoked(sender: Any = None, request: Any = None, terminated: bool = False,
                signum: Any = None, **_kwargs: Any) -> None:
    """A running task revoked in this process: its run ends ``revoked``. Terminated in a pool
    child (the main worker process hears of it): the history row ends ``revoked`` and the
    child's open spans are ended for it."""
    with guard("celery.task_revoked"):
        task_id = getattr(request, "id", None) or getattr(request, "task_id", None)
        if not task_id:
            return
        run = forget_task(str(task_id))
        if run is not None:
            for node in run.open_nodes():
                if run.close_section(node, "aborted", None):
                    _spans.end_section(run, node, None)
            finish(run, outcome=REVOKED, complete=False)
            return
        # the worker's main process: the run (if any) was in a pool child it terminated
        task = sender if sender is not None else getattr(request, "task", None)
        app = getattr(task, "app", None) or current_app
        _backend.history_record(app, {
            "task_id": str(task_id), "state": REVOKED, "attempt": 0, "end": time.time(),
            "task_name": getattr(task, "name", None) or getattr(request, "name", None),
            "exc_type": "TaskRevokedError",
            "exc_message": "terminated" if terminated else "revoked"})
        if terminated and sender is not None:
            _backend.post_mortem_later(sender.app, str(task_id), "Terminated",
                                       f"revoked: terminated by signal {safe_str(signum)}",
                                       time.time())


def _on_task_failure(sender: Any = None, task_id: Any = None, exception: Any = None,
                     **_kwargs: Any) -> None:
    """A pool child died with its task (``WorkerLostError``: SIGKILL, OOM) or was killed at its
    hard time limit (``TimeLimitExceeded``), seen by the worker's main process: the child made
    no final write, so the history row ends here, and the spans the child left open are ended
    for it (``_backend.post_mortem_later``)."""
    with guard("celery.task_failure"):
        if not task_id or not isinstance(exception, (TimeLimitExceeded, WorkerLostError)):
            return
        if run_of_task(str(task_id)) is not None:
            return
        app = getattr(sender, "app", None) or current_app
        _backend.history_record(app, {
            "task_id": str(task_id), "task_name": getattr(sender, "name", None),
            "state": FAILED, "attempt": 0, "end": time.time(),
            "exc_type": type(exception).__name__, "exc_message": safe_str(exception, 1000)})
        if sender is not None:
            _backend.post_mortem_later(sender.app, str(task_id), type(exception).__name__,
                                       exception_text(exception), time.time())


def _bridge_shutdown(deadline: float) -> None:
    """Write what is pending before a pool child or the worker goes away."""
    _spans.end_open_runs()
    _publish.flush_all(deadline)


def _after_fork() -> None:
    global _runs_lock
    _runs_lock = threading.Lock()  # a lock held by another thread at fork() stays held
    _runs_by_task.clear()
    _unhooked_runs.clear()
    _publish.after_fork_in_child()
    _backend.reset_after_fork()


_lifecycle.on_fork_child(_after_fork)
_lifecycle.on_shutdown(_bridge_shutdown, "bridge")


def install() -> None:
    """Turn on the state bridge in a worker that does not use ``ProgressInstrumentor``.

    Wraps ``Task.__call__`` (the task-end hook), tracks published tasks as ``queued`` and as
    children, and writes pending payloads when a worker process exits. Call it where the Celery
    app is defined, before the worker starts. :func:`uninstall` undoes exactly this.
    """
    _install_hook()
    if _connected:
        return
    for signal, handler in (
        (signals.worker_init, _on_worker_init),
        (signals.before_task_publish, _on_before_publish),
        (signals.task_revoked, _on_revoked),
        (signals.task_failure, _on_task_failure),
        (signals.task_postrun, _on_postrun),
    ):
        signal.connect(handler, weak=False)
        _connected.append((signal, handler))
    _backend.patch_celery_store()
    _lifecycle.connect_celery("instrument")


def uninstall() -> None:
    """Undo :func:`install`: the hook, the signal receivers, and the bridge's defaults."""
    while _connected:
        signal, handler = _connected.pop()
        signal.disconnect(handler)
    _backend.unpatch_celery_store()
    _remove_hook()
    _lifecycle.disconnect_celery("instrument")
    configure_bridge()


def installed() -> bool:
    """Whether :func:`install` is in effect."""
    return bool(_connected)


def report(site: str, exc: BaseException) -> None:
    """An internal error of the Celery room."""
    internal_error(site, exc)
