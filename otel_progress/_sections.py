"""TaskUpdater: the seed's ``with updater(task_name=...)`` sections, as OpenTelemetry spans.

Each section is a span, child of the current span (the run span for top-level sections), so one
run is one tree in Jaeger. The innermost open section is tracked per updater in a ContextVar, so
helpers that get the updater passed in, ``await`` points and ``asyncio.gather`` branches each
nest correctly without cross-talk.
"""

from __future__ import annotations

import functools
import inspect
import itertools
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar, Token
from types import TracebackType
from typing import Any, Final, TypeVar, cast

from otel_progress import _celery, _payload, _publish, _spans, _threads, _track
from otel_progress._payload import ProgressPayload
from otel_progress._run import (
    STATUS_COMPLETED,
    STATUS_FAILED,
    STATUS_RUNNING,
    Node,
    Outcome,
    Run,
    TaskCancelled,
)
from otel_progress._safety import (
    MAX_INT,
    as_number,
    attribute_value,
    clamp_percent,
    guard,
    internal_error,
    log_once,
    redact_value,
    safe_redacted,
    safe_str,
)

_F = TypeVar("_F", bound=Callable[..., Any])
_T = TypeVar("_T")
_ids = itertools.count()
_ONE: Final = 1
"""``advance()``'s default step: CPython has one object for the int 1, so ``step is _ONE`` is
the cheapest test that the common call needs no checks."""

class Section:
    """A section context manager (sync and async) and decorator, made by ``updater(...)``."""

    __slots__ = ("_name", "_node", "_otel_token", "_outer", "_updater", "_var_token")

    _otel_token: object
    _var_token: Token[Node]

    def __init__(self, updater: TaskUpdater, name: str) -> None:
        self._updater = updater
        self._name = name
        # The innermost entry in three slots, with its OTel context token and ContextVar token
        # (set on entry); the entries it is nested in, when the section is re-entered while
        # open, in a list made then. A section is mostly entered once: no list, no tuple.
        self._node: Node | None = None
        self._outer: list[tuple[Node, object, Token[Node]]] | None = None

    def _enter(self) -> TaskUpdater:
        updater = self._updater
        run = updater._run
        if run.cancel_requested:  # set by the flusher: the hot path's one attribute read
            _cancel(run, f"before section {self._name!r}")
        # try/except rather than ``with guard(...)``: the same guard semantics (logged once,
        # raised in strict mode) without a guard object and two calls per block on every section.
        try:
            current = updater._current
            parent = current.get()
            # top level, or a stale context (a thread copied it after the section's exit)
            top = parent is run.node or parent.state != "running"
            node = run.add_section(self._name, None if top else parent)
            token = _spans.start_section(run, node)
            var_token = current.set(node)
            if self._node is not None:  # re-entered while open: keep the entry it nests in
                if self._outer is None:
                    self._outer = []
                self._outer.append((self._node, self._otel_token, self._var_token))
            self._node, self._otel_token, self._var_token = node, token, var_token
        except Exception as exc:
            internal_error("TaskUpdater.section.enter", exc)
        return updater

    __enter__ = _enter

    async def __aenter__(self) -> TaskUpdater:
        return self._enter()

    def _exit(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None = None,
        outcome: Outcome | None = None,
    ) -> bool:
        node = self._node
        if node is None:
            return False
        otel_token, var_token = self._otel_token, self._var_token
        if self._outer:
            self._node, self._otel_token, self._var_token = self._outer.pop()
        else:
            self._node = None
        if outcome is None:
            outcome = "succeeded" if exc is None else _celery.outcome_of(exc)
        updater = self._updater
        run = updater._run
        try:
            killed = outcome == "aborted" and _celery.dying(exc)
            if killed:  # the process goes in 0.1 s: the main worker process ends the span
                _spans.leave_for_post_mortem(run, node)
            if run.close_section(node, outcome, exc if outcome != "succeeded" else None) \
                    and not killed:
                _spans.end_section(run, node, exc)
        except Exception as err:
            internal_error("TaskUpdater.section.exit", err)
        try:
            updater._current.reset(var_token)
        except ValueError:  # exited in another context (e.g. a generator): restore by hand
            updater._current.set(node.parent or run.node)
        try:
            _spans.detach(otel_token)
        except Exception as err:
            internal_error("TaskUpdater.section.detach", err)
        if exc is None or outcome != "failed":
            return False
        _publish.request_flush(run)
        return updater._suppress and not _celery.never_suppressed(exc)

    __exit__ = _exit  # one call per section, not two: ``with`` passes the first three

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        return self._exit(exc_type, exc, tb)

    def __call__(self, func: _F) -> _F:
        """Use as a decorator: each call of ``func`` runs in a fresh section of this name."""
        updater, name = self._updater, self._name
        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                async with Section(updater, name):
                    return await func(*args, **kwargs)

            return cast(_F, async_wrapper)

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with Section(updater, name):
                return func(*args, **kwargs)

        return cast(_F, wrapper)


