"""A dead, refusing or hanging collector never breaks, blocks or bloats the traced program.

Each scenario runs in a child interpreter against a loopback receiver (or a closed port), so the
test can measure how long the process takes to exit and what it logged.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from otel_progress import _config
from otel_progress._attributes import METRIC_SPANS_DROPPED
from tests.support import ScriptResult, run_python
from tests.support import otlp_receiver as receivers
from tests.support.otlp_receiver import Mode, OtlpGrpcReceiver, closed_loopback_port

# The receiver factory fixture, by the name the tests ask for.
make_otlp_receiver = receivers.make_otlp_receiver

TIMEOUT_S = 2.0
"""Exporter timeout in every child script (DECISIONS 23)."""
EXIT_BOUND_S = TIMEOUT_S * 2 + 2
"""Longest acceptable exit: one export timeout for the flush, plus aborting it and teardown.
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
from otel_progress._config import configure, dropped_spans, force_flush
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
    """Spans dropped by a full queue are counted in otel_progress.spans.dropped, exported
    even while the trace endpoint hangs."""
    receiver = make_otlp_receiver("hang", metrics_mode="ok")
    result = run_fault_script(DROPS, tmp_path, receiver.endpoint)

    received = receiver.wait_for_metrics(
        lambda ms: any(m.name == METRIC_SPANS_DROPPED for m in ms), timeout=5
    )
    exported = [
        point.value for m in received if m.name == METRIC_SPANS_DROPPED for point in m.data_points
    ]
    dropped = result.result["dropped"]
    assert (True, dropped) == (dropped > 0, exported[-1])


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


# --- the one private SDK detail drop counting relies on (no network, no globals) ----------------
class _BlockingExporter(SpanExporter):
    """Holds every export until released, so the batch queue fills up."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.release.wait(10)
        return SpanExportResult.SUCCESS


@pytest.fixture
def blocked_batch_processor() -> Iterator[BatchSpanProcessor]:
    """A batch processor (queue of 2) whose exporter blocks, on a private provider."""
    exporter = _BlockingExporter()
    processor = BatchSpanProcessor(exporter, max_queue_size=2, max_export_batch_size=1)
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("probe")
    with tracer.start_as_current_span("in flight"):
        pass
    deadline = time.monotonic() + 5
    while _config._batch_queue(processor) is not None and time.monotonic() < deadline:
        queue = _config._batch_queue(processor)
        if queue is not None and len(queue[0]) == 0:  # the worker took it: export blocks now
            break
        time.sleep(0.01)
    for name in ("queued 1", "queued 2"):
        with tracer.start_as_current_span(name):
            pass
    yield processor
    exporter.release.set()
    provider.shutdown()


def test_batch_queue_probe_sees_the_installed_sdks_full_queue(
    blocked_batch_processor: BatchSpanProcessor,
) -> None:
    """_batch_queue() finds the SDK's private queue and its capacity (fails on an SDK change)."""
    probe = _config._batch_queue(blocked_batch_processor)

    assert probe is not None, "the installed SDK moved BatchSpanProcessor's queue"
    queue, capacity = probe
    assert (2, 2) == (len(queue), capacity)
