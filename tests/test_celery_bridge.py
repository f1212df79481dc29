"""The Celery state bridge and connected trace trees, with real workers, Redis and OTLP/gRPC."""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from celery.result import AsyncResult

from otel_progress import _attributes as A
from otel_progress._payload import schema
from otel_progress.celery import get_progress
from tests.support.celery_worker import CeleryWorker
from tests.support.otlp_receiver import OtlpGrpcReceiver, SpanRecord
from tests.support.redis_server import RedisServer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

APP = "tests.apps.progress_app"


@pytest.fixture
def receiver() -> Iterator[OtlpGrpcReceiver]:
    """A real OTLP/gRPC receiver on 127.0.0.1."""
    with OtlpGrpcReceiver() as rec:
        yield rec


def _otel_env(receiver: OtlpGrpcReceiver, **extra: str) -> dict[str, str]:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "OTEL_METRICS_EXPORTER": "none",
    }
    env.update(extra)
    return env


@pytest.fixture
def worker(celery_worker_factory: Callable[..., CeleryWorker],
           receiver: OtlpGrpcReceiver) -> CeleryWorker:
    """A prefork worker (-c 2) on the default queue, exporting to the receiver."""
    return celery_worker_factory(APP, concurrency=2, queues=("celery",),
                                 env=_otel_env(receiver, OTEL_PROGRESS_TEST_MIN_INTERVAL="0.2"))


def _one(spans: list[SpanRecord], name: str) -> SpanRecord:
    found = [s for s in spans if s.name == name]
    assert 1 == len(found), f"{name}: {[s.name for s in spans]}"
    return found[0]


def _has(*names: str) -> Callable[[list[SpanRecord]], bool]:
    return lambda spans: set(names) <= {s.name for s in spans}


def test_sections_are_children_of_the_celery_run_span(
        app: Any, worker: CeleryWorker, receiver: OtlpGrpcReceiver) -> None:
    """run/<task> -> sections -> nested sections, one trace, statuses, events, attributes."""
    assert "done" == app.seed.delay().get(timeout=30)
    spans = receiver.wait_for_spans(_has("run/progress_app.seed", "My subtask 3"), timeout=20)
    run = _one(spans, "run/progress_app.seed")
    first, second = _one(spans, "First part"), _one(spans, "Second part")
    subtasks = [_one(spans, f"My subtask {i}") for i in (1, 2, 3)]
    assert [run.span_id, run.span_id] == [first.parent_span_id, second.parent_span_id]
    assert [second.span_id] * 3 == [s.parent_span_id for s in subtasks]
    assert {run.trace_id} == {s.trace_id for s in (first, second, *subtasks)}
    assert ["UNSET", "ERROR", "UNSET"] == [s.status_code for s in subtasks]
    assert ["exception"] == [e.name for e in subtasks[1].events]
    assert ["Some notification related to the task"] == [e.name for e in first.events]
    assert (1, "First part", "succeeded") == (
        first.attributes[A.SECTION_DEPTH], first.attributes[A.SECTION_NAME],
        first.attributes[A.SECTION_STATE])
    assert (3, 4, 0) == (run.attributes[A.JOBS_FINISHED], run.attributes[A.JOBS_TOTAL],
                         run.attributes[A.STATUS])
    assert "progress-app-test" == run.resource["service.name"]


def test_progress_is_seen_mid_task_rising_and_schema_valid(
        app: Any, worker: CeleryWorker) -> None:
    """Polling AsyncResult.info mid-task shows rising PROGRESS payloads valid against the schema."""
    result = app.steps.delay(20, 0.1)
    seen: list[float] = []
    deadline = time.monotonic() + 30
    while not result.ready() and time.monotonic() < deadline:
        info = result.info
        if result.state == "PROGRESS" and isinstance(info, dict):
            jsonschema.validate(info, schema())
            seen.append(info["percent"])
        time.sleep(0.05)
    assert 20 == result.get(timeout=10)
    distinct = sorted(set(seen))
    assert len(distinct) >= 3, seen
    assert seen == sorted(seen), "percent went backwards"
    final = get_progress(result.id, app=app.app)
    assert final is not None
    jsonschema.validate(final, schema())
    assert ("succeeded", True, 1, 100.0) == (final["state"], final["finished"], final["status"],
                                            final["percent"])