class TaskUpdater:
    """Track a task's progress in sections, as spans and as a payload for frontends.

    Works in any code, sync or async; inside a Celery task it joins the task's ``run/<task>``
    span and publishes the payload to the result backend::

        updater = TaskUpdater(task_name="import")
        with updater(task_name="download"):
            updater.notify("fetched 3 files")
        updater.raise_latest_exception()
    """

    FAIL: Final = STATUS_FAILED
    COMPLETED: Final = STATUS_COMPLETED
    PENDING: Final = STATUS_RUNNING

    def __init__(
        self,
        task_uuid: object = None,
        task_name: str | None = None,
        verbose: int | bool = 0,
        *,
        suppress_exceptions: bool = True,
        expected_sections: int | None = None,
        include_traceback: bool = False,
    ) -> None:
        if task_name is not None and not isinstance(task_name, str):
            raise TypeError(f"task_name must be a str or None, not {type(task_name).__name__}")
        if not isinstance(verbose, (int, bool)):
            raise TypeError(f"verbose must be an int or bool, not {type(verbose).__name__}")
        if not isinstance(suppress_exceptions, bool):
            raise TypeError("suppress_exceptions must be a bool")
        if expected_sections is not None:
            if isinstance(expected_sections, bool) or not isinstance(expected_sections, int):
                raise TypeError("expected_sections must be an int or None")
            if expected_sections < 1:
                raise ValueError("expected_sections must be >= 1")
        self._suppress = suppress_exceptions
        self._run: Run = _celery.run_for_current_task(
            task_uuid, task_name, expected_sections=expected_sections,
            include_traceback=include_traceback,
        )
        # The innermost open section of this context; the run itself outside any section.
        self._current: ContextVar[Node] = ContextVar(
            f"otel_progress_section_{next(_ids)}", default=self._run.node
        )
        self._innermost = self._current.get  # bound once: the hot path's one lookup
        # ``updater.advance`` finds this per-instance closure before the method: the same
        # behaviour without method binding and attribute lookups on every loop iteration.
        self.advance = _advancer(self._innermost, self._current)  # type: ignore[method-assign]
        if verbose:
            self._run.verbose = True
        _track.remember(self)  # what otel_progress.track() reports to when given no updater
        if self._run.ends_on_drop:
            # Outside Celery nobody else ends the run: do it when the updater is dropped.
            weakref.finalize(self, _finish_dropped, self._run)

    # --- the seed's API ------------------------------------------------------------------------
    def __call__(self, task_name: str | None = None, **_ignored: Any) -> Section:
        """Open a section: ``with updater(task_name="step"):`` (also ``async with``, decorator)."""
        name = task_name if task_name is not None else self._run.task_name
        return Section(self, safe_redacted(name))  # valid UTF-8, capped, redacted: a span name

    section = __call__

    @property
    def task_uuid(self) -> str:
        """The run's uuid (the Celery task id inside a task)."""
        return self._run.task_uuid

    @property
    def task_name(self) -> str:
        """The run's name (the Celery task name inside a task)."""
        return self._run.task_name

    @property
    def log(self) -> str:
        """The readable log, bounded (head and tail kept)."""
        return self._run.log.text()

    @property
    def finished(self) -> bool:
        """Whether insert_final_update()/raise_latest_exception() ran (or the task ended)."""
        return self._run.finished

    @property
    def status(self) -> int:
        """2 running, 1 every job succeeded, 0 a job failed."""
        return self._run.status

    @property
    def latest_exception(self) -> BaseException | None:
        """The exception of the last failed section, if any."""
        return self._run.latest_exc

    def exception_raised(self) -> bool:
        """Whether a section failed."""
        return self._run.latest_exc is not None

    def notify(self, message: object, **attributes: object) -> None:
        """Record a notification: an event on the innermost open section, and a log line.

        Raises ``TaskCancelled`` when a cancel was requested for the task."""
        if self._run.cancel_requested:
            _cancel(self._run, "at notify()")
        try:
            run = self._run
            text = safe_redacted(message)
            attrs = {safe_str(k, 200): attribute_value(redact_value(k, v))
                     for k, v in attributes.items()} if attributes else None
            run.note(text)
            _spans.notify(self._innermost(), text, attrs)
        except Exception as exc:  # the guard's semantics, without a wrapper call per notify
            internal_error("TaskUpdater.notify", exc)

    def progress(
        self,
        current: object = None,
        total: object = None,
        percent: object = None,
    ) -> None:
        """Set the innermost section's progress (the run's outside any section).

        An explicit ``percent`` wins over ``current/total``; percent is clamped to 0..100.
        Values that are not finite numbers (NaN, inf, str, bool) are ignored and logged once.
        """
        try:
            node = self._innermost()
            cur = as_number(current, "progress(current=)", self)
            tot = as_number(total, "progress(total=)", self)
            pct = as_number(percent, "progress(percent=)", self)
            if cur is not None:
                if cur < 0:
                    log_once(f"neg@{id(self)}", "otel_progress: negative current clamped to 0")
                    cur = 0
                node.current = cur
            if tot is not None:
                if tot <= 0:
                    log_once(f"tot@{id(self)}", "otel_progress: total must be > 0: ignored")
                else:
                    node.total = tot
            if pct is not None:
                node.explicit_pct = clamp_percent(pct)
            elif cur is not None or tot is not None:
                node.explicit_pct = None
            self._run.last_progress = time.time()
        except Exception as exc:
            internal_error("TaskUpdater.progress", exc)

    def advance(self, step: int | float = 1) -> None:
        """Add ``step`` to the innermost section's ``current`` (the hot path: counters only).

        ``step=None`` is the default step, 1."""
        node = self._innermost()
        if step is _ONE or step is None:  # +1 cannot fail on the int or float a counter holds
            node.current += 1
        else:
            _advance_by(node, step, self._current)

    def insert_final_update(self) -> None:
        """Mark the run finished: end time, status, the log's closing line."""
        with guard("TaskUpdater.insert_final_update"):
            run = self._run
            if run.finish():
                _spans.end_run(run)
                _publish.request_flush(run)

    def raise_latest_exception(self) -> None:
        """insert_final_update(), then re-raise the latest section exception itself, if any."""
        self.insert_final_update()
        exc = self._run.latest_exc
        if exc is not None:
            raise exc

    def to_dict(self) -> ProgressPayload:
        """The seed's status fields plus percent, trace and span ids, jobs and the section tree."""
        return _payload.build(self._run)

    @property
    def cancelled(self) -> bool:
        """Whether a cancel was requested for this task (the page's button, ``request_cancel``).

        The flusher reads the request from the result backend (within one write interval);
        a loop that checks this stops cleanly instead of waiting for ``TaskCancelled``. Once
        it read True the task has seen the cancel: its run ends ``revoked``."""
        if self._run.cancel_requested:
            self._run.cancelled = True  # it saw the cancel: the run ends revoked
            return True
        return False

    def raise_if_cancelled(self) -> None:
        """Raise ``TaskCancelled`` if a cancel was requested (as a section boundary does)."""
        if self._run.cancel_requested:
            _cancel(self._run, "at raise_if_cancelled()")

    @property
    def trace_id(self) -> str | None:
        """Hex trace id of the run (None without an SDK), for a "View trace" link."""
        return self._run.trace_id

    def track(
        self,
        iterable: Iterable[_T],
        *,
        total: int | float | None = None,
        description: str | None = None,
    ) -> Iterator[_T]:
        """tqdm-style: yield the items of ``iterable``, counting each one done.

        With ``description``, the items count in a section of that name (inside the current
        one); without, they count in the current section itself. ``total`` defaults to
        ``len(iterable)`` when it has one. Per item it costs one integer add::

            for row in updater.track(rows, description="import rows"):
                store(row)
        """
        return _track.track(iterable, total=total, description=description, updater=self)

    def executor(self, max_workers: int | None = None) -> _threads.ProgressExecutor:
        """A thread pool (``concurrent.futures.Executor``) whose work lands in this run.

        Each ``submit``/``map`` call runs in the progress context of the caller at that moment,
        so sections opened by the work nest under the section that submitted it::

            with updater(task_name="fetch"), updater.executor(max_workers=8) as pool:
                list(pool.map(fetch, urls))
        """
        return _threads.executor(max_workers)



