"""The Celery state bridge: one run per task, and one coalescing flusher that publishes it.

Frontends read progress from Celery's result backend. Writing on every ``advance()`` would cost a
round trip per loop iteration, so the hot path only bumps counters and a single daemon thread per
process writes each task's payload at most once per ``min_interval`` (default 0.5 s), promptly
when something important happened (a section failed, a terminal Observer call), and once more,
finally, when the task ends. The final payload goes under otel_progress's own key (same expiry)
so Celery's own state and the task's return value are never altered.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, Final

from otel_progress import _lifecycle
from otel_progress._payload import FINAL_STATES, ProgressPayload
from otel_progress._run import Run, end_open_runs
from otel_progress._safety import internal_error, log_once, logger, safe_str

KEY_PREFIX: Final = "otel-progress-meta-"
"""Result-backend key prefix of the payload otel_progress owns (``<prefix><task id>``)."""
DEFAULT_MIN_INTERVAL: Final = 0.5
FINAL_TIMEOUT: Final = 5.0
"""Seconds the task end waits for its final write at most (a down backend must not hang it)."""

_min_interval = DEFAULT_MIN_INTERVAL
_send_events = False


def set_send_events(enabled: bool) -> None:
    """Also emit a Celery ``task-progress`` event with each progress write (Flower, monitors)."""
    global _send_events
    _send_events = bool(enabled)


def set_min_interval(seconds: float) -> None:
    """Seconds between two backend writes of one task (>= 0.01)."""
    global _min_interval
    _min_interval = max(float(seconds), 0.01)


# --- where the current Celery task is --------------------------------------------------------
class CeleryTaskInfo:
    """What the bridge needs of the Celery task executing in this thread."""

    __slots__ = ("attempt", "name", "task", "task_id")

    def __init__(self, task: Any, task_id: str, name: str, attempt: int) -> None:
        self.task = task
        self.task_id = task_id
        self.name = name
        self.attempt = attempt


def current_celery_task() -> CeleryTaskInfo | None:
    """The Celery task this thread is executing (worker or eager), or None."""
    try:
        from celery import current_task
    except ImportError:  # pragma: no cover - celery is a dependency
        return None
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
    return CeleryTaskInfo(real, str(task_id), str(task.name), retries + 1)


_runs_lock = threading.Lock()
_runs_by_task: dict[str, Run] = {}


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
        with _runs_lock:
            run = _runs_by_task.get(info.task_id)
            if run is not None and not (run.finished and run.attempt != info.attempt):
                return run
            run = Run(
                safe_str(task_uuid) if task_uuid is not None else info.task_id,
                safe_str(task_name) if task_name is not None else info.name,
                span_name=info.name,
                expected_sections=expected_sections,
                celery_task=info.task,
                celery_task_id=info.task_id,
                attempt=info.attempt,
                include_traceback=include_traceback,
            )
            _runs_by_task[info.task_id] = run
        if _has_result_backend(info.task):
            publisher_for(run, _CelerySink(info.task, info.task_id))
        return run
    name = safe_str(task_name) if task_name is not None else _default_name(observed_task)
    run = Run(
        safe_str(task_uuid) if task_uuid is not None else str(uuid.uuid4()),
        name,
        expected_sections=expected_sections,
        include_traceback=include_traceback,
    )
    if _is_duck_sink(observed_task):
        publisher_for(run, _DuckSink(observed_task))
    return run


def _is_duck_sink(obj: Any) -> bool:
    """An object with ``update_state`` that is not a Celery task outside its execution (a
    Celery task has no id to write under then: ``task.run()`` called directly, say)."""
    if obj is None or not callable(getattr(obj, "update_state", None)):
        return False
    from celery.app.task import Task

    return not isinstance(obj, Task)


def _has_result_backend(task: Any) -> bool:
    """False for Celery's DisabledBackend (no ``result_backend`` configured): nowhere to write."""
    try:
        from celery.backends.base import DisabledBackend

        return not isinstance(task.backend, DisabledBackend)
    except Exception:
        return True


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


# --- sinks: where a payload is written ----------------------------------------------------------
class _Sink:
    """Writes payloads somewhere; ``final`` is the last write for the run."""

    label = "sink"

    def progress(self, state: str, payload: ProgressPayload) -> None:
        raise NotImplementedError

    def final(self, payload: ProgressPayload) -> None:
        raise NotImplementedError