def test_hot_loop_writes_at_most_once_per_interval(
        app: Any, redis_server: RedisServer, celery_worker_factory: Callable[..., CeleryWorker],
        receiver: OtlpGrpcReceiver, tmp_path: Path) -> None:
    """100,000s of advance() calls in ~2 s make at most ~2 s / min_interval + a few writes."""
    # the task history goes to SQLite here, so every EVALSHA at Redis is a progress write
    history = f"sqlite:///{tmp_path / 'history.db'}"
    celery_worker_factory(APP, concurrency=1, queues=("celery",),
                          env=_otel_env(receiver, OTEL_PROGRESS_TEST_MIN_INTERVAL="0.5",
                                        OTEL_PROGRESS_HISTORY_URL=history))
    result = app.hot_loop.delay(2.0)
    redis_server.reset_stats()  # after the publish: its queued payload is not the worker's
    advances, duration = result.get(timeout=30)
    stats = redis_server.commandstats()
    # each progress write is one round trip: a Lua script (EVALSHA) that sets Celery's PROGRESS
    # meta and our key unless a final state is stored; the final payload is one more script
    ours = stats.get("evalsha", 0)
    assert advances >= 100_000
    assert ours <= duration / 0.5 + 3, (duration, stats)
    assert ours >= 3, "the flusher did not publish the changing progress"


def test_fail_then_return_stays_failed_for_the_frontend(app: Any, worker: CeleryWorker) -> None:
    """mastf's fail(...) then return: Celery says SUCCESS, get_progress says failed."""
    result = app.observer_fail.delay()
    assert "Test not passed" == result.get(timeout=30)
    assert "SUCCESS" == result.state
    payload = get_progress(result.id, app=app.app)
    assert payload is not None
    assert ("failed", "RuntimeError", "Test not passed", 0) == (
        payload["state"], payload["exc_type"], payload["exc_message"], payload["status"])


def test_a_task_that_raises_is_error_with_the_exception_recorded_once(
        app: Any, worker: CeleryWorker, receiver: OtlpGrpcReceiver) -> None:
    """Raising outside sections: the run span is ERROR with one exception event; payload failed."""
    result = app.raises.delay()
    with pytest.raises(ValueError):
        result.get(timeout=30)
    spans = receiver.wait_for_spans(_has("run/progress_app.raises", "ok part"), timeout=20)
    run = _one(spans, "run/progress_app.raises")
    assert "ERROR" == run.status_code
    assert 1 == sum(e.name == "exception" for e in run.events)
    assert "UNSET" == _one(spans, "ok part").status_code
    payload = get_progress(result.id, app=app.app)
    assert payload is not None
    assert ("failed", "ValueError", "task failed") == (
        payload["state"], payload["exc_type"], payload["exc_message"])


def test_failing_section_and_run_are_error_each_recording_once(
        app: Any, worker: CeleryWorker, receiver: OtlpGrpcReceiver) -> None:
    """Unsuppressed failure inside a section: ERROR on the section and on run/<task>."""
    result = app.raises_in_section.delay()
    with pytest.raises(KeyError):
        result.get(timeout=30)
    spans = receiver.wait_for_spans(_has("run/progress_app.raises_in_section", "bad part"),
                                    timeout=20)
    for name in ("run/progress_app.raises_in_section", "bad part"):
        span = _one(spans, name)
        assert "ERROR" == span.status_code, name
        assert 1 == sum(e.name == "exception" for e in span.events), name


