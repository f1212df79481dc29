"""``track(iterable)``: tqdm's one-line loop reporting, as a section or inside the current one.

The per-item path is a generator resumed once per item that adds 1 to a section's ``current``
(an integer add on a slot, as ``advance()`` does, without even the ``advance()`` call): the
flusher reads the counter off the hot path, the payload gets ``rate`` and ``eta_s`` from it.

Where the items count:

* ``description`` given: a section of that name (nested in the current section, if any), opened
  at the first item and closed when the loop ends, with ``total`` as its total;
* no ``description``: the current section of the updater (the run itself outside any section):
  its ``total`` grows by ``total`` and its ``current`` by each item, so two loops in one section
  add up.

Which updater: the one given; else the latest ``TaskUpdater`` made in this context (also in a
thread started through ``propagate``) while its run is the current task's and open; else a new
``TaskUpdater()`` (the current Celery task's run, or a run of its own outside Celery, named by
``description``, ended when the loop is done with it).
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Iterator
from contextvars import ContextVar
from typing import TypeVar

from otel_progress import _celery
from otel_progress._safety import as_number, internal_error, log_once, safe_str

_T = TypeVar("_T")

_latest: ContextVar[weakref.ref[object] | None] = ContextVar("otel_progress_latest_updater",
                                                             default=None)
"""The latest TaskUpdater made in this context (a weak reference: it must not keep a dropped
updater's run open)."""


def remember(updater: object) -> None:
    """``TaskUpdater.__init__``: the updater ``track()`` uses when none is given."""
    _latest.set(weakref.ref(updater))


def _current_updater() -> object | None:
    ref = _latest.get()
    updater = ref() if ref is not None else None
    if updater is None:
        return None
    run = updater._run  # type: ignore[attr-defined]
    if run.finished:
        return None
    info = _celery.current_celery_task()
    if info is not None and run.celery_task_id != info.task_id:
        return None  # an updater of an earlier task run by this worker thread
    return updater


def _length(iterable: object, total: object, owner: object) -> int | float | None:
    """``total`` when it is a positive number, else ``len(iterable)`` when it has one."""
    if total is not None:
        num = as_number(total, "track(total=)", owner)
        if num is not None and num > 0:
            return num
        if num is not None:
            log_once(f"track-total@{id(owner)}", "otel_progress: track(total=) must be > 0: "
                     "ignored")
        return None
    try:
        size = len(iterable)  # type: ignore[arg-type]
    except Exception:  # no len(): a generator, a file (TypeError), or a broken __len__
        return None
    return size if size > 0 else None


def track(
    iterable: Iterable[_T],
    *,
    total: int | float | None = None,
    description: str | None = None,
    updater: object = None,
) -> Iterator[_T]:
    """Yield the items of ``iterable``, counting each one as done when the next is asked for.

    ``iter(iterable)`` is called at once, so a non-iterable raises ``TypeError`` here; telemetry
    errors later never reach the loop. See the module docstring for where the items count.
    """
    iterator = iter(iterable)
    if description is not None and not isinstance(description, str):
        description = safe_str(description)
    return _tracked(iterable, iterator, total, description, updater)


def _tracked(iterable: object, iterator: Iterator[_T], total: object,
             description: str | None, updater: object) -> Iterator[_T]:
    from otel_progress._sections import Section, TaskUpdater  # _sections imports this module

    section: Section | None = None
    node = None
    try:
        chosen = updater if updater is not None else _current_updater()
        if chosen is None:
            chosen = TaskUpdater(task_name=description or "track") \
                if _celery.current_celery_task() is None else TaskUpdater()
        assert isinstance(chosen, TaskUpdater)
        size = _length(iterable, total, chosen)
        if description is not None:
            section = chosen(task_name=description)
            section._enter()
            node = chosen._innermost()
            if size is not None:
                node.total = size
        else:
            node = chosen._innermost()
            if size is not None:
                node.total = (node.current if node.total is None else node.total) + size
    except Exception as exc:
        internal_error("track.start", exc)
    if node is None:  # telemetry failed to start (logged): the loop still runs, unreported
        yield from iterator
        return
    exhausted = False
    try:
        for item in iterator:
            yield item
            node.current += 1  # the hot path: one integer add per item
        exhausted = True
    except GeneratorExit:  # the loop ended early (break, an exception in its body, dropped)
        if section is not None:
            section._exit(GeneratorExit, GeneratorExit(), outcome="interrupted")
            section = None
        raise
    except BaseException as exc:  # the iterable itself raised: the section failed, re-raised
        if section is not None:  # its verdict on suppressing is moot: a generator cannot
            section._exit(type(exc), exc)
            section = None
        raise
    finally:
        if section is not None and exhausted:
            section._exit(None, None)
