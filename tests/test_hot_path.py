"""What the cheaper hot path keeps: metrics recorded off the task's thread are complete at a
collection, the first progress write waits one interval, a later attempt's final payload stands,
and the fast paths give the values the careful ones gave. No timing is asserted here (the
figures are benchmarks/run.py's)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import Celery
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from otel_progress import Observer, TaskUpdater, _metrics, _publish, _spans
from otel_progress import _attributes as A
from otel_progress._backend import TaskTarget, own_key
from otel_progress._payload import build
from otel_progress._spans import _progress
from otel_progress.testing import SpanCapture
from tests.support.redis_server import RedisServer


@pytest.fixture
def reader() -> Iterator[InMemoryMetricReader]:
    """Section metrics on an in-memory SDK reader for the test."""
    metric_reader = InMemoryMetricReader()
    _metrics.use_meter_provider(MeterProvider(metric_readers=[metric_reader]))
    yield metric_reader
    _metrics.use_meter_provider(None)


def _points(metric_reader: InMemoryMetricReader, name: str) -> dict[tuple[str, str], Any]:
    data = metric_reader.get_metrics_data()
    assert data is not None
    return {
        (str(p.attributes["section_name"]), str(p.attributes["status"])): p
        for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics
        if m.name == name for p in m.data.data_points
    }


def test_queued_section_metrics_are_complete_at_a_collection(
        reader: InMemoryMetricReader) -> None:
    """Sections finished before a collection are in it: counts, durations, labels."""
    updater = TaskUpdater(task_name="job")
    for name in ("load", "load", "parse"):
        with updater(task_name=name):
            if name == "parse":
                raise ValueError("bad row")
    counts = {k: p.value for k, p in _points(reader, A.METRIC_SECTIONS).items()}
    durations = {k: p.count for k, p in _points(reader, A.METRIC_SECTION_DURATION).items()}
    assert {("load", "succeeded"): 2, ("parse", "failed"): 1} == counts
    assert {("load", "succeeded"): 2, ("parse", "failed"): 1} == durations


def test_more_sections_than_the_queue_holds_lose_no_count(reader: InMemoryMetricReader) -> None:
    """Past MAX_PENDING the queue is recorded in the caller's thread: every section counts."""
    updater = TaskUpdater(task_name="burst")
    total = _metrics.MAX_PENDING * 2 + 7
    for _ in range(total):
        with updater(task_name="step"):
            pass
    assert total == _points(reader, A.METRIC_SECTIONS)[("step", "succeeded")].value



def test_a_collection_waits_for_a_drain_another_thread_is_recording(
        reader: InMemoryMetricReader) -> None:
    """While another thread (the flusher) holds the drain, a collection waits for it and then
    records what is still queued, instead of reading partial counts."""
    updater = TaskUpdater(task_name="busy")
    for _ in range(5):
        with updater(task_name="step"):
            pass
    held, release = threading.Event(), threading.Event()

    def flusher_mid_drain() -> None:
        with _metrics._drain_lock:
            held.set()
            release.wait(5)

    other = threading.Thread(target=flusher_mid_drain, daemon=True)
    other.start()
    assert held.wait(5)
    threading.Timer(0.2, release.set).start()
    try:
        counts = {k: p.value for k, p in _points(reader, A.METRIC_SECTIONS).items()}
    finally:
        release.set()
        other.join(5)
    assert {("step", "succeeded"): 5} == counts

def test_the_first_progress_write_waits_one_interval() -> None:
    """A new run's publisher is not due before min_interval has passed."""
    _publish.set_min_interval(0.5)

    class Sink:
        name = "sink"

        def update_state(self, state: str, meta: Any) -> None:
            pass

    observer = Observer(Sink())
    observer.update("started")
    publisher = _publish.publisher_of(observer.run)
    assert publisher is not None
    assert publisher.due(time.monotonic()) > 0


def test_a_later_attempts_final_payload_is_never_replaced(
        redis_server: RedisServer, redis_db: redis.Redis) -> None:
    """Attempt 1's final write after attempt 2's (a retry finishing first) leaves attempt 2's."""
    app = Celery("final_attempts", backend=redis_server.url, set_as_current=False)

    class Task:
        backend = app.backend

    target = TaskTarget(Task(), "task-1", None)
    second = build(TaskUpdater(task_name="retried")._run)
    second["attempt"] = 2
    first = dict(second, attempt=1, state="retrying")
    target.final(second, [])
    target.final(first, [])  # type: ignore[arg-type]
    stored = json.loads(redis_db.get(own_key("task-1")) or b"{}")
    assert (2, second["state"]) == (stored["attempt"], stored["state"])


