"""Observer: mastf's progress observer for a bound Celery task, recorded as span data.

Each call returns ``(state, meta)`` with mastf's meta keys, as mastf did, so existing task code
and frontends keep working; underneath, the observer's span (the task's ``run/<task>`` span inside
Celery, else one it opens on first use) gets the progress attributes and events, and the state
bridge publishes the full payload at most once per interval instead of once per call.
"""

from __future__ import annotations

import inspect
import logging
import sys
from typing import TYPE_CHECKING, Any, Final

from otel_progress import _celery, _publish, _spans
from otel_progress._attributes import MAX_MESSAGE
from otel_progress._run import Run
from otel_progress._safety import (
    MAX_INT,
    as_number,
    exception_text,
    format_message,
    guard,
    internal_error,
    redact,
    safe_redacted,
    safe_str,
)

PROGRESS: Final = "PROGRESS"
SUCCESS: Final = "SUCCESS"
FAILURE: Final = "FAILURE"
_TERMINAL: Final = frozenset({SUCCESS, FAILURE})
_module_logger: Final = logging.getLogger("otel_progress")
_NEAR_HALF: Final = 0.49999
"""Percents 0..100 scaled by 100 carry an error far below 1e-5: a fraction farther than this
from .5 rounds to the same hundredth as ``round(percent, 2)``, which rounds the exact value."""
_BELOW_HALF: Final = -_NEAR_HALF
_HUNDRED: Final = 100
"""``update()``'s default total: CPython has one object for each small int, so ``total is
_HUNDRED`` is the cheapest test that the default needs no check."""
_ONE: Final = 1


def _update_options(
    current: int | float | None = None,
    increment: bool = True,
    step: int | float = 1,
    total: int | float = 100,
    state: str = PROGRESS,
    meta: dict[str, Any] | None = None,
) -> tuple[int | float | None, bool, int | float, int | float, str, dict[str, Any] | None]:
    """``Observer.update()``'s keyword options with their defaults: what the body parses and
    what ``inspect`` shows. The class's ``TYPE_CHECKING`` signature repeats them for type
    checkers (``test_observer`` checks the two agree)."""
    return current, increment, step, total, state, meta


_DEFAULT_OPTIONS: Final = _update_options()
_OPTION_NAMES: Final = frozenset(inspect.signature(_update_options).parameters)