def test_published_task_is_queued_before_any_worker_takes_it(app: Any) -> None:
    """Right after apply_async, get_progress answers queued (not None/404)."""
    result = app.sleepy.apply_async((0,), queue="nobody-listens")
    payload = get_progress(result.id, app=app.app)
    assert payload is not None
    assert ("queued", True, "progress_app.sleepy") == (payload["state"], payload["pending"],
                                                       payload["task_name"])
    assert get_progress("never-tracked-id", app=app.app) is None


def test_fan_out_to_another_worker_is_one_trace_and_parent_reports_children(
        app: Any, celery_worker_factory: Callable[..., CeleryWorker],
        receiver: OtlpGrpcReceiver) -> None:
    """Queue A fans out to queue B: one connected trace; the parent payload aggregates children."""
    env = _otel_env(receiver, OTEL_PROGRESS_TEST_MIN_INTERVAL="0.2")
    celery_worker_factory(APP, concurrency=2, queues=("celery",), name="a", env=env)
    celery_worker_factory(APP, concurrency=2, queues=("B",), name="b", env=env)
    ids = app.fanout.delay(3).get(timeout=30)
    children = [AsyncResult(i, app=app.app) for i in ids]
    # polled from the backend, not waited for on pub/sub: Celery 5.3's result consumer (the
    # versions matrix's oldest row) can miss a result published while it subscribes
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not all(child.ready() for child in children):
        time.sleep(0.05)
    assert [0, 1, 2] == [child.get(timeout=5) for child in children]
    spans = receiver.wait_for_spans(
        lambda s: sum(x.name == "child work" for x in s) == 3
        and sum(x.name == "run/progress_app.child" for x in s) == 3
        and any(x.name == "run/progress_app.fanout" for x in s), timeout=20)
    parent_run = _one(spans, "run/progress_app.fanout")
    fan = _one(spans, "fan out")
    publishes = [s for s in spans if s.name == "apply_async/progress_app.child"]
    child_runs = [s for s in spans if s.name == "run/progress_app.child"]
    assert 3 == len(publishes) == len(child_runs)
    assert {fan.span_id} == {p.parent_span_id for p in publishes}
    assert {p.span_id for p in publishes} == {c.parent_span_id for c in child_runs}
    assert {parent_run.trace_id} == {s.trace_id for s in spans
                                     if s.name.endswith("child") or s.name == "child work"}
    payload = get_progress(parent_run.attributes[A.TASK_UUID], app=app.app)
    assert payload is not None
    jsonschema.validate(payload, schema())
    assert sorted(ids) == sorted(payload["children"])
    summary = payload["children_progress"]
    assert (3, 3, 0, 100.0) == (summary["total"], summary["finished"], summary["failed"],
                                summary["percent"])


def test_retry_is_not_an_error_and_the_run_continues(
        app: Any, worker: CeleryWorker, receiver: OtlpGrpcReceiver) -> None:
    """Retry inside a section: the section is not ERROR; the second attempt succeeds."""
    result = app.retrying.delay()
    assert "second try" == result.get(timeout=30)
    spans = receiver.wait_for_spans(_has("attempt 1", "attempt 2"), timeout=20)
    first = _one(spans, "attempt 1")
    assert "UNSET" == first.status_code
    assert "Retry" in str(first.attributes[A.INTERRUPTED])
    payload = get_progress(result.id, app=app.app)
    assert payload is not None
    assert ("succeeded", 2, []) == (payload["state"], payload["attempt"], payload["children"])


def test_sigterm_mid_task_still_delivers_the_spans(
        app: Any, celery_worker_factory: Callable[..., CeleryWorker],
        receiver: OtlpGrpcReceiver) -> None:
    """Warm shutdown (SIGTERM) during a task: it finishes and its spans are exported."""
    worker = celery_worker_factory(APP, concurrency=1, queues=("celery",),
                                   env=_otel_env(receiver, OTEL_BSP_SCHEDULE_DELAY="30000"))
    result = app.sleepy.delay(1.5)
    deadline = time.monotonic() + 10
    while result.state == "PENDING" and time.monotonic() < deadline:
        time.sleep(0.05)
    worker.stop(sig=signal.SIGTERM, timeout=30)
    assert "slept" == result.get(timeout=10)
    spans = receiver.wait_for_spans(_has("run/progress_app.sleepy", "sleeping"), timeout=10)
    assert "sleeping" in {s.name for s in spans}


