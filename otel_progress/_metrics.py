"""Metrics for SREs, through the OTel metrics API: finished sections, their duration, and the
age of the last progress report per task name (a stuck span never ends, so alerts need this).

Labels are low-cardinality only (task name, section name, status) and capped: past
``MAX_LABEL_VALUES`` distinct values a label reads ``other``. Never task ids.

Recording is off the hot path: the SDK cleans and hashes the attributes of every measurement,
which costs about what a whole span costs, so a section's end only appends its labels and
duration to a queue. :func:`drain` records what is queued (one counter ``add`` per label set,
one histogram ``record`` per section) on the flusher thread, at every metric collection (the
progress-age gauge's callback runs before a collection reads the instruments) and at shutdown;
the exported metrics are the same, only recorded later.
"""

from __future__ import annotations

import math
import threading
import time
import weakref
from collections import deque
from collections.abc import Iterable
from typing import Any, Final, Literal, Protocol

from opentelemetry import metrics

from otel_progress import _attributes as A
from otel_progress._safety import guard, logger


class _Tracked(Protocol):
    """What the progress-age gauge reads of a run."""

    finished: bool
    task_name: str
    last_progress: float
    """When the run last stamped its progress (sections, notifications, ``progress()``)."""

    def progress_mark(self) -> tuple[object, ...]:
        """Counters that change with progress that is not stamped (``advance()``)."""


_lock = threading.Lock()
_instruments: dict[str, Any] = {}
_seen: dict[str, set[str]] = {A.LABEL_TASK_NAME: set(), A.LABEL_SECTION_NAME: set()}
_running: weakref.WeakSet[Any] = weakref.WeakSet()
_marks: weakref.WeakKeyDictionary[Any, tuple[tuple[object, ...], float]] = (
    weakref.WeakKeyDictionary())
"""Each tracked run's progress mark at the last collection, and when the gauge last saw it
move: a loop of ``advance()`` calls is progress the run never stamps with the clock."""
_meter_provider: metrics.MeterProvider | None = None
MAX_PENDING: Final = 1024
"""Finished sections queued at most; one more drains the queue in the caller's thread (when
neither the flusher nor a metric collection came by). Small on purpose: a larger batch showed
as lasting RSS growth (10,000 queued sections: +4.6 MiB against +1.4 MiB)."""
_pending: deque[tuple[str, str, str, float]] = deque()
_drain_lock = threading.Lock()


def use_meter_provider(provider: metrics.MeterProvider | None) -> None:
    """Record on ``provider`` (``instrument(meter_provider=)``); None: the global one."""
    global _meter_provider
    drain(wait=True)  # what finished so far belongs to the provider it finished under
    with _lock:
        _meter_provider = provider
        _instruments.clear()


def _capped(label: str, value: str) -> str:
    seen = _seen[label]
    if value in seen:
        return value
    with _lock:
        if len(seen) >= A.MAX_LABEL_VALUES:
            return "other"
        seen.add(value)
    return value


def _get() -> dict[str, Any]:
    if not _instruments:
        with _lock:
            if not _instruments:
                meter = metrics.get_meter("otel_progress", meter_provider=_meter_provider)
                _instruments["sections"] = meter.create_counter(
                    A.METRIC_SECTIONS, unit="{section}", description="Finished sections by status."
                )
                _instruments["duration"] = meter.create_histogram(
                    A.METRIC_SECTION_DURATION,
                    unit="s",
                    description="Wall time of finished sections.",
                    explicit_bucket_boundaries_advisory=list(A.SECTION_DURATION_BUCKETS),
                )
                _instruments["age"] = meter.create_observable_gauge(
                    A.METRIC_PROGRESS_AGE,
                    callbacks=[_observe_age],
                    unit="s",
                    description="Largest time since a running run of this task reported progress.",
                )
                _instruments["running"] = meter.create_observable_gauge(
                    A.METRIC_RUNS_RUNNING,
                    callbacks=[_observe_running],
                    unit="{run}",
                    description="Runs of this task running in this process now.",
                )
    return _instruments


def record_section(task_name: str, section_name: str, status: str, duration_s: float) -> None:
    """Count one finished section and its duration: queued, recorded by :func:`drain`."""
    _pending.append((task_name, section_name, status, duration_s))
    if len(_pending) > MAX_PENDING:
        drain()


DRAIN_WAIT: Final = 1.0
"""Seconds a collection waits for another thread's drain to finish (see :func:`drain`)."""