class Observer:
    """Observe a Celery task's progress (mastf API); ``Observer(None)`` is a no-op sink.

    ::

        @shared_task(bind=True)
        def scan(self):
            observer = Observer(self)
            observer.update("Some information...", current=34)
            status, meta = observer.success("Finished task!")
            return meta
    """

    def __init__(
        self,
        task: Any,
        position: int | float = 0,
        *,
        logger: logging.Logger | None = None,
        include_traceback: bool = False,
    ) -> None:
        if isinstance(position, bool) or not isinstance(position, (int, float)):
            raise TypeError(f"position must be a number, not {type(position).__name__}")
        if logger is not None and not isinstance(logger, logging.Logger):
            raise TypeError("logger must be a logging.Logger")
        self._task = task
        self._pos: int | float = 0
        self.pos = position
        self._logger = logger or _module_logger
        self._include_traceback = include_traceback
        self._run: Run | None = None
        self._last_msg: str | None = None
        self._last_shown = ""
        """The last message, redacted: the payload's description and the span event."""

    @property
    def task(self) -> Any:
        """The observed task."""
        return self._task

    @property
    def logger(self) -> logging.Logger:
        """Logger for terminal calls (mastf logged them)."""
        return self._logger

    @logger.setter
    def logger(self, value: logging.Logger) -> None:
        self._logger = value

    @property
    def pos(self) -> int | float:
        """The current position (items done); never negative."""
        return self._pos

    @pos.setter
    def pos(self, value: object) -> None:
        num = as_number(value, "Observer.pos", self)
        if num is not None:
            self._pos = num if num >= 0 else 0

    def increment(self, val: int | float = 1) -> int | float:
        """Add ``val`` to the position and return it."""
        num = as_number(val, "Observer.increment", self)
        if num is not None:
            self._pos = max(min(self._pos + num, MAX_INT), 0)
        return self._pos

    @property
    def run(self) -> Run:
        """The run this observer reports to (created on first use)."""
        run = self._run
        if run is None:
            run = self._run = _celery.run_for_current_task(
                observed_task=self._task, include_traceback=self._include_traceback
            )
        return run

    def _update(self, msg: object, *args: object, **options: Any) -> tuple[str, dict[str, Any]]:
        """Report progress; returns ``(state, meta)`` with mastf's keys.

        ``msg % args`` is applied only when args are given, so a literal ``%`` is fine.
        Percent is ``current / total`` clamped to 0..100.
        """
        run = self._run
        cur = self._pos
        if not options and run is not None and cur.__class__ is int:
            # update(msg), the per-item call: every default, an int position, a run. Straight
            # code (the general path below gives the same in twice the time): no span call
            # for a repeated message (the flusher and the run's end push the attributes).
            try:
                cur += 1
                if cur < 100:  # cur * 100.0 / 100 is float(cur) exactly, and rounds to itself
                    percent = cur + 0.0
                else:
                    percent = 100.0
                    if cur > MAX_INT:
                        cur = MAX_INT
                self._pos = cur
                node = run.node
                node.current = cur
                node.total = 100
                if run.celery_state is not PROGRESS:
                    run.celery_state = PROGRESS
                if msg is self._last_msg and not args:
                    text: str = msg  # type: ignore[assignment]  # `_last_msg` is a str
                    run.description = self._last_shown
                    if not run.owns_span and run.ends_on_drop:
                        _spans.observer_progress(run, None, percent, cur, 100)
                else:
                    text = self._message(run, msg, args, percent, cur, 100)
                return PROGRESS, {"pending": False, "description": text, "current": cur,
                                  "total": 100, "percent": percent}
            except Exception as exc:
                internal_error("Observer.update", exc)
                return PROGRESS, {"pending": False, "description": safe_str(msg),
                                  "current": self._pos, "total": 100, "percent": 0.0}
        if options:
            try:
                parsed = _update_options(**options)
            except TypeError:
                unknown = sorted(set(options) - _OPTION_NAMES)
                raise TypeError(
                    "Observer.update() got an unexpected keyword argument"
                    f"{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}"
                ) from None
        else:
            parsed = _DEFAULT_OPTIONS
        try:
            cur, total, percent, state, meta = self._numbers(*parsed)
            run = self._run or self.run
            node = run.node
            node.current = cur
            node.total = total  # no clock read: the age gauge sees the counters move
            if meta and isinstance(meta, dict) and state not in _TERMINAL:
                run.extra = {safe_str(k, 200): v for k, v in list(meta.items())[:50]}
            if state is not run.celery_state and state != run.celery_state \
                    and state not in _TERMINAL:
                run.celery_state = state if state.__class__ is str else PROGRESS
            text = self._message(run, msg, args, percent, cur, total)
            data: dict[str, Any] = {
                "pending": False,
                "description": text,
                "current": cur,
                "total": total,
                "percent": percent,
            }
            if meta and isinstance(meta, dict):
                data.update(meta)
            return state, data
        except Exception as exc:
            internal_error("Observer.update", exc)
            return parsed[4], {"pending": False, "description": safe_str(msg),
                               "current": self._pos, "total": 100, "percent": 0.0}

    def _message(self, run: Run, msg: object, args: tuple[object, ...], percent: float,
                 current: int | float, total: int | float) -> str:
        """The update's description (``msg % args``); a new one is redacted once, becomes the
        run's description and an event on the run's span."""
        last = self._last_msg
        if msg is last and not args:
            text: str = last  # type: ignore[assignment]  # `last` is `msg`: not None
        elif args or msg.__class__ is not str or len(msg) > MAX_MESSAGE:
            text = format_message(msg, args)
        else:
            text = msg  # a str, checked above
        if text == last:
            run.description = self._last_shown
            if not run.owns_span and run.ends_on_drop:
                _spans.observer_progress(run, None, percent, current, total)
        else:
            self._last_msg = text
            self._last_shown = safe_redacted(text)  # what leaves the process
            run.description = self._last_shown
            _spans.observer_progress(run, self._last_shown, percent, current, total)
        return text

    def _numbers(
        self,
        current: int | float | None,
        increment: bool,
        step: int | float,
        total: int | float,
        state: str,
        meta: dict[str, Any] | None,
    ) -> tuple[int | float, int | float, float, str, dict[str, Any] | None]:
        """``update()``'s position, total and percent for any options: checked and clamped."""
        if total is not _HUNDRED and (
                total.__class__ is not int or not 0 < total <= MAX_INT):  # 10**400 clamps
            num = as_number(total, "Observer.update(total=)", self)
            total = abs(num) if num else 100
        if current is not None:
            self.pos = current
            cur = self._pos
        elif increment:
            if step is _ONE or (step.__class__ is int and 0 < step <= MAX_INT):
                cur = self._pos + step
                if cur > MAX_INT:
                    cur = MAX_INT
            else:
                num = as_number(step, "Observer.update(step=)", self)
                cur = min(self._pos + (abs(num) if num else 1), MAX_INT)
            self._pos = cur
        else:
            cur = self._pos
        if total is _HUNDRED and cur.__class__ is int:
            percent = cur + 0.0 if cur < 100 else 100.0
        else:
            percent = cur * 100.0 / total
            if percent >= 100.0:
                percent = 100.0
            else:  # round(percent, 2) costs ~0.3 us; this is the same float, ~4x cheaper
                scaled = percent * 100.0
                hundredths = (scaled + 0.5) // 1.0
                if _BELOW_HALF < scaled - hundredths < _NEAR_HALF:
                    percent = hundredths / 100.0
                else:  # within rounding error of a ...5: only round() knows the exact side
                    percent = round(percent, 2)
        return cur, total, percent, state, meta

    if TYPE_CHECKING:
        def update(
            self,
            msg: object,
            *args: object,
            current: int | float | None = None,
            increment: bool = True,
            step: int | float = 1,
            total: int | float = 100,
            state: str = PROGRESS,
            meta: dict[str, Any] | None = None,
        ) -> tuple[str, dict[str, Any]]:
            """Report progress; returns ``(state, meta)`` with mastf's keys."""
    else:
        # The signature above is the API. The body takes ``**options`` because CPython fills
        # each missing keyword-only default with a dict lookup: ~0.1 us of a ~0.6 us call made
        # once per item of work, where a call without keywords takes one constant tuple.
        # ``inspect.signature``, ``help()`` and the docs show the real one (_public_update).
        update = _update

    def success(self, msg: object = "", *args: object) -> tuple[str, dict[str, Any]]:
        """The task succeeded: 100 %, state ``SUCCESS`` (the span is not marked OK unless
        otel_progress opened it)."""
        state, data = self.update(msg, *args, current=100, total=100, state=SUCCESS)
        self._finish("succeeded", None, data["description"], logging.INFO)
        return state, data

    def fail(
        self, msg: object, *args: object, exc_type: type[BaseException] = RuntimeError
    ) -> tuple[str, dict[str, Any]]:
        """The task failed without an exception object: state ``FAILURE``, span ERROR."""
        text = format_message(msg, args)
        name = getattr(exc_type, "__name__", None) or "RuntimeError"
        state, data = self.update(
            text, current=100, total=100, state=FAILURE,
            meta={"exc_type": safe_str(name, 200), "exc_message": text},
        )
        self._finish("failed", None, text, logging.WARNING, exc_type=exc_type)
        return state, data

    def exception(
        self, err: BaseException, msg: object = "", *args: object
    ) -> tuple[str, dict[str, Any]]:
        """The task failed with ``err``: state ``FAILURE``, exception recorded, span ERROR."""
        message = exception_text(err) if isinstance(err, BaseException) else safe_str(err)
        state, data = self.update(
            msg, *args, current=100, total=100, state=FAILURE,
            meta={"exc_type": type(err).__name__, "exc_message": message},
        )
        self._finish("failed", err if isinstance(err, BaseException) else None,
                     message, logging.ERROR)
        return state, data

    # --- internals -----------------------------------------------------------------------------
    def _finish(
        self,
        outcome: str,
        err: BaseException | None,
        text: str,
        level: int,
        exc_type: type[BaseException] | None = None,
    ) -> None:
        with guard("Observer.finish"):
            run = self.run
            if outcome == "failed":
                run.failed = True
                if err is not None:
                    run.remember_exception(err)
                else:
                    run.exc_type = safe_str(getattr(exc_type, "__name__", "RuntimeError"), 200)
                    run.exc_message = redact(text)
                    run.error_type = run.exc_type
                _spans.record_failure(run, err, exc_type, text)
            if run.finish(outcome=outcome, final_line=False):  # type: ignore[arg-type]
                _spans.end_run(run)  # ERROR status and error.type on a failure
            _publish.request_flush(run)
            if text:
                self._logger.log(level, "%s", redact(text))


def _public_update() -> None:
    """Give ``Observer.update`` its name and real signature for ``inspect``, ``help()``, docs."""
    fn: Any = Observer._update
    fn.__name__ = "update"
    fn.__qualname__ = "Observer.update"
    # tracebacks and profilers read the code object's names
    names = {"co_name": "update"}
    if sys.version_info >= (3, 11):
        names["co_qualname"] = "Observer.update"
    fn.__code__ = fn.__code__.replace(**names)
    params = inspect.signature(fn).parameters
    options = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
               for p in inspect.signature(_update_options).parameters.values()]
    fn.__signature__ = inspect.signature(fn).replace(
        parameters=[params["self"], params["msg"], params["args"], *options])


_public_update()
