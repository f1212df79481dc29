"""TaskUpdater: the seed's sections as spans, the seed log, jobs, status and exceptions."""

from __future__ import annotations

import asyncio
import logging
import re

import pytest
from opentelemetry import trace
from opentelemetry.trace import StatusCode

from otel_progress import TaskUpdater
from otel_progress import _attributes as A
from otel_progress.testing import SpanCapture

SEED_LOG = (
    "\t - TEST - First part\n"
    "\tSome notification related to the task\n"
    "\t\tSuccessfully completed\n"
    "\t\tTime spent: 0h0m\n"
    "\t - TEST - Second part\n"
    "\t - My subtask 1 in my task 2\n"
    "\tSome notification related to the task\n"
    "\t\tSuccessfully completed\n"
    "\t\tTime spent: 0h0m\n"
    "\t - My subtask 2 in my task 2\n"
    "\t\tFailed\n"
    "\t\tTime spent: 0h0m\n"
    "\t\tSee error message:\n"
    "<class 'ZeroDivisionError'>: division by zero\n"
    "\t - My subtask 3 in my task 2\n"
    "\tSome notification related to the task\n"
    "\t\tSuccessfully completed\n"
    "\t\tTime spent: 0h0m\n"
    "\tTask Finished - 3 out of 4 jobs finished\n"
)


def _seed_helper(updater: TaskUpdater) -> None:
    with updater(task_name="My subtask 1 in my task 2"):
        updater.notify("Some notification related to the task")
    with updater(task_name="My subtask 2 in my task 2"):
        1 / 0  # noqa: B018
    with updater(task_name="My subtask 3 in my task 2"):
        updater.notify("Some notification related to the task")


def _seed_run(name: str = "TEST") -> TaskUpdater:
    updater = TaskUpdater(task_uuid="54bf5712-b9ec-11e9-afdd-8c16454a0938", task_name=name)
    with updater(task_name=name + " - First part"):
        updater.notify("Some notification related to the task")
    with updater(task_name=name + " - Second part"):
        _seed_helper(updater)
    return updater


def test_seed_log_reads_line_for_line_as_the_seed() -> None:
    """The seed's sample code produces the seed's sample log exactly."""
    updater = _seed_run()
    updater.insert_final_update()
    assert SEED_LOG == updater.to_dict()["log"]


def test_seed_status_fields_after_final_update() -> None:
    """insert_final_update(): finished, status 0 (a job failed), exception text, jobs 3 of 4."""
    updater = _seed_run()
    updater.insert_final_update()
    data = updater.to_dict()
    assert ("TEST", "54bf5712-b9ec-11e9-afdd-8c16454a0938") == (data["task_name"],
                                                                  data["task_uuid"])
    assert (True, 0, "division by zero") == (data["finished"], data["status"],
                                             data["exception"])
    assert {"finished": 3, "total": 4} == data["jobs"]
    iso = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
    assert iso.match(data["start"] or "") and iso.match(data["end"] or "")


def test_status_is_running_until_final_update_then_completed() -> None:
    """status 2 while running, 1 when every job succeeded."""
    updater = TaskUpdater(task_name="ok")
    with updater(task_name="a"):
        assert 2 == updater.to_dict()["status"]
    updater.insert_final_update()
    assert (1, "succeeded", None) == (updater.status, updater.to_dict()["state"],
                                      updater.to_dict()["exception"])


def test_span_tree_matches_the_seed_structure(spans: SpanCapture) -> None:
    """Run span -> sections -> nested sections, one trace, with the failing one ERROR."""
    _seed_run().insert_final_update()
    run = spans.by_name("TEST")
    top = spans.children_of(run)
    assert ["TEST - First part", "TEST - Second part"] == [s.name for s in top]
    nested = spans.children_of(top[1])
    assert ["My subtask 1 in my task 2", "My subtask 2 in my task 2",
            "My subtask 3 in my task 2"] == [s.name for s in nested]
    assert 1 == len({s.context.trace_id for s in spans.finished() if s.context})
    assert [StatusCode.UNSET, StatusCode.ERROR, StatusCode.UNSET] == [
        s.status.status_code for s in nested]
    assert StatusCode.ERROR == run.status.status_code


