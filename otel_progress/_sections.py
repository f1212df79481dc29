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
from collections.abc import Callable
from contextvars import ContextVar, Token
from types import TracebackType
from typing import Any, Final, TypeVar, cast

from opentelemetry import context as otel_context
from opentelemetry import trace

from otel_progress import _bridge
from otel_progress._payload import ProgressPayload
from otel_progress._run import NEVER_SUPPRESSED_ERRORS, Node, Run, is_control_flow
from otel_progress._safety import (
    as_number,
    attribute_value,
    clamp_percent,
    guarded,
    internal_error,
    log_once,
    safe_str,
)

_F = TypeVar("_F", bound=Callable[..., Any])
_ids = itertools.count()

STATUS_FAILED: Final = 0
STATUS_COMPLETED: Final = 1
STATUS_RUNNING: Final = 2


class _Entered:
    """One entry of a section: its node and the tokens to restore on exit."""

    __slots__ = ("node", "otel_token", "var_token")

    def __init__(self, node: Node, otel_token: object, var_token: Token[Node | None]) -> None:
        self.node = node
        self.otel_token = otel_token
        self.var_token = var_token


class Section:
    """A section context manager (sync and async) and decorator, made by ``updater(...)``."""

    __slots__ = ("_entered", "_name", "_updater")

    def __init__(self, updater: TaskUpdater, name: str) -> None:
        self._updater = updater
        self._name = name
        self._entered: list[_Entered] = []

    def __enter__(self) -> TaskUpdater:
        self._enter()
        return self._updater

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        return self._exit(exc)

    async def __aenter__(self) -> TaskUpdater:
        self._enter()
        return self._updater

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        return self._exit(exc)

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

    def _enter(self) -> None:
        updater = self._updater
        try:
            run = updater._run
            parent = updater._current.get()
            if parent is not None and parent.state != "running":
                parent = None  # a stale context (e.g. a thread copied it after the exit)
            node = run.open_section(self._name, parent)
            ctx = trace.set_span_in_context(node.span)
            entry = _Entered(node, otel_context.attach(ctx), updater._current.set(node))
            self._entered.append(entry)
        except Exception as exc:
            internal_error("TaskUpdater.section.enter", exc)

    def _exit(self, exc: BaseException | None) -> bool:
        updater = self._updater
        if not self._entered:
            return False
        entry = self._entered.pop()
        is_error = False
        try:
            is_error = updater._run.close_section(entry.node, exc)
        except Exception as err:
            internal_error("TaskUpdater.section.exit", err)
        try:
            updater._current.reset(entry.var_token)
        except ValueError:  # exited in another context (e.g. a generator): restore by hand
            updater._current.set(entry.node.parent if entry.node.depth > 1 else None)
        try:
            otel_context.detach(entry.otel_token)  # type: ignore[arg-type]
        except Exception as err:  # pragma: no cover - detach logs, never raises, in the SDK
            internal_error("TaskUpdater.section.detach", err)
        if exc is None or not is_error:
            return False
        assert exc is not None
        _bridge.request_flush(updater._run)
        return updater._suppress and not (
            isinstance(exc, NEVER_SUPPRESSED_ERRORS) or is_control_flow(exc)
        )


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
        self._current: ContextVar[Node | None] = ContextVar(
            f"otel_progress_section_{next(_ids)}", default=None
        )
        self._run: Run = _bridge.run_for_current_task(
            task_uuid, task_name, expected_sections=expected_sections,
            include_traceback=include_traceback,
        )
        if verbose:
            self._run.verbose = True
        if self._run.celery_task_id is None:
            # Outside Celery nobody else ends the run: do it when the updater is dropped.
            weakref.finalize(self, _finish_dropped, self._run)

    # --- the seed's API ------------------------------------------------------------------------
    def __call__(self, task_name: str | None = None, **_ignored: Any) -> Section:
        """Open a section: ``with updater(task_name="step"):`` (also ``async with``, decorator)."""
        name = task_name if task_name is not None else self._run.task_name
        if not isinstance(name, str):
            name = safe_str(name)
        return Section(self, name)

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

    @guarded()
    def notify(self, message: object, **attributes: object) -> None:
        """Record a notification: an event on the innermost open section, and a log line."""
        run = self._run
        node = self._current.get() or run.node
        text = safe_str(message)
        attrs = {safe_str(k, 200): attribute_value(v) for k, v in attributes.items()} or None
        run.notify(node, text, attrs)

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
            node = self._current.get() or self._run.node
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
        """Add ``step`` to the innermost section's ``current`` (the hot path: counters only)."""
        node = self._current.get() or self._run.node
        if step.__class__ is int:
            node.current += step
            return
        self._advance_slow(node, step)

    def _advance_slow(self, node: Node, step: object) -> None:
        num = as_number(step, "advance(step=)", self)
        if num is None:
            return
        try:
            node.current += num
        except Exception as exc:
            internal_error("TaskUpdater.advance", exc)

    def insert_final_update(self) -> None:
        """Mark the run finished: end time, status, the log's closing line."""
        try:
            if self._run.finish():
                _bridge.request_flush(self._run)
        except Exception as exc:
            internal_error("TaskUpdater.insert_final_update", exc)

    def raise_latest_exception(self) -> None:
        """insert_final_update(), then re-raise the latest section exception itself, if any."""
        self.insert_final_update()
        exc = self._run.latest_exc
        if exc is not None:
            raise exc

    def to_dict(self) -> ProgressPayload:
        """The seed's status fields plus percent, trace and span ids, jobs and the section tree."""
        return self._run.payload()

    @property
    def trace_id(self) -> str | None:
        """Hex trace id of the run (None without an SDK), for a "View trace" link."""
        return self._run.trace_ids()[0]



def _finish_dropped(run: Run) -> None:
    try:
        if not run.finished:
            run.finish()
    except Exception as exc:  # pragma: no cover - GC path
        internal_error("TaskUpdater.finalize", exc)

