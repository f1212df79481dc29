"""A dead, refusing or hanging collector never breaks, blocks or bloats the traced program.

Each scenario runs in a child interpreter (or a real Celery worker) against a loopback receiver
(or a closed port), so the test can measure how long the process takes to exit and what it
logged, and count the spans that arrived against the spans reported lost.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from otel_progress._attributes import METRIC_SPANS_DROPPED
from otel_progress._metrics import LOSSES
from otel_progress._pipeline import Exporters, Switch
from tests.support import ScriptResult, run_python
from tests.support import otlp_receiver as receivers
from tests.support.celery_worker import CeleryWorker
from tests.support.otlp_receiver import Mode, OtlpGrpcReceiver, closed_loopback_port

# The receiver factory fixture, by the name the tests ask for.
make_otlp_receiver = receivers.make_otlp_receiver

TIMEOUT_S = 2.0
"""Exporter timeout in every child script (DECISIONS 23)."""
EXIT_BOUND_S = TIMEOUT_S + 2
"""Longest acceptable exit: one export timeout for the whole shutdown, plus teardown.
Unbounded, the SDK would wait one timeout per queued batch (4 x 2 s here)."""
EXIT_MARGIN_S = TIMEOUT_S * 3 + 5
"""Longest acceptable run of a fault script: its work plus one bounded flush at exit."""
MEMORY_BOUND_MB = 40
"""RSS growth allowed for 20,000 spans through a 2,048 queue (~12 MB seen; ~70 MB unbounded)."""

FAULTS = ["nothing_listening", "unavailable", "hang"]

PRELUDE = """\
import json, logging, os, sys, time
logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                    format="%(levelname)s %(name)s %(message)s")
from opentelemetry import trace
from otel_progress._config import configure, dropped_spans, force_flush, shutdown
ENDPOINT = os.environ["TEST_ENDPOINT"]
def report(**values):
    print("RESULT " + json.dumps(values), flush=True)
def burst(count):
    tracer = trace.get_tracer("faults")
    for i in range(count):
        with tracer.start_as_current_span("work") as span:
            for key in range(8):
                span.set_attribute(f"attr.{key}", "v" * 200)
"""


@pytest.fixture
def fault_endpoint(
    request: pytest.FixtureRequest, make_otlp_receiver: Callable[..., OtlpGrpcReceiver]
) -> str:
    """The endpoint of a misbehaving collector: a closed port, or a receiver in that mode."""
    fault: str = request.param
    if fault == "nothing_listening":
        return f"http://127.0.0.1:{closed_loopback_port()}"
    mode: Mode = "unavailable" if fault == "unavailable" else "hang"
    return make_otlp_receiver(mode).endpoint


def run_fault_script(body: str, tmp_path: Path, endpoint: str) -> ScriptResult:
    """Run PRELUDE + ``body`` against ``endpoint``; it must exit cleanly."""
    result = run_python(PRELUDE + body, tmp_path, env={"TEST_ENDPOINT": endpoint}, timeout=60)
    assert 0 == result.returncode, result.describe()
    return result


WORK = """
configure(endpoint=ENDPOINT, timeout=2, max_queue_size=2048)
error = total = None
started = time.monotonic()
try:
    burst(3000)
    total = sum(range(1000))
except Exception as exc:
    error = repr(exc)
report(error=error, total=total, work_s=time.monotonic() - started, done_at=time.time())
"""


@pytest.mark.parametrize("fault_endpoint", FAULTS, indirect=True)
def test_work_finishes_without_an_exception_reaching_user_code(
    fault_endpoint: str, tmp_path: Path
) -> None:
    """The script's own work completes and sees no exception from the exporter."""
    result = run_fault_script(WORK, tmp_path, fault_endpoint)

    assert (None, 499500) == (result.result["error"], result.result["total"])


@pytest.mark.parametrize("fault_endpoint", FAULTS, indirect=True)
def test_process_exits_within_the_export_timeout_and_a_margin(
    fault_endpoint: str, tmp_path: Path
) -> None:
    """Flushing at exit gives up after about one export timeout, not one per queued batch."""
    result = run_fault_script(WORK, tmp_path, fault_endpoint)

    exit_s = result.ended_at - result.result["done_at"]
    assert (True, True) == (exit_s < EXIT_BOUND_S, result.wall_s < EXIT_MARGIN_S), (
        f"exit took {exit_s:.2f} s\n{result.describe()}"
    )


