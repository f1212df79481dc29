"""The Celery app of the worker-throughput benchmark (``benchmarks/run.py`` starts its workers).

One module, four workers: ``BENCH_VARIANT`` picks what the worker process sets up, and each
variant's task runs on its own queue, so the benchmark interleaves rounds of the three variants
against workers that stay up for the whole run. Every variant exports over OTLP through
``configure()`` and is traced by OpenTelemetry's Celery instrumentation; only the task bodies and
otel_progress's instrumentor differ:

- ``otel_progress``: ``ProgressInstrumentor`` (the state bridge), 5 sections with a notify each.
- ``otel_progress_lean``: the same with ``instrument(history=False, track_queued=False)`` (no
  history index, no ``queued`` write at publish: the producer of its rounds tracks nothing).
- ``manual``: the same 5 spans and events written by hand, with the attributes a section carries.
- ``celery_progress``: celery-progress's ``ProgressRecorder``, 5 ``set_progress`` calls.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery
from opentelemetry import trace

from otel_progress import _attributes as A
from otel_progress import configure

VARIANT = os.environ.get("BENCH_VARIANT", "")
SECTIONS = 5

app = Celery("bench_app")
_url = os.environ.get("OTEL_PROGRESS_TEST_REDIS_URL") or "memory://"
app.conf.update(
    broker_url=_url,
    result_backend=_url if _url != "memory://" else "cache+memory://",
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    result_accept_content=["json"],
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)

if VARIANT:  # a worker process; the benchmark's producer imports nothing of this
    configure(service_name=f"bench-{VARIANT}", timeout=5)
    if VARIANT in ("otel_progress", "otel_progress_lean"):
        from otel_progress.celery import ProgressInstrumentor

        if VARIANT == "otel_progress_lean":
            ProgressInstrumentor().instrument(history=False, track_queued=False)
        else:
            ProgressInstrumentor().instrument()
    else:
        from opentelemetry.instrumentation.celery import CeleryInstrumentor

        CeleryInstrumentor().instrument()  # type: ignore[no-untyped-call]


@app.task(bind=True, name="bench.otel_progress")
def otel_progress_task(self: Any) -> int:
    """Five sections, one notification each."""
    return _five_sections()


@app.task(bind=True, name="bench.otel_progress_lean")
def otel_progress_lean_task(self: Any) -> int:
    """The same body, in the worker without history and queued tracking."""
    return _five_sections()


def _five_sections() -> int:
    from otel_progress import TaskUpdater

    updater = TaskUpdater(expected_sections=SECTIONS)
    for i in range(SECTIONS):
        with updater(task_name=f"part {i}"):
            updater.progress(current=1, total=1)
            updater.notify("part done")
    return SECTIONS


_tracer = trace.get_tracer("bench.manual")


@app.task(bind=True, name="bench.manual")
def manual_task(self: Any) -> int:
    """The same five spans and events written by hand (what a user would set)."""
    for i in range(SECTIONS):
        name = f"part {i}"
        with _tracer.start_as_current_span(name, attributes={
            A.SECTION_NAME: name, A.SECTION_DEPTH: 1, A.TASK_NAME: self.name,
        }) as span:
            span.add_event("part done", {A.CURRENT: 1, A.PERCENT: 100.0, A.TOTAL: 1})
            span.set_attributes({A.SECTION_STATE: "succeeded", A.CURRENT: 1, A.TOTAL: 1,
                                 A.PERCENT: 100.0})
    return SECTIONS


@app.task(bind=True, name="bench.celery_progress")
def celery_progress_task(self: Any) -> int:
    """celery-progress: five ``set_progress`` calls (each one a result-backend write)."""
    from celery_progress.backend import ProgressRecorder

    recorder = ProgressRecorder(self)
    for i in range(SECTIONS):
        recorder.set_progress(i + 1, SECTIONS, description=f"part {i}")
    return SECTIONS
