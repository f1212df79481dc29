"""Threads a task starts: ``propagate(fn)`` and ``TaskUpdater.executor()``.

A new thread starts with an empty ``contextvars`` context and without Celery's thread-local
current task, so sections made there would be top-level children of nothing in particular.
``propagate(fn)`` captures the caller's context (the updater's innermost section, the current
span, the latest updater) and Celery's current task once, and runs every call of the returned
function in a fresh copy of that context: it may be called many times, concurrently, from any
thread (a ``contextvars.Context`` cannot be entered twice at once, a copy per call can).
"""

from __future__ import annotations

import contextvars
import functools
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, ParamSpec, TypeVar

from otel_progress import _celery

_P = ParamSpec("_P")
_R = TypeVar("_R")


def propagate(fn: Callable[_P, _R]) -> Callable[_P, _R]:
    """``fn`` bound to the caller's progress context, for use in any thread.

    Sections opened and notifications made in ``fn`` land under the section that was current
    when ``propagate`` was called, in the same span tree and payload::

        with updater(task_name="download"):
            with ThreadPoolExecutor(8) as pool:
                list(pool.map(otel_progress.propagate(fetch), urls))
    """
    if not callable(fn):
        raise TypeError(f"propagate() needs a callable, not {type(fn).__name__}")
    context = contextvars.copy_context()
    carry = _celery.carry_task()

    @functools.wraps(fn)
    def run_propagated(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        call = functools.partial(context.copy().run, fn, *args, **kwargs)
        return carry(call) if carry is not None else call()

    return run_propagated


class ProgressExecutor(ThreadPoolExecutor):
    """A ``ThreadPoolExecutor`` whose every call runs in the context of its ``submit()``.

    ``submit`` (and so ``map``) captures the caller's progress context at that moment, so work
    submitted inside a section lands under that section, whichever thread runs it.
    """

    def submit(self, fn: Callable[..., _R], /, *args: Any, **kwargs: Any) -> Future[_R]:
        return super().submit(propagate(fn), *args, **kwargs)


def executor(max_workers: int | None = None, *, thread_name_prefix: str = "otel-progress"
             ) -> ProgressExecutor:
    """A ``concurrent.futures.Executor`` (threads) that propagates the progress context."""
    if max_workers is not None and (isinstance(max_workers, bool)
                                    or not isinstance(max_workers, int)):
        raise TypeError("max_workers must be an int or None")
    if max_workers is not None and max_workers < 1:
        raise ValueError("max_workers must be >= 1")
    return ProgressExecutor(max_workers=max_workers, thread_name_prefix=thread_name_prefix)