def test_force_flush_returns_within_its_timeout_when_the_collector_hangs(
    make_otlp_receiver: Callable[..., OtlpGrpcReceiver], tmp_path: Path
) -> None:
    """force_flush(timeout_millis) returns False at its deadline, not one timeout per batch."""
    result = run_fault_script(
        """
configure(endpoint=ENDPOINT, timeout=2, max_queue_size=4096)
burst(4000)
started = time.monotonic()
flushed = force_flush(timeout_millis=1000)
report(flushed=flushed, flush_s=time.monotonic() - started)
""",
        tmp_path, make_otlp_receiver("hang").endpoint,
    )

    assert (False, True) == (result.result["flushed"], result.result["flush_s"] < 1.5)


def test_memory_stays_bounded_while_the_collector_hangs(
    make_otlp_receiver: Callable[..., OtlpGrpcReceiver], tmp_path: Path
) -> None:
    """20,000 spans through a 2,048-span queue to a hanging collector grow RSS by a bounded
    amount: the queue drops, nothing piles up."""
    result = run_fault_script(
        """
import psutil
configure(endpoint=ENDPOINT, timeout=2, max_queue_size=2048)
burst(500)
process = psutil.Process()
before = process.memory_info().rss
burst(20_000)
report(growth_mb=(process.memory_info().rss - before) / 2**20, dropped=dropped_spans())
""",
        tmp_path, make_otlp_receiver("hang").endpoint,
    )

    growth_mb = result.result["growth_mb"]
    assert growth_mb < MEMORY_BOUND_MB, f"RSS grew {growth_mb:.1f} MB\n{result.describe()}"


DROPS = """
configure(endpoint=ENDPOINT, timeout=2, max_queue_size=10)
burst(1000)
report(dropped=dropped_spans())
"""


def test_full_queue_drops_are_counted_in_the_metric(
    make_otlp_receiver: Callable[..., OtlpGrpcReceiver], tmp_path: Path
) -> None:
    """Spans refused by a full queue are counted in otel_progress.spans.dropped
    {error.type="queue_full"}, exported even while the trace endpoint hangs."""
    receiver = make_otlp_receiver("hang", metrics_mode="ok")
    result = run_fault_script(DROPS, tmp_path, receiver.endpoint)

    received = receiver.wait_for_metrics(
        lambda ms: any(m.name == METRIC_SPANS_DROPPED for m in ms), timeout=5
    )
    (*_, last) = [m for m in received if m.name == METRIC_SPANS_DROPPED]
    dropped = result.result["dropped"]
    assert (True, {"queue_full": dropped}) == (
        dropped > 0, {point.attributes["error.type"]: point.value for point in last.data_points}
    )


def test_full_queue_warning_is_logged_once(
    make_otlp_receiver: Callable[..., OtlpGrpcReceiver], tmp_path: Path
) -> None:
    """Hundreds of drops in a burst log one warning on the otel_progress logger."""
    result = run_fault_script(DROPS, tmp_path, make_otlp_receiver("hang").endpoint)

    warnings = [
        line for line in result.stderr.splitlines()
        if line.startswith("WARNING otel_progress ") and "export queue is full" in line
    ]
    assert (1, True) == (len(warnings), result.result["dropped"] > 100), result.describe()


EXACT = """
import threading
configure(endpoint=ENDPOINT, timeout=2, max_queue_size=32)
threads = [threading.Thread(target=burst, args=(5000,)) for _ in range(2)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
shutdown()
report(dropped=dropped_spans())
"""


def test_dropped_spans_is_exactly_the_spans_that_never_arrived(
    make_otlp_receiver: Callable[..., OtlpGrpcReceiver], tmp_path: Path
) -> None:
    """Two threads overrunning a 32-span queue to a healthy collector: dropped_spans() equals
    the spans sent minus the spans received (it over-counted when it guessed from the queue)."""
    receiver = make_otlp_receiver()
    result = run_fault_script(EXACT, tmp_path, receiver.endpoint)

    dropped = result.result["dropped"]
    assert (True, 10_000 - len(receiver.spans())) == (dropped > 0, dropped)