class _CelerySink(_Sink):
    """Celery's result backend: PROGRESS meta while running, our own key for the final payload."""

    def __init__(self, task: Any, task_id: str) -> None:
        self.task = task
        self.task_id = task_id
        self.label = task_id

    def progress(self, state: str, payload: ProgressPayload) -> None:
        self.task.update_state(task_id=self.task_id, state=state, meta=payload)
        if _send_events:
            self._send_event(payload)

    def _send_event(self, payload: ProgressPayload) -> None:
        """``task-progress`` with the payload: event consumers see progress without polling."""
        try:
            with self.task.app.events.default_dispatcher() as dispatcher:
                dispatcher.send("task-progress", uuid=self.task_id, progress=payload)
        except Exception as exc:
            log_once("task-progress-event", "otel_progress: cannot send task-progress: %s",
                     safe_str(exc, 200))

    def final(self, payload: ProgressPayload) -> None:
        backend = self.task.backend
        if not write_own_key(backend, self.task_id, payload):
            # Backends without a key-value store (rpc://, database): the PROGRESS meta is the
            # best place left; Celery's final state replaces it, the reader falls back to that.
            self.progress("PROGRESS", payload)


def own_key(task_id: str) -> str:
    """Backend key of otel_progress's payload for ``task_id``."""
    return KEY_PREFIX + task_id


def write_own_key(backend: Any, task_id: str, payload: ProgressPayload) -> bool:
    """Store ``payload`` under our own key; False when the backend is no key-value store.

    Key-value backends (Redis, cache, filesystem, ...) apply ``result_expires`` in ``set()``,
    so the payload expires with the task's own result.
    """
    from celery.backends.base import BaseKeyValueStoreBackend

    if not isinstance(backend, BaseKeyValueStoreBackend):
        return False
    backend.set(own_key(task_id), backend.encode(payload))
    return True


class _DuckSink(_Sink):
    """Anything with ``update_state(state=, meta=)`` (mastf-style fakes, custom task classes)."""

    def __init__(self, obj: Any) -> None:
        self.obj = obj
        self.label = safe_str(getattr(obj, "name", None) or type(obj).__name__)

    def progress(self, state: str, payload: ProgressPayload) -> None:
        self.obj.update_state(state=state, meta=payload)

    def final(self, payload: ProgressPayload) -> None:
        self.obj.update_state(state="PROGRESS", meta=payload)


# --- the publisher (per run) and the flusher (per process) -------------------------------------
class Publisher:
    """Coalesces one run's payload writes: at most one per ``min_interval``, final once."""

    def __init__(self, run: Run, sink: _Sink) -> None:
        self.run = run
        self.sink = sink
        self.last_write = 0.0
        self.last_sent: dict[str, Any] | None = None
        self.urgent = False
        self.closed = False
        self.warned = False
        self.write_lock = threading.Lock()

    def due(self, now: float) -> float:
        """Seconds until this publisher may write again (0 = now)."""
        return max(self.last_write + _min_interval - now, 0.0)

    def flush(self, now: float) -> None:
        """Write the run's payload if it changed (the flusher thread calls this)."""
        with self.write_lock:
            if self.closed:
                return
            run = self.run
            try:
                run.sync_span_attributes()
                payload = run.payload()
            except Exception as exc:
                internal_error("bridge.payload", exc)
                return
            comparable = {k: v for k, v in payload.items() if k != "updated"}
            if comparable == self.last_sent and not self.urgent:
                return
            self.urgent = False
            self.last_write = now
            self._write(lambda: self.sink.progress(run.celery_state, payload))
            self.last_sent = comparable
            if run.finished and not isinstance(self.sink, _CelerySink):
                # Outside Celery nothing else ends the publisher: the finished state was the
                # last thing to write. (A Celery run waits for the task-end hook's final write.)
                self.closed = True
                _flusher.unregister(self)

    def final(self) -> None:
        """The last write: after it, nothing of this run is written again."""
        with self.write_lock:
            if self.closed:
                return
            self.closed = True
            try:
                payload = self.run.payload()
            except Exception as exc:
                internal_error("bridge.final", exc)
                return
            self._write(lambda: self.sink.final(payload))
        _flusher.unregister(self)

    def _write(self, call: Callable[[], None]) -> None:
        try:
            call()
        except Exception as exc:
            if not self.warned:
                self.warned = True
                logger.warning(
                    "otel_progress: cannot publish progress of %s (%s: %s); the task goes on, "
                    "later writes are retried silently", self.sink.label, type(exc).__name__,
                    safe_str(exc, 200),
                )