def test_failed_section_records_the_exception_event(spans: SpanCapture) -> None:
    """The exception event has type, message and stacktrace; error.type is set."""
    _seed_run().insert_final_update()
    failed = spans.by_name("My subtask 2 in my task 2")
    events = [e for e in failed.events if e.name == "exception"]
    assert 1 == len(events)
    attrs = dict(events[0].attributes or {})
    assert ("ZeroDivisionError", "division by zero") == (attrs["exception.type"],
                                                         attrs["exception.message"])
    assert "1 / 0" in str(attrs["exception.stacktrace"])
    assert "ZeroDivisionError" == (failed.attributes or {})[A.ERROR_TYPE]
    assert "division by zero" == failed.status.description


def test_section_span_attributes_have_exact_keys_and_types(spans: SpanCapture) -> None:
    """Sections carry otel_progress.* attributes with the documented types; the percent is what
    the section reported (75), not 100 for a normal exit."""
    updater = TaskUpdater(task_uuid="u-1", task_name="run")
    with updater(task_name="load"):
        updater.progress(current=3, total=4)
    attrs = dict(spans.by_name("load").attributes or {})
    assert {
        A.SECTION_NAME: "load", A.SECTION_DEPTH: 1, A.TASK_NAME: "run",
        A.CURRENT: 3, A.TOTAL: 4, A.PERCENT: 75.0, A.SECTION_STATE: "succeeded",
    } == attrs


def test_run_span_carries_the_task_uuid(spans: SpanCapture) -> None:
    """progress.task_uuid and progress.task_name are on the run span."""
    updater = TaskUpdater(task_uuid="u-2", task_name="run")
    updater.insert_final_update()
    attrs = dict(spans.by_name("run").attributes or {})
    assert ("u-2", "run") == (attrs[A.TASK_UUID], attrs[A.TASK_NAME])


def test_progress_attributes_are_overwritten_not_accumulated(spans: SpanCapture) -> None:
    """A second progress() replaces current/total; percent from the last call."""
    updater = TaskUpdater(task_name="run")
    with updater(task_name="load"):
        updater.progress(current=1, total=10)
        updater.progress(current=5, total=20)
        assert 25.0 == updater.to_dict()["sections"][0]["percent"]
    attrs = dict(spans.by_name("load").attributes or {})
    assert (5, 20) == (attrs[A.CURRENT], attrs[A.TOTAL])


def test_notify_is_an_event_on_the_innermost_section_with_progress(spans: SpanCapture) -> None:
    """notify(): event named by the message, with progress and the caller's attributes."""
    updater = TaskUpdater(task_name="run")
    with updater(task_name="outer"), updater(task_name="inner"):
        updater.progress(current=2, total=8)
        updater.notify("half way", rows=12)
    inner = spans.by_name("inner")
    assert ["half way"] == [e.name for e in inner.events]
    assert {A.CURRENT: 2, A.TOTAL: 8, A.PERCENT: 25.0, "rows": 12} == dict(
        inner.events[0].attributes or {})
    assert [] == list(spans.by_name("outer").events)


def test_notify_outside_sections_goes_to_the_run_span(spans: SpanCapture) -> None:
    """A notification with no open section lands on the run span."""
    updater = TaskUpdater(task_name="run")
    updater.notify("starting")
    updater.insert_final_update()
    assert ["starting"] == [e.name for e in spans.by_name("run").events]


def test_run_span_is_child_of_the_current_span(spans: SpanCapture) -> None:
    """Outside Celery the run span opens under whatever span is current."""
    tracer = trace.get_tracer("test")
    with tracer.start_as_current_span("request") as parent:
        updater = TaskUpdater(task_name="job")
        with updater(task_name="step"):
            pass
        updater.insert_final_update()
    run = spans.by_name("job")
    assert parent.get_span_context().span_id == (run.parent.span_id if run.parent else None)
    assert run.context and spans.by_name("step").parent
    assert run.context.span_id == spans.by_name("step").parent.span_id


def test_enter_returns_the_updater() -> None:
    """``with updater(...) as u`` gives the updater itself (the seed returned None)."""
    updater = TaskUpdater(task_name="run")
    with updater(task_name="s") as entered:
        assert updater is entered


def test_decorator_opens_a_section_per_call(spans: SpanCapture) -> None:
    """``@updater(task_name=...)`` wraps each call in a section."""
    updater = TaskUpdater(task_name="run")

    @updater(task_name="step")
    def step(x: int) -> int:
        return x * 2

    assert [2, 4] == [step(1), step(2)]
    assert ["step", "step"] == spans.names()


