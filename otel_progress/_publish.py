"""The coalescing flusher: one daemon thread per process that publishes every run's payload.

Frontends read progress from Celery's result backend. Writing on every ``advance()`` would cost a
round trip per loop iteration, so the hot path only bumps counters and this thread writes each
run's payload at most once per ``min_interval`` (default 0.5 s), promptly when something
important happened (a section failed, a terminal Observer call), and once more, finally, when
the task ends. After the final write nothing of the run is written again. The first write comes
one interval after the run started: a task shorter than that is written once, at its end (its
readers saw it ``queued`` until then), which spares short tasks a payload and a round trip.
The same thread records the section metrics queued since its last pass (``_metrics.drain``).
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, Final, Protocol

from otel_progress import _backend, _live, _metrics, _payload, _spans
from otel_progress._payload import ProgressPayload
from otel_progress._run import Run
from otel_progress._safety import internal_error, logger, safe_str

DEFAULT_MIN_INTERVAL: Final = 0.5
FINAL_TIMEOUT: Final = _backend.FINAL_TIMEOUT

_min_interval = DEFAULT_MIN_INTERVAL


def set_min_interval(seconds: float) -> None:
    """Seconds between two backend writes of one task (>= 0.01)."""
    global _min_interval
    _min_interval = max(float(seconds), 0.01)


def min_interval() -> float:
    """The current write interval."""
    return _min_interval


class Target(Protocol):
    """Where a run's payload is written."""

    label: str

    def progress(self, state: str, payload: ProgressPayload, children: list[str],
                 text: str | None = None) -> bool: ...

    def final(self, payload: ProgressPayload, children: list[str],
              text: str | None = None) -> None: ...


class DuckTarget:
    """Anything with ``update_state(state=, meta=)`` (mastf-style fakes, custom task classes)."""

    def __init__(self, obj: Any) -> None:
        self.obj = obj
        self.label = safe_str(getattr(obj, "name", None) or type(obj).__name__)

    def progress(self, state: str, payload: ProgressPayload, children: list[str],
                 text: str | None = None) -> bool:
        self.obj.update_state(state=state, meta=payload)
        return True

    def final(self, payload: ProgressPayload, children: list[str],
              text: str | None = None) -> None:
        self.obj.update_state(state="PROGRESS", meta=payload)


class Publisher:
    """Coalesces one run's payload writes: at most one per ``min_interval``, final once."""

    def __init__(self, run: Run, target: Target, on_event: Any = None) -> None:
        self.run = run
        self.target = target
        self.on_event = on_event  # optional callable(payload): Celery's task-progress event
        self.last_write = time.monotonic()  # the first write one interval after the start
        self.last_sent: dict[str, Any] | None = None
        self.urgent = False
        self.closed = False
        self.warned = False
        self.write_lock = threading.Lock()
        self.polls_cancel = callable(getattr(target, "cancel_requested", None))
        """The target can hold a cancel request (``_backend.TaskTarget``): ask once per pass."""

    def due(self, now: float) -> float:
        """Seconds until this publisher may write again (0 = now)."""
        return max(self.last_write + _min_interval - now, 0.0)

    def flush(self, now: float) -> None:
        """Write the run's payload if it changed (the flusher thread calls this)."""
        with self.write_lock:
            if self.closed:
                return
            run = self.run
            if self.polls_cancel and not run.cancel_requested \
                    and self._write(self.target.cancel_requested):  # type: ignore[attr-defined]
                run.cancel_requested = True  # the task sees it at its next boundary
                self.urgent = True
            try:
                _spans.sync(run)
                # Only our own key keeps the private part (TaskTarget strips it elsewhere).
                ours = isinstance(self.target, _backend.TaskTarget)
                payload, text = _payload.build_text(run, _spans.open_span_facts(run) if ours
                                                    else None)
            except Exception as exc:
                internal_error("publish.payload", exc)
                return
            comparable = _payload.comparable(payload)  # not the clock's keys (elapsed_s...)
            if comparable == self.last_sent and not self.urgent:
                return
            self.urgent = False
            self.last_write = now
            if self._write(lambda: self.target.progress(run.celery_state, payload,
                                                        run.children, text)) is False:
                # a final state is stored already (revoked, time limit): write nothing more
                self.closed = True
                _flusher.unregister(self)
                return
            if self.on_event is not None:
                self._write(lambda: self.on_event(payload))
            self.last_sent = comparable
            if payload["finished"] and not isinstance(self.target, _backend.TaskTarget):
                # Outside Celery nothing else ends the publisher: the finished state was the
                # last thing to write. (A Celery run waits for the task-end hook's final write.)
                self.closed = True
                _flusher.unregister(self)

    def final(self, timeout: float) -> None:
        """The last write: after it, nothing of this run is written again."""
        self.closed = True  # the flusher starts no new write from now on
        _flusher.unregister(self)
        locked = self.write_lock.acquire(timeout=max(timeout, 0.0))
        try:
            self._final_locked()
        finally:
            if locked:
                self.write_lock.release()

    def final_inline(self, defer: bool = False) -> bool:
        """The last write on the caller's own thread, when the target says it is one call of a
        client bounded under FINAL_TIMEOUT and no write of the flusher holds the lock (no
        hand-off to the final-writer thread: ~0.1 ms of CPU per task). False: not taken."""
        target = self.target
        if self.warned or not isinstance(target, _backend.TaskTarget) \
                or not target.inline_safe(self.run.children):
            return False
        if not self.write_lock.acquire(blocking=False):
            return False
        try:
            self.closed = True
            _flusher.unregister(self)
            self._final_locked(defer)
        finally:
            self.write_lock.release()
        return True

    def _final_locked(self, defer: bool = False) -> None:
        try:
            payload, text = _payload.build_text(self.run, self.run.dying_spans or None)
            if defer and isinstance(self.target, _backend.TaskTarget) \
                    and _backend.defer_final(self.target, payload, self.run.children, text):
                return  # written in Celery's own store of the task's state, or at its postrun
            self._write(lambda: self.target.final(payload, self.run.children, text))
        except Exception as exc:
            internal_error("publish.final", exc)

    def _write(self, call: Any) -> Any:
        try:
            return call()
        except Exception as exc:
            if not self.warned:
                self.warned = True
                _backend.warn_write_failed(self.target.label, exc)
            return None


