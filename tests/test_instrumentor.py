"""ProgressInstrumentor in-process: what it turns on, what uninstrument() undoes, eager tasks."""

from __future__ import annotations

from collections.abc import Iterator
from importlib.metadata import entry_points
from typing import Any

import pytest
from celery import Celery
from celery.app.task import Task
from opentelemetry.instrumentation.celery import CeleryInstrumentor
from opentelemetry.trace import StatusCode

from otel_progress import Observer, TaskUpdater, _celery, _publish
from otel_progress import _attributes as A
from otel_progress.celery import ProgressInstrumentor
from otel_progress.testing import SpanCapture


@pytest.fixture
def instrumented() -> Iterator[ProgressInstrumentor]:
    """ProgressInstrumentor on for the test; afterwards as it was (a test app may have it on)."""
    instrumentor = ProgressInstrumentor()
    was_on = instrumentor.is_instrumented_by_opentelemetry
    instrumentor.instrument()
    yield instrumentor
    if not was_on:
        instrumentor.uninstrument()


@pytest.fixture
def eager_app() -> Celery:
    """An eager app (no broker, no result backend): tasks run in this process."""
    app = Celery("eager_test", set_as_current=False)
    app.conf.task_always_eager = True
    return app


def test_entry_point_exposes_the_instrumentor() -> None:
    """opentelemetry-instrument finds it through the opentelemetry_instrumentor group."""
    found = {ep.name: ep.value for ep in entry_points(group="opentelemetry_instrumentor")}
    assert "otel_progress.celery:ProgressInstrumentor" == found["otel_progress"]


def test_instrument_turns_on_celery_instrumentation_and_the_hook(
        instrumented: ProgressInstrumentor) -> None:
    """instrument(): the Celery instrumentor is active and Task.__call__ is wrapped."""
    assert CeleryInstrumentor().is_instrumented_by_opentelemetry
    assert _celery.hook_installed()


def test_uninstrument_undoes_exactly_what_instrument_did() -> None:
    """After uninstrument(), Task.__call__ and the Celery instrumentation are as before."""
    instrumentor = ProgressInstrumentor()
    was_on = instrumentor.is_instrumented_by_opentelemetry  # a test app module may have done it
    if was_on:
        instrumentor.uninstrument()
    try:
        before_call = Task.__dict__["__call__"]
        before_celery = CeleryInstrumentor().is_instrumented_by_opentelemetry
        instrumentor.instrument()
        assert before_call is not Task.__dict__["__call__"]
        instrumentor.uninstrument()
        assert before_call is Task.__dict__["__call__"]
        assert before_celery == CeleryInstrumentor().is_instrumented_by_opentelemetry
        assert not _celery.installed()
    finally:
        if was_on:
            instrumentor.instrument()


def test_eager_task_sections_are_children_of_run_span(
        instrumented: ProgressInstrumentor, eager_app: Celery, spans: SpanCapture) -> None:
    """In an eager task, sections hang under run/<task> and the run span is not ours to end."""

    @eager_app.task(bind=True, name="eager.sections")
    def job(self: Any) -> str:
        updater = TaskUpdater()
        assert (self.request.id, "eager.sections") == (updater.task_uuid, updater.task_name)
        with updater(task_name="step"):
            updater.notify("inside")
        return "ok"

    assert "ok" == job.delay().get()
    run, step = spans.by_name("run/eager.sections"), spans.by_name("step")
    assert run.context and step.parent and run.context.span_id == step.parent.span_id
    assert (A.TASK_UUID in (run.attributes or {})) and StatusCode.OK != run.status.status_code


def test_observer_in_a_task_uses_the_run_span_and_never_sets_ok(
        instrumented: ProgressInstrumentor, eager_app: Celery, spans: SpanCapture) -> None:
    """Observer inside Celery records on run/<task>; success() leaves its status alone."""

    @eager_app.task(bind=True, name="eager.observer")
    def job(self: Any) -> dict[str, Any]:
        observer = Observer(self)
        observer.update("half", current=50)
        return observer.success("done")[1]

    assert 100.0 == job.delay().get()["percent"]
    run = spans.by_name("run/eager.observer")
    assert ["half", "done"] == [e.name for e in run.events]
    assert StatusCode.UNSET == run.status.status_code
    assert "Task" not in spans.names()


def test_observer_fail_in_a_task_sets_error_on_the_run_span(
        instrumented: ProgressInstrumentor, eager_app: Celery, spans: SpanCapture) -> None:
    """fail() inside Celery marks run/<task> ERROR with the failure recorded."""

    @eager_app.task(bind=True, name="eager.fail")
    def job(self: Any) -> str:
        return str(Observer(self).fail("nope")[1]["description"])

    assert "nope" == job.delay().get()
    run = spans.by_name("run/eager.fail")
    assert StatusCode.ERROR == run.status.status_code
    assert 1 == sum(e.name == "exception" for e in run.events)


def test_updater_and_observer_in_one_task_share_the_run(
        instrumented: ProgressInstrumentor, eager_app: Celery) -> None:
    """Two facades in one task report to one run (one payload, one flusher)."""

    @eager_app.task(bind=True, name="eager.both")
    def job(self: Any) -> bool:
        return TaskUpdater()._run is Observer(self).run

    assert job.delay().get() is True


def test_open_sections_are_closed_when_the_task_raises(
        instrumented: ProgressInstrumentor, eager_app: Celery, spans: SpanCapture) -> None:
    """A section entered by hand and never left is ended, ERROR, when the task raises."""

    @eager_app.task(bind=True, name="eager.open")
    def job(self: Any) -> None:
        updater = TaskUpdater()
        updater(task_name="left open").__enter__()
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        job.apply(throw=True).get()
    assert StatusCode.ERROR == spans.by_name("left open").status.status_code


def test_a_task_calling_itself_directly_ends_its_run_once(
        instrumented: ProgressInstrumentor, eager_app: Celery, spans: SpanCapture) -> None:
    """A direct recursive call does not end the outer run early."""

    @eager_app.task(bind=True, name="eager.recursive")
    def job(self: Any, depth: int) -> str:
        updater = TaskUpdater()
        with updater(task_name=f"level {depth}"):
            if depth:
                job(depth - 1)
        return str(updater.finished)

    assert "False" == job.delay(1).get()
    assert {"level 0", "level 1"} <= set(spans.names())


def test_republishing_itself_is_not_a_child_but_other_tasks_are(
        instrumented: ProgressInstrumentor, eager_app: Celery) -> None:
    """retry() re-publishes the task's own id: it must not list itself among its children."""

    @eager_app.task(bind=True, name="eager.publisher")
    def job(self: Any) -> list[str]:
        updater = TaskUpdater()
        _celery._on_before_publish(sender="eager.publisher",
                                  headers={"id": self.request.id, "task": "eager.publisher"})
        _celery._on_before_publish(sender="other", headers={"id": "child-1", "task": "other"})
        return list(updater._run.children)

    assert ["child-1"] == job.delay().get()


def test_observer_of_a_celery_task_called_directly_publishes_nowhere(
        eager_app: Celery, spans: SpanCapture) -> None:
    """task.run() outside a worker: no task id to write under, so spans only."""

    @eager_app.task(bind=True, name="eager.direct")
    def job(self: Any) -> float:
        observer = Observer(self)
        observer.update("x", current=10)
        assert _publish.publisher_of(observer.run) is None
        return float(observer.success("done")[1]["percent"])

    assert 100.0 == job.run()
    assert "eager.direct" in spans.names()