def test_async_with_sections_nest_across_await(spans: SpanCapture) -> None:
    """``async with`` sections nest across await points."""
    updater = TaskUpdater(task_name="run")

    async def main() -> None:
        async with updater(task_name="outer"):
            await asyncio.sleep(0)
            async with updater(task_name="inner"):
                await asyncio.sleep(0)
                updater.notify("inside")

    asyncio.run(main())
    outer, inner = spans.by_name("outer"), spans.by_name("inner")
    assert outer.context and inner.parent and outer.context.span_id == inner.parent.span_id
    assert ["inside"] == [e.name for e in inner.events]


def test_gather_branches_are_separate_children_without_cross_talk(spans: SpanCapture) -> None:
    """Each asyncio.gather branch is its own child; notifications stay in their branch."""
    updater = TaskUpdater(task_name="run")

    async def branch(name: str) -> None:
        async with updater(task_name=name):
            for i in range(3):
                await asyncio.sleep(0)
                updater.notify(f"{name}-{i}")

    async def main() -> None:
        async with updater(task_name="parent"):
            await asyncio.gather(branch("a"), branch("b"), branch("c"))

    asyncio.run(main())
    parent = spans.by_name("parent")
    for name in "abc":
        span = spans.by_name(name)
        assert parent.context and span.parent and parent.context.span_id == span.parent.span_id
        assert [f"{name}-{i}" for i in range(3)] == [e.name for e in span.events]


def test_async_decorator_runs_in_a_section(spans: SpanCapture) -> None:
    """An async function decorated with updater(...) is a section per call."""
    updater = TaskUpdater(task_name="run")

    @updater(task_name="fetch")
    async def fetch() -> str:
        await asyncio.sleep(0)
        return "done"

    assert "done" == asyncio.run(fetch())
    assert ["fetch"] == spans.names()


def test_exception_is_suppressed_and_the_task_goes_on() -> None:
    """By default a failing section is recorded and the code after it still runs."""
    updater = TaskUpdater(task_name="run")
    ran = []
    with updater(task_name="bad"):
        raise ValueError("boom")
    with updater(task_name="good"):
        ran.append("good")
    assert ["good"] == ran
    assert isinstance(updater.latest_exception, ValueError)


def test_suppress_exceptions_false_propagates_unchanged() -> None:
    """With suppress_exceptions=False the very exception object propagates."""
    updater = TaskUpdater(task_name="run", suppress_exceptions=False)
    err = KeyError("k")
    with pytest.raises(KeyError) as info, updater(task_name="bad"):
        raise err
    assert err is info.value


def test_exception_through_nested_sections_counts_one_job(spans: SpanCapture) -> None:
    """Unsuppressed, an exception fails every section it passes, but is one job."""
    updater = TaskUpdater(task_name="run", suppress_exceptions=False)
    with pytest.raises(RuntimeError), updater(task_name="outer"), updater(task_name="inner"):
        raise RuntimeError("x")
    updater.insert_final_update()
    assert {"finished": 0, "total": 1} == updater.to_dict()["jobs"]
    assert [StatusCode.ERROR, StatusCode.ERROR] == [
        spans.by_name(n).status.status_code for n in ("inner", "outer")]
    assert ["failed", "failed"] == [
        s["state"] for s in (updater.to_dict()["sections"][0],
                             updater.to_dict()["sections"][0]["children"][0])]


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit, GeneratorExit,
                                      asyncio.CancelledError])
def test_control_flow_base_exceptions_pass_and_are_not_errors(
        spans: SpanCapture, exc_type: type[BaseException]) -> None:
    """BaseExceptions that are not Exceptions propagate and leave the span status UNSET."""
    updater = TaskUpdater(task_name="run")
    with pytest.raises(exc_type), updater(task_name="s"):
        raise exc_type()
    span = spans.by_name("s")
    assert StatusCode.UNSET == span.status.status_code
    assert exc_type.__name__ in str((span.attributes or {})[A.INTERRUPTED])
    assert updater.latest_exception is None


@pytest.mark.parametrize("name", ["Retry", "Ignore", "Reject"])
def test_celery_control_flow_passes_and_is_not_an_error(spans: SpanCapture, name: str) -> None:
    """Celery's Retry, Ignore and Reject are never swallowed nor marked as errors."""
    import celery.exceptions

    exc_type = getattr(celery.exceptions, name)
    updater = TaskUpdater(task_name="run")
    with pytest.raises(exc_type), updater(task_name="s"):
        raise exc_type()
    assert StatusCode.UNSET == spans.by_name("s").status.status_code
    updater.insert_final_update()
    assert 1 == updater.status