def _advancer(innermost: Callable[[], Node], owner: object) -> Callable[..., None]:
    """``TaskUpdater.advance`` as a closure over the updater's ContextVar. It holds no reference
    to the updater, so dropping the updater still ends its run at once (no reference cycle).

    Its default step is None (meaning 1): ``is None`` is one bytecode instruction in CPython,
    where ``step is 1`` would be three (load, compare, jump), a tenth of the call's cost."""

    def advance(step: int | float | None = None) -> None:
        if step is None:  # advance(): +1 cannot fail on the int or float a counter holds
            innermost().current += 1
        else:
            _advance_by(innermost(), step, owner)

    advance.__doc__ = TaskUpdater.advance.__doc__
    advance.__qualname__ = TaskUpdater.advance.__qualname__
    return advance


def _advance_by(node: Node, step: object, owner: object) -> None:
    """A step other than 1: ints add, anything else is checked (``owner``: log once per
    updater)."""
    if type(step) is int and type(node.current) is int:
        node.current += step  # ints never overflow; huge ones are clamped when read
        return
    num = as_number(step, "advance(step=)", owner)
    if num is None:
        return
    with guard("TaskUpdater.advance"):
        current = node.current
        if current.__class__ is int and current > MAX_INT:
            current = MAX_INT
        total = current + num
        node.current = max(min(total, MAX_INT), -MAX_INT)


def _cancel(run: Run, where: str) -> None:
    """Raise TaskCancelled for ``run`` (it then ends revoked, even if the task catches it)."""
    run.cancelled = True
    raise TaskCancelled(f"cancel requested; stopped {where}")


def _finish_dropped(run: Run) -> None:
    with guard("TaskUpdater.finalize"):
        if run.finish():
            _spans.end_run(run)