def test_recycled_children_flush_their_spans(
        app: Any, celery_worker_factory: Callable[..., CeleryWorker],
        receiver: OtlpGrpcReceiver) -> None:
    """--max-tasks-per-child 1: every task's spans arrive although each child exits after it."""
    celery_worker_factory(APP, concurrency=1, queues=("celery",), max_tasks_per_child=1,
                          env=_otel_env(receiver, OTEL_BSP_SCHEDULE_DELAY="30000"))
    results = [app.steps.delay(2, 0.01) for _ in range(3)]
    assert [2, 2, 2] == [r.get(timeout=30) for r in results]
    spans = receiver.wait_for_spans(
        lambda s: sum(x.name == "run/progress_app.steps" for x in s) == 3, timeout=20)
    assert 3 == sum(s.name == "work" for s in spans)


def _capture_progress(recv: Any, seen: list[dict[str, Any]]) -> None:
    """Capture events until the first task-progress (bounded by the receiver's timeout)."""

    def on_event(event: dict[str, Any]) -> None:
        if event.get("type") == "task-progress":
            seen.append(event)
            recv.should_stop = True

    recv.handlers = {"*": on_event}
    with contextlib.suppress(Exception):
        recv.capture(limit=None, timeout=15, wakeup=False)


def test_task_progress_events_reach_event_consumers_when_enabled(
        app: Any, celery_worker_factory: Callable[..., CeleryWorker],
        receiver: OtlpGrpcReceiver) -> None:
    """send_events=True: a task-progress event carries the payload (Flower can show it)."""
    celery_worker_factory(APP, concurrency=1, queues=("celery",),
                          env=_otel_env(receiver, OTEL_PROGRESS_TEST_EVENTS="1",
                                        OTEL_PROGRESS_TEST_MIN_INTERVAL="0.1"))
    seen: list[dict[str, Any]] = []
    with app.app.connection_for_read() as conn:
        recv = app.app.events.Receiver(conn)
        capture = threading.Thread(target=_capture_progress, args=(recv, seen), daemon=True)
        capture.start()
        time.sleep(0.5)  # the receiver's queue must be bound before events are sent
        result = app.steps.delay(10, 0.1)
        result.get(timeout=30)
        capture.join(timeout=20)
    assert seen, "no task-progress event"
    assert (result.id, 1) == (seen[0]["uuid"], seen[0]["progress"]["schema"])


def test_group_started_in_a_section_lands_under_it(
        app: Any, celery_worker_factory: Callable[..., CeleryWorker],
        receiver: OtlpGrpcReceiver) -> None:
    """A group published inside a section: every child's publish span is under that section."""
    env = _otel_env(receiver)
    celery_worker_factory(APP, concurrency=2, queues=("celery",), name="ga", env=env)
    celery_worker_factory(APP, concurrency=2, queues=("B",), name="gb", env=env)
    app.fanout_group.delay(3).get(timeout=30)
    spans = receiver.wait_for_spans(
        lambda s: sum(x.name == "run/progress_app.child" for x in s) == 3
        and any(x.name == "fan out group" for x in s), timeout=20)
    section = _one(spans, "fan out group")
    publishes = [s for s in spans if s.name == "apply_async/progress_app.child"]
    assert 3 == len(publishes)
    assert {section.span_id} == {p.parent_span_id for p in publishes}
    assert {section.trace_id} == {s.trace_id for s in spans if s.name.endswith(".child")}


