"""Threads a task starts: propagate(fn) and updater.executor() put their sections in the right
span and payload, in process and with 8 threads in a real Celery worker."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any

import pytest

import otel_progress
from otel_progress import TaskUpdater
from otel_progress.celery import get_progress
from otel_progress.testing import SpanCapture
from tests.support.adoption import AdoptionProducer
from tests.support.otlp_receiver import OtlpGrpcReceiver, SpanRecord

THREADS = 8


def test_propagate_nests_thread_sections_under_the_current_section(spans: SpanCapture) -> None:
    """A section opened in a pool thread through propagate() is a child of the section that
    was current when propagate() was called."""
    updater = TaskUpdater(task_name="run")

    def work(index: int) -> None:
        with updater(task_name=f"thread {index}"):
            updater.notify("inside")

    with updater(task_name="fan out"), ThreadPoolExecutor(4) as pool:
        list(pool.map(otel_progress.propagate(work), range(4)))
    updater.insert_final_update()
    fan_out = spans.by_name("fan out")
    children = sorted(s.name for s in spans.children_of(fan_out))
    assert [f"thread {i}" for i in range(4)] == children
    payload = updater.to_dict()
    assert [f"thread {i}" for i in range(4)] == sorted(
        c["name"] for c in payload["sections"][0]["children"])


def test_without_propagate_a_thread_section_is_top_level(spans: SpanCapture) -> None:
    """The reference: a plain thread starts with an empty context, so its section is a child
    of the run, not of the section that started the thread (why propagate exists)."""
    updater = TaskUpdater(task_name="run")
    with updater(task_name="fan out"):
        runner = threading.Thread(target=_section, args=(updater, "stray"))
        runner.start()
        runner.join(5)
    updater.insert_final_update()
    stray = spans.by_name("stray")
    assert stray.parent is not None
    assert spans.by_name("run").context.span_id == stray.parent.span_id


def test_a_propagated_function_may_run_concurrently_many_times() -> None:
    """One propagate(fn) called 200 times from 8 threads at once: every call runs, no error."""
    updater = TaskUpdater(task_name="run")
    barrier = threading.Barrier(THREADS, timeout=10)
    seen: list[int] = []
    lock = threading.Lock()

    def work(index: int) -> int:
        if index < THREADS:
            barrier.wait()  # the first 8 calls overlap for sure
        with updater(task_name="item"):
            updater.advance()
        with lock:
            seen.append(index)
        return index

    with updater(task_name="all"), ThreadPoolExecutor(THREADS) as pool:
        results = list(pool.map(otel_progress.propagate(work), range(200)))
    assert (list(range(200)), 200) == (results, len(seen))
    assert {"finished": 200, "total": 200} == updater.to_dict()["jobs"]


def test_updater_executor_is_a_concurrent_futures_executor(spans: SpanCapture) -> None:
    """updater.executor(max_workers=N) is an Executor; submit() captures its caller's section,
    so one pool serves sections opened after it was made."""
    updater = TaskUpdater(task_name="run")
    with updater.executor(max_workers=2) as pool:
        assert isinstance(pool, Executor)
        with updater(task_name="first"):
            pool.submit(_section, updater, "a").result(5)
        with updater(task_name="second"):
            pool.submit(_section, updater, "b").result(5)
    updater.insert_final_update()
    assert (["a"], ["b"]) == ([s.name for s in spans.children_of(spans.by_name("first"))],
                              [s.name for s in spans.children_of(spans.by_name("second"))])


def _section(updater: TaskUpdater, name: str) -> None:
    with updater(task_name=name):
        updater.notify(name)


@pytest.mark.parametrize("bad", [0, -1, True, 1.5])
def test_executor_refuses_a_bad_worker_count(bad: Any) -> None:
    """max_workers must be a positive int: TypeError/ValueError at construction."""
    with pytest.raises((TypeError, ValueError)):
        TaskUpdater(task_name="run").executor(max_workers=bad)


def test_propagate_refuses_a_non_callable() -> None:
    """propagate(42) is misuse at construction: TypeError."""
    with pytest.raises(TypeError):
        otel_progress.propagate(42)  # type: ignore[arg-type]


# --- 8 worker threads in a real Celery worker ---------------------------------------------------
def _named(spans: list[SpanRecord], name: str) -> SpanRecord:
    found = [s for s in spans if s.name == name]
    assert 1 == len(found), f"{name}: {sorted(s.name for s in spans)}"
    return found[0]


def _has(*names: str) -> Callable[[list[SpanRecord]], bool]:
    return lambda spans: set(names) <= {s.name for s in spans}


def _only_trace(spans: list[SpanRecord], trace_id: str) -> list[SpanRecord]:
    return [s for s in spans if s.trace_id == trace_id]


@pytest.mark.slow
@pytest.mark.parametrize("task", ["threads_executor", "threads_propagate"])
def test_eight_threads_in_a_worker_land_in_the_right_spans_and_payload(
        task: str, adoption: AdoptionProducer, adoption_receiver: OtlpGrpcReceiver) -> None:
    """A task fans out to 8 threads (updater.executor / propagate), each running a section with
    a tracked loop: every section is a child of "fan out" in the task's trace, every loop a
    child of its thread's section, and the payload's tree and jobs say the same."""
    result = adoption.send(task)
    value = result.get(timeout=60)
    payload = get_progress(result.id, app=adoption.app)
    assert payload is not None
    run_name = f"run/adoption.{task}"
    names = [f"items {i}" for i in range(THREADS)]
    spans = adoption_receiver.wait_for_spans(_has(run_name, *names), timeout=30)
    run = [s for s in spans if s.name == run_name and s.attributes.get(
        "otel_progress.task_uuid") == result.id]
    assert 1 == len(run)
    mine = _only_trace(spans, run[0].trace_id)
    fan_out = _named(mine, "fan out")
    assert run[0].span_id == fan_out.parent_span_id
    threads = {s.name: s for s in mine if s.name.startswith("thread ")}
    assert [fan_out.span_id] * THREADS == [threads[f"thread {i}"].parent_span_id
                                           for i in range(THREADS)]
    assert [threads[f"thread {i}"].span_id for i in range(THREADS)] == [
        _named(mine, f"items {i}").parent_span_id for i in range(THREADS)]
    assert [[f"thread {i} done"] for i in range(THREADS)] == [
        [e.name for e in threads[f"thread {i}"].events] for i in range(THREADS)]
    top = {section["name"]: section for section in payload["sections"]}
    assert ("succeeded", [f"thread {i}" for i in range(THREADS)]) == (
        top["fan out"]["state"], sorted(c["name"] for c in top["fan out"]["children"]))
    assert ["succeeded"] * THREADS == [c["state"] for c in top["fan out"]["children"]]
    if task == "threads_propagate":
        # a TaskUpdater() made in a thread joins the task's run: Celery's task was carried
        assert [result.id] * THREADS == value["ids"]
        assert [run[0].span_id] * THREADS == [_named(mine, f"own {i}").parent_span_id
                                              for i in range(THREADS)]
        assert {"finished": 2 * THREADS, "total": 2 * THREADS} == payload["jobs"]
    else:
        assert {"finished": THREADS, "total": THREADS} == payload["jobs"]
    assert ("succeeded", 100.0) == (payload["state"], payload["percent"])


@pytest.mark.slow
def test_track_in_a_worker_reports_to_the_tasks_run(
        adoption: AdoptionProducer, adoption_gates: Any) -> None:
    """otel_progress.track() with no updater, in a task: a "rows" section with len() as total;
    held halfway the payload shows it running with a numeric rate and eta_s."""
    from tests.support.web import wait_for

    gate = adoption_gates.new()
    result = adoption.send("track_rows", 40, gate)

    def halfway() -> Any:
        payload = get_progress(result.id, app=adoption.app)
        sections = payload["sections"] if payload else []
        return payload if sections and sections[0].get("percent") == 50.0 else None

    payload = wait_for(halfway, timeout=20, what="rows at 50 %")
    rows = payload["sections"][0]
    assert ("rows", "running", False) == (rows["name"], rows["state"], payload["indeterminate"])
    assert [float, float] == [type(rows["rate"]), type(payload["eta_s"])]
    adoption_gates.open(gate)
    assert 40 == result.get(timeout=30)
    final = get_progress(result.id, app=adoption.app)
    assert final is not None
    assert ("succeeded", 100.0, 0.0) == (final["state"], final["percent"], final["eta_s"])