class _Flusher:
    """One daemon thread per process that writes every registered publisher when it is due."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._publishers: list[Publisher] = []
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self._wakes_at = 0.0
        """When the thread's current wait ends (monotonic); 0 when it is not waiting."""

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
            elif self._wakes_at and self._wakes_at <= pub.last_write + _min_interval:
                return  # it wakes before this one is due anyway: no thread switch per task
            self._cond.notify()

    def unregister(self, pub: Publisher) -> None:
        with self._cond:
            if pub in self._publishers:
                self._publishers.remove(pub)

    def wake(self) -> None:
        with self._cond:
            self._cond.notify()

    def ensure_running(self) -> None:
        """Start the thread for work without a publisher (live placeholders outside Celery)."""
        with self._cond:
            if self._pid != os.getpid():
                self._reset_locked()
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._loop, name="otel-progress-flusher", daemon=True
                )
                self._thread.start()

    def publishers(self) -> list[Publisher]:
        with self._cond:
            return list(self._publishers)

    def _reset_locked(self) -> None:
        self._publishers = []
        self._thread = None
        self._pid = os.getpid()
        self._wakes_at = 0.0

    def reset_after_fork(self) -> None:
        self._cond = threading.Condition()
        self._reset_locked()

    def _loop(self) -> None:
        while True:
            _metrics.drain()  # guarded: the sections finished since the last pass
            _live.tick()  # guarded; nothing to do unless configure(live=True)
            with self._cond:
                pubs = list(self._publishers)
                now = time.monotonic()
                waits = [p.due(now) for p in pubs]
                wait = min(waits) if waits else None
                if wait is None or wait > 0:
                    timeout = _min_interval if wait is None else wait
                    self._wakes_at = now + timeout
                    self._cond.wait(timeout=timeout)
                    self._wakes_at = 0.0
                    continue
            now = time.monotonic()
            for pub in pubs:
                if pub.due(now) <= 0:
                    try:
                        pub.flush(now)
                    except Exception as exc:  # pragma: no cover - flush guards itself
                        internal_error("publish.flush", exc)
                    if pub.last_write != now:
                        pub.last_write = now  # nothing changed: look again after one interval


_flusher = _Flusher()
_live.install_waker(_flusher.ensure_running)
_publishers: weakref.WeakKeyDictionary[Run, Publisher] = weakref.WeakKeyDictionary()


def publish(run: Run, target: Target, on_event: Any = None) -> Publisher:
    """Start publishing ``run`` to ``target``."""
    pub = Publisher(run, target, on_event)
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


_executor: ThreadPoolExecutor | None = None


def _final_writer() -> ThreadPoolExecutor:
    """One reused thread for final writes (spawning one per task costs ~0.15 ms)."""
    global _executor
    if _executor is None:
        _executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="otel-progress-final")
    return _executor


def final_write(run: Run, timeout: float = FINAL_TIMEOUT, *, defer: bool = False) -> None:
    """The run's final write, waited for at most ``timeout`` whatever the backend does.

    ``defer``: at a task's end, the write may ride in Celery's own store of the task's state
    (``_backend.defer_final``), made on this thread right after."""
    pub = _publishers.pop(run, None)
    if pub is None:
        return
    if pub.final_inline(defer):
        return
    deadline = time.monotonic() + timeout
    try:
        future = _final_writer().submit(lambda: pub.final(deadline - time.monotonic()))
    except RuntimeError:  # the interpreter is shutting down: no new work for threads
        pub.final(timeout)  # inline, bounded by the client's own timeouts; never lost
        return
    try:
        future.result(max(deadline - time.monotonic(), 0.0))
    except FutureTimeout:
        logger.warning("otel_progress: final progress write of %s still pending after %.0f s; "
                       "the task goes on", pub.target.label, timeout)


def flush_all(deadline: float) -> None:
    """Write every pending payload now, until ``deadline`` (monotonic): process exit, tests."""
    _metrics.drain(wait=True)
    for pub in _flusher.publishers():
        if time.monotonic() > deadline:
            break
        if pub.run.finished:
            pub.final(deadline - time.monotonic())
        else:
            pub.urgent = True
            pub.flush(time.monotonic())


def after_fork_in_child() -> None:
    """The parent's flusher and final-writer threads do not exist in a forked child."""
    global _executor
    _executor = None
    _flusher.reset_after_fork()
    _publishers.clear()
