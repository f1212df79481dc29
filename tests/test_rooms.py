"""What the reshaped rooms promise: nothing connected at import, a symmetric instrumentor, the
providers it is given reach section spans, and one guard for every entry point."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from otel_progress import TaskUpdater, _celery, _publish
from otel_progress._safety import guard
from otel_progress.celery import ProgressInstrumentor
from otel_progress.testing import strict
from tests.support import run_python

SIGNALS_SNAPSHOT = """
import json
from celery import signals

def snapshot():
    found = {}
    for name in dir(signals):
        sig = getattr(signals, name)
        if hasattr(sig, "receivers"):
            found[name] = len(sig.receivers or [])
    return found

before = snapshot()
import otel_progress, otel_progress.celery, otel_progress.testing  # noqa: E401
after = snapshot()
print("RESULT " + json.dumps({"before": before, "after": after}))
"""


def test_importing_otel_progress_connects_no_celery_signal(tmp_path: Path) -> None:
    """import otel_progress (and .celery) leaves every Celery signal's receivers as they were."""
    result = run_python(SIGNALS_SNAPSHOT, tmp_path)
    assert 0 == result.returncode, result.describe()
    assert result.result["before"] == result.result["after"]


def _receivers() -> dict[str, int]:
    from celery import signals

    return {name: len(getattr(signals, name).receivers or []) for name in dir(signals)
            if hasattr(getattr(signals, name), "receivers")}


def test_instrument_then_uninstrument_restores_receivers_and_defaults() -> None:
    """The round trip leaves signal receivers, Task.__call__ and the bridge defaults as before."""
    from celery.app.task import Task

    instrumentor = ProgressInstrumentor()
    was_on = instrumentor.is_instrumented_by_opentelemetry
    if was_on:
        instrumentor.uninstrument()
    try:
        before = (_receivers(), Task.__dict__["__call__"], _publish.min_interval(),
                  _celery._track_queued, _celery._send_events)
        instrumentor.instrument(min_interval=0.05, track_queued=False, send_events=True)
        assert (0.05, False, True) == (_publish.min_interval(), _celery._track_queued,
                                      _celery._send_events)
        assert before[0] != _receivers()
        instrumentor.uninstrument()
        after = (_receivers(), Task.__dict__["__call__"], _publish.min_interval(),
                 _celery._track_queued, _celery._send_events)
        assert before == after
    finally:
        if was_on:
            instrumentor.instrument()


def test_tracer_provider_given_to_instrument_reaches_section_spans() -> None:
    """instrument(tracer_provider=...) records otel_progress's own spans there too."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    instrumentor = ProgressInstrumentor()
    was_on = instrumentor.is_instrumented_by_opentelemetry
    if was_on:
        instrumentor.uninstrument()
    try:
        instrumentor.instrument(tracer_provider=provider)
        updater = TaskUpdater(task_name="mine")
        with updater(task_name="part"):
            pass
        updater.insert_final_update()
        assert ["part", "mine"] == [s.name for s in exporter.get_finished_spans()]
    finally:
        instrumentor.uninstrument()
        if was_on:
            instrumentor.instrument()


def test_guard_swallows_and_logs_once_as_decorator_and_with(
        caplog: pytest.LogCaptureFixture) -> None:
    """Outside strict mode an internal error is logged once per site and never raised."""

    @guard("test.decorated", default=7)
    def broken() -> int:
        raise RuntimeError("boom")

    with strict(False), caplog.at_level(logging.WARNING, logger="otel_progress"):
        assert (7, 7) == (broken(), broken())
        for _ in range(2):
            with guard("test.block"):
                raise RuntimeError("boom")
    marks = [r.getMessage() for r in caplog.records if "internal error" in r.getMessage()]
    assert 2 == len(marks)


def test_guard_reraises_in_strict_mode_and_lets_base_exceptions_through() -> None:
    """Strict mode re-raises internal errors; KeyboardInterrupt always passes through."""
    with strict(), pytest.raises(RuntimeError), guard("test.strict"):
        raise RuntimeError("boom")
    with strict(False), pytest.raises(KeyboardInterrupt), guard("test.base"):
        raise KeyboardInterrupt


def test_strict_mode_is_on_in_worker_and_child_processes(tmp_path: Path) -> None:
    """Children of the test suite run strict (OTEL_PROGRESS_STRICT=1)."""
    result = run_python(
        "from otel_progress import _safety\nprint('RESULT', '{\"strict\": %s}' % "
        "str(_safety.is_strict()).lower())\n", tmp_path)
    assert {"strict": True} == result.result