def test_advance_keeps_floats_and_refuses_bools() -> None:
    """advance() adds 1 to a float counter, steps by other numbers, ignores a bool step."""
    updater = TaskUpdater(task_name="counts")
    with updater(task_name="loop"):
        updater.progress(current=2.5, total=10)
        updater.advance()
        updater.advance(2)
        updater.advance(True)
        node = updater._innermost()
        assert 5.5 == node.current


def test_advance_none_is_the_default_step() -> None:
    """advance(None) counts one step, like advance(), on the closure and on the method."""
    updater = TaskUpdater(task_name="counts")
    with updater(task_name="loop"):
        updater.advance(None)
        TaskUpdater.advance(updater, None)
        TaskUpdater.advance(updater)
        assert 3 == updater._innermost().current


@pytest.mark.parametrize(("current", "total"), [
    (1, 3), (2, 3), (1, 7), (5, 8), (1, 200), (1005, 100_000), (2675, 1000), (1, 1),
    (0, 10), (33_333, 100_000),
])
def test_span_percents_equal_round_to_two_places(current: int, total: int) -> None:
    """The cheaper rounding of span percents gives the float round(pct, 2) gives."""
    updater = TaskUpdater(task_name="percents")
    with updater(task_name="loop"):
        updater.progress(current=current, total=total)
        node = updater._innermost()
        assert node.counters() == _progress(node)


def test_observer_span_gets_the_last_counters_at_its_end(spans: SpanCapture) -> None:
    """Updates with one message set no span attributes; the span still ends with the last ones."""
    observer = Observer(None)
    for i in range(1, 41):
        observer.update("working", current=i, total=80)
    observer.run.finish(complete=False)
    _spans.end_run(observer.run)
    span = spans.by_name("Task")
    assert (40, 80, 50.0) == tuple((span.attributes or {})[k]
                                   for k in (A.CURRENT, A.TOTAL, A.PERCENT))


def test_iso_timestamps_match_strftime_first_time_and_from_the_memo() -> None:
    """The memoised ISO formatting gives strftime's text for any timestamp, every time."""
    import datetime as dt
    import random

    from otel_progress._payload import iso

    rng = random.Random(7)
    stamps = [rng.uniform(0, 4e9) for _ in range(5_000)] + [0.0, 1e9, 1_796_133_037.000001]
    expected = [dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
                for ts in stamps]
    assert expected == [iso(ts) for ts in stamps] == [iso(ts) for ts in stamps]


def _ages(metric_reader: InMemoryMetricReader) -> dict[str, float]:
    data = metric_reader.get_metrics_data()
    assert data is not None
    return {
        str(p.attributes[A.LABEL_TASK_NAME]): p.value
        for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics
        if m.name == A.METRIC_PROGRESS_AGE for p in m.data.data_points
    }


def test_advance_track_and_observer_updates_count_as_progress_for_the_age_gauge(
        reader: InMemoryMetricReader) -> None:
    """A task that only calls advance(), loops over track() or calls Observer.update() inside
    one long section is progressing: its progress age stays near 0 while an idle run's grows
    (the stall alert must not fire on a busy loop)."""
    class Observed:  # what Observer takes outside Celery: a name and update_state()
        name = "observed"

        def update_state(self, state: str | None = None, meta: Any = None) -> None:
            pass

    idle = TaskUpdater(task_name="idle")  # names no other test's runs share: the gauge is a max
    counting = TaskUpdater(task_name="counting")
    tracking = TaskUpdater(task_name="tracking")
    observer = Observer(Observed())
    observer.update("scanning")
    with idle(task_name="wait"), counting(task_name="loop"), tracking(task_name="loop"):
        items = iter(tracking.track(range(1000)))
        ages: list[dict[str, float]] = []
        for _ in range(4):
            time.sleep(0.3)
            for _ in range(10):
                counting.advance()
                next(items)
                observer.update("scanning")
            ages.append(_ages(reader))
    last = ages[-1]
    assert last["idle"] >= 1.0  # 1.2 s of sleeps without progress
    assert {"counting": True, "tracking": True, "observed": True} == {
        name: last[name] < 0.2 for name in ("counting", "tracking", "observed")
    }, ages