# --- the SDK behaviour the exact count relies on (no network, no globals) -----------------------
class _BlockingExporter(SpanExporter):
    """Holds every export until released, so the batch queue fills up; counts what it got."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.exported = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.release.wait(10)
        self.exported += len(spans)
        return SpanExportResult.SUCCESS


def test_the_sdk_queue_keeps_every_span_the_pipeline_admits(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """With the export blocked, the SDK's queue of 4 holds what the pipeline admits and the rest
    is refused and counted: exported + counted == ended, and the SDK itself drops nothing."""
    exporter = _BlockingExporter()
    processor = Switch()
    processor.swap(Exporters(exporter, None, None, queue=4, batch=1))
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(processor)
    before = LOSSES.count
    with caplog.at_level(logging.WARNING, logger="opentelemetry"):
        for _ in range(20):
            with provider.get_tracer("probe").start_as_current_span("span"):
                pass
        exporter.release.set()
        provider.shutdown()

    sdk_drops = [r for r in caplog.records if "Queue full" in r.getMessage()]
    assert (20, []) == (exporter.exported + LOSSES.count - before, sdk_drops)


# --- defect 9: a hung collector and a Celery worker's shutdown ----------------------------------
APP = "tests.apps.progress_app"
WORKER_TIMEOUT_S = 2.0
"""The export timeout the test app passes to configure()."""
WORKER_MARGIN_S = 3.0
"""Noise allowed on top of the healthy run and one export timeout: 2 s failed once in ~10 full
runs on a loaded 2-core machine; before the fix the hung exit took 8.7-9.5 s against a healthy
2.3 s, above this bound (7.3 s) still."""
RECYCLE_MARGIN_S = 4.0
"""More for recycling: billiard replaces an exited child on a timer (up to ~1 s a round)."""


def _worker_env(receiver: OtlpGrpcReceiver) -> dict[str, str]:
    return {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "OTEL_EXPORTER_OTLP_INSECURE": "true",
            "OTEL_BSP_SCHEDULE_DELAY": "100"}


def _stop(worker: CeleryWorker) -> None:
    worker.stop(timeout=60)
    assert False is worker.force_killed, worker.log_tail()


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_idle_worker_exits_within_one_export_timeout_when_the_collector_hangs(
    app: Any, celery_worker_factory: Callable[..., CeleryWorker],
    make_otlp_receiver: Callable[..., OtlpGrpcReceiver],
) -> None:
    """SIGTERM to an idle prefork worker with three batches of spans pending behind a hung
    export: it exits within the healthy shutdown time plus one export timeout (the shutdown
    flushes do not stack, nor wait one timeout per batch)."""
    def stop_after_one_task(mode: Mode) -> float:
        receiver = make_otlp_receiver(mode)
        queue = f"export-faults-{uuid.uuid4().hex[:8]}"  # no other test's worker takes it
        worker = celery_worker_factory(APP, concurrency=2, queues=(queue,),
                                       env=_worker_env(receiver))
        # send_task on the app itself: a shared task would follow whatever app another test
        # left current (an eager one runs it right here, and no worker sees it)
        assert 1500 == app.app.send_task("progress_app.sections", args=(1500,),
                                         queue=queue).get(timeout=30)
        receiver.wait_for_spans(lambda _: receiver.attempts("traces") > 0, timeout=30)
        started = time.monotonic()
        _stop(worker)
        return time.monotonic() - started

    # healthy runs on both sides of the hung one: the machine's load drifts between them
    before_s, hung_s, after_s = (stop_after_one_task(m) for m in ("ok", "hang", "ok"))
    healthy_s = max(before_s, after_s)
    bound_s = healthy_s + WORKER_TIMEOUT_S + WORKER_MARGIN_S
    assert True is (hung_s <= bound_s), f"healthy {healthy_s:.1f} s, hung {hung_s:.1f} s"


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_recycled_children_give_up_at_once_after_an_export_failed(
    app: Any, celery_worker_factory: Callable[..., CeleryWorker],
    make_otlp_receiver: Callable[..., OtlpGrpcReceiver],
) -> None:
    """--max-tasks-per-child 1, six short tasks on -c 2, a hung collector: done and stopped
    within the healthy time plus one export timeout (not one per recycled child)."""
    def six_tasks_and_stop(mode: Mode) -> float:
        receiver = make_otlp_receiver(mode)
        queue = f"export-faults-{uuid.uuid4().hex[:8]}"  # no other test's worker takes it
        worker = celery_worker_factory(APP, concurrency=2, max_tasks_per_child=1,
                                       queues=(queue,), env=_worker_env(receiver))
        started = time.monotonic()
        results = [app.app.send_task("progress_app.sleepy", args=(0.5,), queue=queue)
                   for _ in range(6)]
        assert ["slept"] * 6 == [result.get(timeout=90) for result in results]
        _stop(worker)
        return time.monotonic() - started

    healthy_s, hung_s = six_tasks_and_stop("ok"), six_tasks_and_stop("hang")
    bound_s = healthy_s + WORKER_TIMEOUT_S + RECYCLE_MARGIN_S
    assert True is (hung_s <= bound_s), f"healthy {healthy_s:.1f} s, hung {hung_s:.1f} s"