@guard("metrics.drain")
def drain(*, wait: bool = False) -> None:
    """Record the sections finished since the last drain (the flusher, collections, exit).

    The hot path and the flusher do not wait when another thread is recording (the queue keeps
    what it has). A collection and a provider swap wait (bounded): the other thread has taken
    items off the queue but not yet recorded them, and reading now would show partial counts."""
    if not _drain_lock.acquire(timeout=DRAIN_WAIT) if wait else \
            not (_pending and _drain_lock.acquire(blocking=False)):
        return  # nothing queued, or another thread is recording it right now
    try:
        items = []
        pop = _pending.popleft
        while _pending:
            items.append(pop())
        if not _sdk_listening():
            return  # the API's no-op meters: what they would have dropped, dropped here
        inst = _get()
        counter, histogram = inst["sections"], inst["duration"]
        labels: dict[tuple[str, str, str], tuple[dict[str, str], list[int]]] = {}
        for task_name, section_name, status, duration_s in items:
            key = (task_name, section_name, status)
            entry = labels.get(key)
            if entry is None:
                entry = labels[key] = ({
                    A.LABEL_TASK_NAME: _capped(A.LABEL_TASK_NAME, task_name),
                    A.LABEL_SECTION_NAME: _capped(A.LABEL_SECTION_NAME, section_name),
                    A.LABEL_STATUS: status,
                }, [0])
            entry[1][0] += 1
            histogram.record(max(duration_s, 0.0), entry[0])
        for attributes, count in labels.values():
            counter.add(count[0], attributes)
    finally:
        _drain_lock.release()


def _sdk_listening() -> bool:
    """Whether a provider that records is in place (not the API's proxy or no-op one)."""
    provider = _meter_provider or metrics.get_meter_provider()
    return not type(provider).__module__.startswith("opentelemetry.metrics")


def track_running(run: _Tracked) -> None:
    """Include ``run`` in the progress-age gauge until it finishes."""
    _get()
    _running.add(run)


def untrack(run: _Tracked) -> None:
    """Drop ``run`` from the progress-age gauge."""
    _running.discard(run)
    with _lock:
        _marks.pop(run, None)


def _observe_age(_options: metrics.CallbackOptions) -> Iterable[metrics.Observation]:
    drain(wait=True)  # a collection calls this first: the sections queued so far are in it
    now = time.time()
    worst: dict[str, float] = {}
    for run in list(_running):
        if run.finished:
            continue
        mark = run.progress_mark()
        with _lock:
            seen = _marks.get(run)
            moved = run.last_progress if seen is None else now if seen[0] != mark else seen[1]
            _marks[run] = (mark, moved)
        name = _capped(A.LABEL_TASK_NAME, run.task_name)
        worst[name] = max(worst.get(name, 0.0), now - max(moved, run.last_progress))
    return [metrics.Observation(age, {A.LABEL_TASK_NAME: name}) for name, age in worst.items()]


def _observe_running(_options: metrics.CallbackOptions) -> Iterable[metrics.Observation]:
    counts: dict[str, int] = {}
    for run in list(_running):
        if not run.finished:
            name = _capped(A.LABEL_TASK_NAME, run.task_name)
            counts[name] = counts.get(name, 0) + 1
    return [metrics.Observation(count, {A.LABEL_TASK_NAME: name})
            for name, count in counts.items()]


Loss = Literal["queue_full", "export_failed", "shutdown"]


class _Losses:  # configure()'s pipeline reports them; a metric, so it lives here
    """Spans this process lost before they reached the collector: a total, a metric, a warning."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # Created at import: the API's proxy meter forwards to a provider set later.
        self._counter = metrics.get_meter("otel_progress").create_counter(
            A.METRIC_SPANS_DROPPED, unit="{span}",
            description="Spans lost before reaching the collector, by error.type")
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self.count, self._warned_at = 0, -math.inf

    def add(self, spans: int, reason: Loss, queue_size: int = 0) -> None:
        if spans <= 0:
            return
        with self._lock:
            self.count += spans
            total, now = self.count, time.monotonic()
            warn = reason == "queue_full" and now - self._warned_at >= 60
            self._warned_at = now if warn else self._warned_at
        self._counter.add(spans, {"error.type": reason})
        if warn:
            logger.warning("otel_progress: the span export queue is full (max_queue_size=%d): "
                           "%d spans lost so far (%s); at most one warning a minute.",
                           queue_size, total, A.METRIC_SPANS_DROPPED)


LOSSES: Final = _Losses()