class _Flusher:
    """One daemon thread per process that writes every registered publisher when it is due."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._publishers: list[Publisher] = []
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()

    def register(self, pub: Publisher) -> None:
        with self._cond:
            if self._pid != os.getpid():  # forked: the parent's thread does not exist here
                self._reset_locked()
            self._publishers.append(pub)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._loop, name="otel-progress-flusher", daemon=True
                )
                self._thread.start()
            self._cond.notify()

    def unregister(self, pub: Publisher) -> None:
        with self._cond:
            if pub in self._publishers:
                self._publishers.remove(pub)

    def wake(self) -> None:
        with self._cond:
            self._cond.notify()

    def publishers(self) -> list[Publisher]:
        with self._cond:
            return list(self._publishers)

    def _reset_locked(self) -> None:
        self._publishers = []
        self._thread = None
        self._pid = os.getpid()

    def reset_after_fork(self) -> None:
        self._cond = threading.Condition()
        self._reset_locked()

    def _loop(self) -> None:
        while True:
            with self._cond:
                pubs = list(self._publishers)
                now = time.monotonic()
                waits = [p.due(now) for p in pubs]
                wait = min(waits) if waits else None
                if wait is None or wait > 0:
                    self._cond.wait(timeout=_min_interval if wait is None else wait)
                    continue
            now = time.monotonic()
            for pub in pubs:
                if pub.due(now) <= 0:
                    try:
                        pub.flush(now)
                    except Exception as exc:  # pragma: no cover - flush guards itself
                        internal_error("bridge.flush", exc)
                    if pub.last_write != now:
                        # nothing changed: look again after one interval
                        pub.last_write = now


_flusher = _Flusher()
_publishers: weakref.WeakKeyDictionary[Run, Publisher] = weakref.WeakKeyDictionary()


def publisher_for(run: Run, sink: _Sink) -> Publisher:
    """Attach ``sink`` to ``run`` and start publishing it."""
    pub = Publisher(run, sink)
    _publishers[run] = pub
    _flusher.register(pub)
    return pub


def publisher_of(run: Run) -> Publisher | None:
    """The run's publisher, if it publishes anywhere."""
    return _publishers.get(run)


def request_flush(run: Run) -> None:
    """Ask for the next write slot (still rate-limited): a section failed, a terminal call."""
    pub = _publishers.get(run)
    if pub is not None and not pub.closed:
        pub.urgent = True
        _flusher.wake()


def finalize_run(run: Run, *, outcome: str | None = None, timeout: float = FINAL_TIMEOUT) -> None:
    """Finish ``run`` and make its final write now (the Celery task is ending).

    A healthy backend gets the write inline (Celery's own result write follows on the same
    backend anyway). One that already failed for this task gets it on the final-writer thread,
    waited for at most ``timeout``: a down backend must not hold the task end for long.
    """
    if outcome is not None and outcome not in FINAL_STATES and outcome != "retrying":
        outcome = None
    run.finish(outcome=outcome)  # type: ignore[arg-type]
    pub = _publishers.get(run)
    if pub is None:
        return
    if not pub.warned:
        pub.final()
        return
    future = _final_writer().submit(pub.final)
    try:
        future.result(timeout)
    except FutureTimeout:
        logger.warning("otel_progress: final progress write of %s still pending after %.0f s",
                       pub.sink.label, timeout)


_executor: ThreadPoolExecutor | None = None


def _final_writer() -> ThreadPoolExecutor:
    """One reused thread for bounded final writes (spawning one per task costs ~0.15 ms)."""
    global _executor
    if _executor is None:
        _executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="otel-progress-final")
    return _executor


def flush_all(timeout: float = 5.0) -> None:
    """Write every pending payload now (process exit, tests)."""
    deadline = time.monotonic() + timeout
    for pub in _flusher.publishers():
        if time.monotonic() > deadline:
            break
        if pub.run.finished:
            pub.final()
        else:
            pub.urgent = True
            pub.flush(time.monotonic())


def _after_fork_in_child() -> None:
    global _runs_lock, _executor
    _runs_lock = threading.Lock()  # a lock held by another thread at fork() stays held
    _executor = None  # the parent's worker thread does not exist in the child
    _flusher.reset_after_fork()
    _runs_by_task.clear()


_lifecycle.on_fork_child(_after_fork_in_child)


def _at_exit(deadline: float) -> None:
    """End open run spans and write pending payloads, before the exporters shut down."""
    try:
        end_open_runs()
        flush_all(timeout=min(2.0, max(deadline - time.monotonic(), 0.0)))
    except Exception as exc:  # pragma: no cover - exit path
        internal_error("bridge.exit", exc)


# The "bridge" stage runs before the exporters' final flush, at exit and at a worker's end.
_lifecycle.on_shutdown(_at_exit, "bridge")