def test_dead_result_backend_never_fails_the_task_and_spans_still_record(
        app: Any, celery_worker_factory: Callable[..., CeleryWorker],
        receiver: OtlpGrpcReceiver) -> None:
    """Progress writes to a dead backend: one warning for the task, the task and spans go on."""
    from tests.support.otlp_receiver import closed_loopback_port

    dead = f"redis://127.0.0.1:{closed_loopback_port()}/0"
    worker = celery_worker_factory(
        APP, concurrency=1, queues=("celery",),
        env=_otel_env(receiver, OTEL_PROGRESS_TEST_BACKEND_URL=dead,
                      OTEL_PROGRESS_TEST_MIN_INTERVAL="0.1"))
    app.steps.delay(10, 0.1)
    spans = receiver.wait_for_spans(_has("run/progress_app.steps", "work"), timeout=60)
    work = _one(spans, "work")
    assert ("UNSET", 10, 10) == (work.status_code, work.attributes[A.CURRENT],
                                 work.attributes[A.TOTAL])
    log = worker.log_path.read_text()
    assert 1 == log.count("cannot publish progress"), log[-3000:]


def test_concurrent_tasks_in_a_thread_pool_do_not_mix(
        app: Any, celery_worker_factory: Callable[..., CeleryWorker],
        receiver: OtlpGrpcReceiver) -> None:
    """8 overlapping tasks on --pool threads -c 4: each run holds only its own sections/events."""
    celery_worker_factory(APP, pool="threads", concurrency=4, queues=("celery",),
                          env=_otel_env(receiver))
    tags = [f"t{i}" for i in range(8)]
    results = {tag: app.tagged.delay(tag) for tag in tags}
    assert tags == [results[t].get(timeout=30) for t in tags]
    spans = receiver.wait_for_spans(
        lambda s: sum(x.name == "run/progress_app.tagged" for x in s) == 8, timeout=20)
    runs = {s.attributes[A.TASK_UUID]: s for s in spans if s.name == "run/progress_app.tagged"}
    for tag, result in results.items():
        run = runs[result.id]
        children = [s for s in spans if s.parent_span_id == run.span_id]
        assert [f"{tag}-a", f"{tag}-b"] == sorted(c.name for c in children)
        events = {e.name for c in children for e in c.events}
        assert {f"{tag}-{p}-{i}" for p in "ab" for i in range(5)} == events
        payload = get_progress(result.id, app=app.app)
        assert payload is not None
        assert [f"{tag}-a", f"{tag}-b"] == [sec["name"] for sec in payload["sections"]]
        assert {"finished": 2, "total": 2} == payload["jobs"]


def test_chains_and_chords_started_in_a_section_join_the_trace(
        app: Any, celery_worker_factory: Callable[..., CeleryWorker],
        receiver: OtlpGrpcReceiver) -> None:
    """chain and chord members run in the same trace as the task that started them."""
    env = _otel_env(receiver)
    celery_worker_factory(APP, concurrency=2, queues=("celery",), name="ca", env=env)
    celery_worker_factory(APP, concurrency=2, queues=("B",), name="cb", env=env)
    chain_id, chord_id = app.chained.delay().get(timeout=30)
    assert 2 == AsyncResult(chain_id, app=app.app).get(timeout=30)
    assert 5 == AsyncResult(chord_id, app=app.app).get(timeout=30)
    spans = receiver.wait_for_spans(
        lambda s: sum(x.name == "run/progress_app.child" for x in s) == 5
        and any(x.name == "run/progress_app.chained" for x in s), timeout=30)
    root = _one(spans, "run/progress_app.chained")
    assert {root.trace_id} == {s.trace_id for s in spans if s.name == "run/progress_app.child"}
    section = _one(spans, "compose")
    first_publishes = [s for s in spans if s.name == "apply_async/progress_app.child"
                       and s.parent_span_id == section.span_id]
    assert first_publishes, "nothing was published from the section"