@pytest.mark.parametrize("name", ["SoftTimeLimitExceeded", "Terminated", "WorkerLostError"])
def test_worker_errors_are_errors_but_never_suppressed(spans: SpanCapture, name: str) -> None:
    """Time limits and worker loss are recorded as errors and still propagate."""
    import billiard.exceptions

    exc_type = getattr(billiard.exceptions, name)
    updater = TaskUpdater(task_name="run")
    with pytest.raises(exc_type), updater(task_name="s"):
        raise exc_type("limit")
    assert StatusCode.ERROR == spans.by_name("s").status.status_code


def test_raise_latest_exception_reraises_the_object_with_its_traceback() -> None:
    """The very exception object comes back, traceback included, after the final update."""
    updater = TaskUpdater(task_name="run")
    with updater(task_name="bad"):
        {}["missing"]
    original = updater.latest_exception
    with pytest.raises(KeyError) as info:
        updater.raise_latest_exception()
    assert original is info.value
    assert "test_task_updater" in str(info.traceback[-1].path)
    assert updater.finished


def test_raise_latest_exception_without_failure_only_finishes() -> None:
    """No failed section: raise_latest_exception() just finishes the run."""
    updater = TaskUpdater(task_name="run")
    with updater(task_name="ok"):
        pass
    updater.raise_latest_exception()
    assert (True, 1) == (updater.finished, updater.status)


def test_final_update_is_idempotent() -> None:
    """A second insert_final_update() adds no second closing line."""
    updater = TaskUpdater(task_name="run")
    updater.insert_final_update()
    updater.insert_final_update()
    assert 1 == updater.log.count("Task Finished")


def test_run_span_ends_at_final_update(spans: SpanCapture) -> None:
    """The run span ends at insert_final_update(), with jobs and status attributes."""
    updater = TaskUpdater(task_name="run")
    with updater(task_name="a"):
        pass
    assert "run" not in spans.names()
    updater.insert_final_update()
    attrs = dict(spans.by_name("run").attributes or {})
    assert (1, 1, 1) == (attrs[A.JOBS_FINISHED], attrs[A.JOBS_TOTAL], attrs[A.STATUS])
    assert StatusCode.OK == spans.by_name("run").status.status_code


def test_dropped_updater_ends_its_run_span(spans: SpanCapture) -> None:
    """A run whose updater is garbage-collected unfinished still ends its span."""
    import gc

    def work() -> None:
        updater = TaskUpdater(task_name="forgotten")
        with updater(task_name="a"):
            pass

    work()
    gc.collect()
    assert "forgotten" in spans.names()


def test_run_span_ends_at_process_exit(tmp_path: pytest.TempPathFactory) -> None:
    """A run never finished and never dropped is ended at interpreter exit."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent("""
        import atexit
        holder = []
        # atexit runs last-registered first: this report runs after otel_progress's handler
        atexit.register(lambda: print("ENDED", sorted(s.name for s in holder[1].finished())))
        from otel_progress import TaskUpdater
        from otel_progress.testing import capture_spans
        manager = capture_spans()
        holder.extend([manager, manager.__enter__()])
        KEEP = TaskUpdater(task_name="kept-open")
        with KEEP(task_name="a"):
            pass
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=60, check=True)
    assert "ENDED ['a', 'kept-open']" in out.stdout


def test_task_name_and_uuid_default_outside_celery() -> None:
    """Outside a Celery task: a uuid4 and the name "Task"."""
    updater = TaskUpdater()
    assert "Task" == updater.task_name
    assert re.match(r"^[0-9a-f-]{36}$", updater.task_uuid)


def test_verbose_writes_every_log_line_to_the_otel_progress_logger(
        caplog: pytest.LogCaptureFixture) -> None:
    """verbose=1 logs each line of the seed log through logging.getLogger("otel_progress")."""
    caplog.set_level(logging.INFO, logger="otel_progress")
    updater = _seed_run()
    updater.insert_final_update()
    logged = "".join(r.getMessage() + "\n" for r in caplog.records if r.name == "otel_progress")
    assert "" == logged
    caplog.clear()
    verbose = TaskUpdater(task_name="run", verbose=1)
    with verbose(task_name="step"):
        verbose.notify("hello")
    verbose.insert_final_update()
    logged = "".join(r.getMessage() + "\n" for r in caplog.records if r.name == "otel_progress")
    assert logged == verbose.log


def test_constructor_rejects_wrong_types() -> None:
    """Misuse at construction raises TypeError/ValueError (the only place that raises)."""
    with pytest.raises(TypeError):
        TaskUpdater(task_name=12)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        TaskUpdater(suppress_exceptions="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        TaskUpdater(expected_sections=0)
