"""configure(): spans and metrics reaching real OTLP receivers on loopback, built by the SDK from
the arguments given and the ``OTEL_*`` variables it reads itself.

Anything that sets the global OTel providers runs in a child interpreter (``run_python``): the
API allows one provider per process, and the pytest process keeps its own for span capture.
"""

from __future__ import annotations

import ast
import inspect
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

import otel_progress
from otel_progress._attributes import (
    METRIC_PROGRESS_AGE,
    METRIC_RUNS_RUNNING,
    METRIC_SECTION_DURATION,
    METRIC_SECTIONS,
    SECTION_DURATION_BUCKETS,
)
from tests.support import ScriptResult, run_python
from tests.support import otlp_receiver as receivers
from tests.support.otlp_receiver import OtlpGrpcReceiver, OtlpHttpReceiver, SpanRecord

# The receiver fixtures, by the names the tests ask for (no root conftest plugin needed).
otlp_receiver = receivers.otlp_receiver
otlp_http_receiver = receivers.otlp_http_receiver
make_otlp_receiver = receivers.make_otlp_receiver

TIMEOUT_S = 2.0
"""Exporter timeout in every child script (DECISIONS 23)."""

PRELUDE = """\
import json, logging, os, sys, time
logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                    format="%(levelname)s %(name)s %(message)s")
from opentelemetry import metrics, trace
from otel_progress._config import configure, dropped_spans, force_flush, shutdown
ENDPOINT = os.environ.get("TEST_ENDPOINT", "")
def report(**values):
    print("RESULT " + json.dumps(values), flush=True)
"""


def run_script(
    body: str, tmp_path: Path, endpoint: str = "", env: Mapping[str, str] | None = None
) -> ScriptResult:
    """Run PRELUDE + ``body`` in a child interpreter that must exit cleanly."""
    result = run_python(
        PRELUDE + textwrap.dedent(body), tmp_path, env={"TEST_ENDPOINT": endpoint, **(env or {})}
    )
    assert 0 == result.returncode, result.describe()
    return result


def tree(spans: list[SpanRecord]) -> list[tuple[Any, ...]]:
    """Spans as (name, parent name, attributes, events, status), in start order."""
    by_id = {span.span_id: span for span in spans}
    return [
        (
            span.name,
            by_id[span.parent_span_id].name if span.parent_span_id in by_id else None,
            span.attributes,
            [(event.name, event.attributes) for event in span.events],
            (span.status_code, span.status_message),
        )
        for span in sorted(spans, key=lambda s: s.start_time_unix_nano)
    ]


# --- end to end over OTLP/gRPC -------------------------------------------------------------------
def test_spans_reach_the_receiver_with_tree_events_attributes_and_status(
    otlp_receiver: OtlpGrpcReceiver, tmp_path: Path
) -> None:
    """Spans exported at exit arrive whole: parent/child, attributes, events and status."""
    run_script(
        """
        configure(endpoint=ENDPOINT, service_name="billing-worker", timeout=2)
        tracer = trace.get_tracer("test")
        with tracer.start_as_current_span("run/job") as run:
            run.set_attribute("progress.percent", 50.0)
            with tracer.start_as_current_span("download") as section:
                section.add_event("fetched 3 files", {"progress.message": "fetched 3 files"})
                section.set_status(trace.Status(trace.StatusCode.ERROR, "boom"))
        """,
        tmp_path, otlp_receiver.endpoint,
    )

    expected = [
        ("run/job", None, {"progress.percent": 50.0}, [], ("UNSET", "")),
        (
            "download", "run/job", {},
            [("fetched 3 files", {"progress.message": "fetched 3 files"})], ("ERROR", "boom"),
        ),
    ]
    assert expected == tree(otlp_receiver.wait_for_spans(2, timeout=5))


def test_spans_carry_the_service_name_resource(
    otlp_receiver: OtlpGrpcReceiver, tmp_path: Path
) -> None:
    """service_name= becomes the service.name resource attribute of every exported span."""
    run_script(
        """
        configure(endpoint=ENDPOINT, service_name="billing-worker", timeout=2,
                  resource_attributes={"deployment.environment": "test"})
        with trace.get_tracer("test").start_as_current_span("one"):
            pass
        """,
        tmp_path, otlp_receiver.endpoint,
    )

    (span,) = otlp_receiver.wait_for_spans(1, timeout=5)
    assert ("billing-worker", "test") == (
        span.resource["service.name"], span.resource["deployment.environment"]
    )


def test_headers_argument_reaches_the_receiver(
    otlp_receiver: OtlpGrpcReceiver, tmp_path: Path
) -> None:
    """headers= is sent as gRPC metadata with every export."""
    run_script(
        """
        configure(endpoint=ENDPOINT, timeout=2, headers={"Authorization": "Bearer t0k3n"})
        with trace.get_tracer("test").start_as_current_span("one"):
            pass
        """,
        tmp_path, otlp_receiver.endpoint,
    )

    otlp_receiver.wait_for_spans(1, timeout=5)
    assert {"Bearer t0k3n"} == {headers.get("authorization") for headers in otlp_receiver.headers}


def test_headers_from_the_environment_reach_the_receiver(
    otlp_receiver: OtlpGrpcReceiver, tmp_path: Path
) -> None:
    """OTEL_EXPORTER_OTLP_HEADERS (URL-encoded) is sent when headers= is not given."""
    run_script(
        """
        configure(endpoint=ENDPOINT, timeout=2)
        with trace.get_tracer("test").start_as_current_span("one"):
            pass
        """,
        tmp_path, otlp_receiver.endpoint,
        env={"OTEL_EXPORTER_OTLP_HEADERS": "authorization=Bearer%20t0k3n"},
    )

    otlp_receiver.wait_for_spans(1, timeout=5)
    assert {"Bearer t0k3n"} == {headers.get("authorization") for headers in otlp_receiver.headers}


def test_endpoint_and_service_name_come_from_the_environment(
    otlp_receiver: OtlpGrpcReceiver, tmp_path: Path
) -> None:
    """configure() with no arguments exports where OTEL_EXPORTER_OTLP_ENDPOINT points."""
    run_script(
        """
        configure()
        with trace.get_tracer("test").start_as_current_span("one"):
            pass
        """,
        tmp_path,
        env={
            "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_receiver.endpoint,
            "OTEL_EXPORTER_OTLP_TIMEOUT": str(int(TIMEOUT_S)),  # SDK 1.30 reads whole seconds
            "OTEL_SERVICE_NAME": "from-env",
        },
    )

    (span,) = otlp_receiver.wait_for_spans(1, timeout=5)
    assert ("one", "from-env") == (span.name, span.resource["service.name"])


def test_default_span_limits_cap_attribute_length_and_event_count(
    otlp_receiver: OtlpGrpcReceiver, tmp_path: Path
) -> None:
    """The documented caps apply: 4096 characters per value, 1000 events per span."""
    run_script(
        """
        configure(endpoint=ENDPOINT, timeout=2)
        with trace.get_tracer("test").start_as_current_span("big") as span:
            span.set_attribute("text", "x" * 10_000)
            for i in range(1_200):
                span.add_event(f"event {i}")
        """,
        tmp_path, otlp_receiver.endpoint,
    )

    (span,) = otlp_receiver.wait_for_spans(1, timeout=5)
    assert (4096, 1000, 200) == (
        len(span.attributes["text"]), len(span.events), span.dropped_events_count
    )


def test_console_exporter_prints_finished_spans(tmp_path: Path) -> None:
    """traces_exporter="console" prints each finished span to stdout and needs no collector."""
    result = run_script(
        """
        configure(traces_exporter="console")
        with trace.get_tracer("test").start_as_current_span("printed"):
            pass
        """,
        tmp_path,
    )

    assert '"name": "printed"' in result.stdout


# --- OTLP/HTTP -----------------------------------------------------------------------------------
def test_http_protobuf_protocol_reaches_the_http_receiver(
    otlp_http_receiver: OtlpHttpReceiver, tmp_path: Path
) -> None:
    """protocol="http/protobuf" posts spans to <endpoint>/v1/traces with the headers."""
    run_script(
        """
        configure(endpoint=ENDPOINT, protocol="http/protobuf", timeout=2,
                  headers="authorization=Bearer%20t0k3n", service_name="http-svc")
        tracer = trace.get_tracer("test")
        with tracer.start_as_current_span("parent"):
            with tracer.start_as_current_span("child"):
                pass
        """,
        tmp_path, otlp_http_receiver.endpoint,
    )

    spans = otlp_http_receiver.wait_for_spans(2, timeout=5)
    assert (
        [("parent", None), ("child", "parent")],
        {"http-svc"},
        {"Bearer t0k3n"},
    ) == (
        [(name, parent) for name, parent, *_ in tree(spans)],
        {span.resource["service.name"] for span in spans},
        {headers.get("authorization") for headers in otlp_http_receiver.headers},
    )


# --- idempotence and ownership -------------------------------------------------------------------
def test_configure_twice_exports_each_span_once(
    otlp_receiver: OtlpGrpcReceiver, tmp_path: Path
) -> None:
    """A second configure() with the same settings adds no second exporter."""
    run_script(
        """
        configure(endpoint=ENDPOINT, timeout=2)
        configure(endpoint=ENDPOINT, timeout=2)
        for name in ("a", "b", "c"):
            with trace.get_tracer("test").start_as_current_span(name):
                pass
        """,
        tmp_path, otlp_receiver.endpoint,
    )

    otlp_receiver.wait_for_spans(3, timeout=5)
    assert ["a", "b", "c"] == sorted(span.name for span in otlp_receiver.spans())


def test_reconfigure_moves_export_to_the_new_endpoint(
    make_otlp_receiver: Any, tmp_path: Path
) -> None:
    """configure() again with another endpoint replaces the exporter on the same provider."""
    first, second = make_otlp_receiver(), make_otlp_receiver()
    run_script(
        """
        configure(endpoint=ENDPOINT, timeout=2)
        with trace.get_tracer("test").start_as_current_span("before"):
            pass
        configure(endpoint=os.environ["SECOND_ENDPOINT"], timeout=2)
        with trace.get_tracer("test").start_as_current_span("after"):
            pass
        """,
        tmp_path, first.endpoint, env={"SECOND_ENDPOINT": second.endpoint},
    )

    second.wait_for_spans(1, timeout=5)
    assert (["before"], ["after"]) == (
        [span.name for span in first.spans()], [span.name for span in second.spans()]
    )


def test_shutdown_exports_what_is_queued_and_stops_exporting(
    otlp_receiver: OtlpGrpcReceiver, tmp_path: Path
) -> None:
    """shutdown() sends the queued spans before it returns; spans after it go nowhere."""
    result = run_script(
        """
        configure(endpoint=ENDPOINT, timeout=2)
        tracer = trace.get_tracer("test")
        with tracer.start_as_current_span("before shutdown"):
            pass
        shutdown()
        with tracer.start_as_current_span("after shutdown"):
            pass
        """,
        tmp_path, otlp_receiver.endpoint,
    )

    assert ["before shutdown"] == [span.name for span in otlp_receiver.spans()], result.describe()


def test_reset_lets_configure_run_again(
    make_otlp_receiver: Any, tmp_path: Path
) -> None:
    """After reset(), configure() attaches a new exporter to the same global provider."""
    first, second = make_otlp_receiver(), make_otlp_receiver()
    result = run_script(
        """
        from otel_progress._config import reset
        configure(endpoint=ENDPOINT, timeout=2)
        provider = trace.get_tracer_provider()
        with trace.get_tracer("test").start_as_current_span("first"):
            pass
        reset()
        with trace.get_tracer("test").start_as_current_span("between"):
            pass
        configure(endpoint=os.environ["SECOND_ENDPOINT"], timeout=2)
        with trace.get_tracer("test").start_as_current_span("second"):
            pass
        report(same_provider=trace.get_tracer_provider() is provider)
        """,
        tmp_path, first.endpoint, env={"SECOND_ENDPOINT": second.endpoint},
    )

    second.wait_for_spans(1, timeout=5)
    assert (["first"], ["second"], True) == (
        [span.name for span in first.spans()],
        [span.name for span in second.spans()],
        result.result["same_provider"],
    )


def test_span_ended_by_a_bridge_shutdown_callback_is_still_exported(
    otlp_receiver: OtlpGrpcReceiver, tmp_path: Path
) -> None:
    """"bridge" shutdown callbacks run before the final flush, whatever the atexit order."""
    run_script(
        """
        import atexit
        from otel_progress import _lifecycle
        configure(endpoint=ENDPOINT, timeout=2)
        span = trace.get_tracer("test").start_span("open at exit")
        _lifecycle.on_shutdown(lambda deadline: span.end(), "bridge")
        atexit.register(lambda: None)  # a later atexit handler does not change the order
        """,
        tmp_path, otlp_receiver.endpoint,
    )

    assert ["open at exit"] == [span.name for span in otlp_receiver.wait_for_spans(1, timeout=5)]


def test_application_tracer_provider_is_used_and_nothing_is_added(
    otlp_receiver: OtlpGrpcReceiver, tmp_path: Path
) -> None:
    """With an SDK provider already set, configure() adds no exporter: spans go where the app
    sends them, none to configure()'s endpoint."""
    result = run_script(
        """
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
        memory = InMemorySpanExporter()
        app_provider = TracerProvider()
        app_provider.add_span_processor(SimpleSpanProcessor(memory))
        trace.set_tracer_provider(app_provider)
        configure(endpoint=ENDPOINT, timeout=2, metrics=False)
        with trace.get_tracer("test").start_as_current_span("app span"):
            pass
        force_flush(2000)
        report(names=[s.name for s in memory.get_finished_spans()],
               same_provider=trace.get_tracer_provider() is app_provider)
        """,
        tmp_path, otlp_receiver.endpoint,
    )

    assert ({"names": ["app span"], "same_provider": True}, 0) == (
        result.result, otlp_receiver.attempts("traces")
    )


def test_forked_worker_child_exports_through_a_rebuilt_exporter(
    otlp_receiver: OtlpGrpcReceiver, tmp_path: Path
) -> None:
    """In a prefork child, worker_process_init rebuilds the exporter and worker_process_shutdown
    flushes it before the child's os._exit()."""
    result = run_script(
        """
        from celery import signals
        configure(endpoint=ENDPOINT, timeout=2)
        tracer = trace.get_tracer("test")
        with tracer.start_as_current_span("parent before fork"):
            pass
        force_flush(2000)
        pid = os.fork()
        if pid == 0:
            signals.worker_process_init.send(sender=None)
            with tracer.start_as_current_span("in child"):
                pass
            signals.worker_process_shutdown.send(sender=None, pid=os.getpid(), exitcode=0)
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        with tracer.start_as_current_span("parent after fork"):
            pass
        report(child_status=status)
        """,
        tmp_path, otlp_receiver.endpoint,
    )

    otlp_receiver.wait_for_spans(3, timeout=5)
    assert (0, ["in child", "parent after fork", "parent before fork"]) == (
        result.result["child_status"], sorted(span.name for span in otlp_receiver.spans())
    )


# --- metrics -------------------------------------------------------------------------------------
def test_counter_reaches_the_metrics_service(
    otlp_receiver: OtlpGrpcReceiver, tmp_path: Path
) -> None:
    """A counter recorded through the global meter is exported to MetricsService at exit."""
    run_script(
        f"""
        configure(endpoint=ENDPOINT, timeout=2, service_name="metrics-svc")
        counter = metrics.get_meter("otel_progress").create_counter({METRIC_SECTIONS!r})
        counter.add(2, {{"task_name": "job", "status": "succeeded"}})
        """,
        tmp_path, otlp_receiver.endpoint,
    )

    received = otlp_receiver.wait_for_metrics(
        lambda ms: any(m.name == METRIC_SECTIONS for m in ms), timeout=5
    )
    (metric,) = [m for m in received if m.name == METRIC_SECTIONS]
    assert (
        "metrics-svc", [({"task_name": "job", "status": "succeeded"}, 2)]
    ) == (
        metric.resource["service.name"],
        [(point.attributes, point.value) for point in metric.data_points],
    )


def test_section_duration_histogram_uses_the_documented_buckets(
    otlp_receiver: OtlpGrpcReceiver, tmp_path: Path
) -> None:
    """The section duration histogram is exported with SECTION_DURATION_BUCKETS (a View)."""
    run_script(
        f"""
        configure(endpoint=ENDPOINT, timeout=2)
        histogram = metrics.get_meter("otel_progress").create_histogram(
            {METRIC_SECTION_DURATION!r}, unit="s")
        histogram.record(0.3, {{"task_name": "job"}})
        """,
        tmp_path, otlp_receiver.endpoint,
    )

    received = otlp_receiver.wait_for_metrics(
        lambda ms: any(m.name == METRIC_SECTION_DURATION for m in ms), timeout=5
    )
    (metric,) = [m for m in received if m.name == METRIC_SECTION_DURATION]
    (point,) = metric.data_points
    assert (SECTION_DURATION_BUCKETS, 1) == (point.explicit_bounds, point.count)


# --- the lead's TaskUpdater over the real pipeline -----------------------------------------------
def test_task_updater_section_and_notification_reach_the_receiver(
    otlp_receiver: OtlpGrpcReceiver, tmp_path: Path
) -> None:
    """A TaskUpdater section exports as a child span of the run carrying the notify() event."""
    run_script(
        """
        configure(endpoint=ENDPOINT, timeout=2, service_name="updater-svc")
        from otel_progress import TaskUpdater
        updater = TaskUpdater(task_name="job")
        with updater(task_name="x"):
            updater.notify("hi")
        updater.insert_final_update()
        """,
        tmp_path, otlp_receiver.endpoint,
    )

    spans = otlp_receiver.wait_for_spans(lambda s: any(span.name == "x" for span in s), timeout=5)
    by_id = {span.span_id: span for span in spans}
    (section,) = [span for span in spans if span.name == "x"]
    assert (True, ["hi"], "updater-svc") == (
        section.parent_span_id in by_id,
        [event.name for event in section.events],
        section.resource["service.name"],
    )


def test_task_updater_sections_export_the_section_metrics(
    otlp_receiver: OtlpGrpcReceiver, tmp_path: Path
) -> None:
    """Finished sections count by task, section and status, with durations, and the age gauge."""
    run_script(
        """
        import os, time
        os.environ["OTEL_METRIC_EXPORT_INTERVAL"] = "100"  # collect while "stuck" still runs
        configure(endpoint=ENDPOINT, timeout=2)
        from otel_progress import TaskUpdater
        updater = TaskUpdater(task_name="job")
        for name in ("load", "load", "parse"):
            with updater(task_name=name):
                if name == "parse":
                    raise ValueError("bad row")
        still_running = TaskUpdater(task_name="stuck")
        updater.insert_final_update()
        time.sleep(0.5)
        """,
        tmp_path, otlp_receiver.endpoint,
    )

    names = {METRIC_SECTIONS, METRIC_SECTION_DURATION, METRIC_PROGRESS_AGE}
    received = otlp_receiver.wait_for_metrics(
        lambda ms: names <= {m.name for m in ms}, timeout=5
    )
    counts = {  # cumulative sums: the last export holds the totals
        (p.attributes["task_name"], p.attributes["section_name"], p.attributes["status"]): p.value
        for m in received if m.name == METRIC_SECTIONS for p in m.data_points
    }
    assert {("job", "load", "succeeded"): 2, ("job", "parse", "failed"): 1} == counts
    durations = {p.attributes["section_name"]: p.count for m in received
                 if m.name == METRIC_SECTION_DURATION for p in m.data_points}
    assert {"load": 2, "parse": 1} == durations
    ages = {p.attributes["task_name"] for m in received if m.name == METRIC_PROGRESS_AGE
            for p in m.data_points}
    assert "stuck" in ages


def test_running_runs_gauge_counts_unfinished_runs_by_task_name(
    otlp_receiver: OtlpGrpcReceiver, tmp_path: Path
) -> None:
    """otel_progress.runs.running counts the runs of each task name that have not finished."""
    run_script(
        """
        import os, time
        os.environ["OTEL_METRIC_EXPORT_INTERVAL"] = "100"
        configure(endpoint=ENDPOINT, timeout=2)
        from otel_progress import TaskUpdater
        done = TaskUpdater(task_name="done")
        done.insert_final_update()
        first, second = TaskUpdater(task_name="busy"), TaskUpdater(task_name="busy")
        time.sleep(0.5)
        """,
        tmp_path, otlp_receiver.endpoint,
    )

    received = otlp_receiver.wait_for_metrics(
        lambda ms: METRIC_RUNS_RUNNING in {m.name for m in ms}, timeout=5
    )
    points = [{p.attributes["task_name"]: p.value for p in m.data_points}
              for m in received if m.name == METRIC_RUNS_RUNNING]
    assert {"busy": 2} in points
    assert all("done" not in p for p in points)


# --- what the SDK reads itself, per signal ------------------------------------------------------
SPAN_AND_COUNTER = f"""
with trace.get_tracer("test").start_as_current_span("one"):
    pass
metrics.get_meter("otel_progress").create_counter({METRIC_SECTIONS!r}).add(1)
"""


def has_counter(received: list[Any]) -> bool:
    """Whether the section counter is among the received metrics."""
    return any(metric.name == METRIC_SECTIONS for metric in received)


def test_signal_specific_endpoint_beats_the_generic_one(
    make_otlp_receiver: Any, tmp_path: Path
) -> None:
    """OTEL_EXPORTER_OTLP_TRACES_ENDPOINT sends spans there; metrics use the generic endpoint."""
    traces, generic = make_otlp_receiver(), make_otlp_receiver()
    run_script(
        "configure(timeout=2)\n" + SPAN_AND_COUNTER, tmp_path,
        env={"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": traces.endpoint,
             "OTEL_EXPORTER_OTLP_ENDPOINT": generic.endpoint},
    )

    generic.wait_for_metrics(has_counter, timeout=5)
    assert (["one"], 0, 0) == (
        [span.name for span in traces.wait_for_spans(1, timeout=5)],
        generic.attempts("traces"), traces.attempts("metrics"),
    )


def test_metrics_protocol_is_read_per_signal(
    otlp_receiver: OtlpGrpcReceiver, otlp_http_receiver: OtlpHttpReceiver, tmp_path: Path
) -> None:
    """OTEL_EXPORTER_OTLP_METRICS_PROTOCOL=http/protobuf with gRPC traces: metrics reach the
    HTTP receiver, spans the gRPC one."""
    run_script(
        "configure(timeout=2)\n" + SPAN_AND_COUNTER, tmp_path,
        env={"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": otlp_receiver.endpoint,
             "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": f"{otlp_http_receiver.endpoint}/v1/metrics",
             "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL": "http/protobuf"},
    )

    otlp_http_receiver.wait_for_metrics(has_counter, timeout=5)
    assert (["one"], 0, 0) == (
        [span.name for span in otlp_receiver.wait_for_spans(1, timeout=5)],
        otlp_http_receiver.attempts("traces"), otlp_receiver.attempts("metrics"),
    )


def test_generic_http_protocol_and_base_endpoint_reach_both_signal_paths(
    otlp_http_receiver: OtlpHttpReceiver, tmp_path: Path
) -> None:
    """OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf and a base endpoint: the SDK posts spans to
    /v1/traces and metrics to /v1/metrics."""
    run_script(
        "configure(timeout=2)\n" + SPAN_AND_COUNTER, tmp_path,
        env={"OTEL_EXPORTER_OTLP_ENDPOINT": otlp_http_receiver.endpoint,
             "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"},
    )

    otlp_http_receiver.wait_for_metrics(has_counter, timeout=5)
    assert ["one"] == [span.name for span in otlp_http_receiver.wait_for_spans(1, timeout=5)]


def test_arguments_win_over_the_environment_and_resources_merge_key_by_key(
    make_otlp_receiver: Any, tmp_path: Path
) -> None:
    """endpoint= and service_name= beat their variables; resource_attributes= overrides
    OTEL_RESOURCE_ATTRIBUTES key by key, keeping the rest."""
    given, from_env = make_otlp_receiver(), make_otlp_receiver()
    run_script(
        """
        configure(endpoint=ENDPOINT, service_name="arg-svc", timeout=2,
                  resource_attributes={"team": "arg"})
        with trace.get_tracer("test").start_as_current_span("one"):
            pass
        """,
        tmp_path, given.endpoint,
        env={"OTEL_EXPORTER_OTLP_ENDPOINT": from_env.endpoint, "OTEL_SERVICE_NAME": "env-svc",
             "OTEL_RESOURCE_ATTRIBUTES": "team=env,region=eu"},
    )

    (span,) = given.wait_for_spans(1, timeout=5)
    assert (("arg-svc", "arg", "eu"), 0) == (
        (span.resource["service.name"], span.resource["team"], span.resource["region"]),
        from_env.attempts("traces"),
    )


def test_span_limit_variables_replace_the_defaults(
    otlp_receiver: OtlpGrpcReceiver, tmp_path: Path
) -> None:
    """OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT and OTEL_SPAN_EVENT_COUNT_LIMIT are the SDK's to read."""
    run_script(
        """
        configure(endpoint=ENDPOINT, timeout=2)
        with trace.get_tracer("test").start_as_current_span("big") as span:
            span.set_attribute("text", "x" * 1000)
            for i in range(50):
                span.add_event(f"event {i}")
        """,
        tmp_path, otlp_receiver.endpoint,
        env={"OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT": "100", "OTEL_SPAN_EVENT_COUNT_LIMIT": "10"},
    )

    (span,) = otlp_receiver.wait_for_spans(1, timeout=5)
    assert (100, 10) == (len(span.attributes["text"]), len(span.events))


def test_metrics_exporter_none_sends_spans_but_no_metrics(
    otlp_receiver: OtlpGrpcReceiver, tmp_path: Path
) -> None:
    """OTEL_METRICS_EXPORTER=none: configure() builds no metric exporter."""
    run_script("configure(endpoint=ENDPOINT, timeout=2)\n" + SPAN_AND_COUNTER, tmp_path,
               otlp_receiver.endpoint, env={"OTEL_METRICS_EXPORTER": "none"})

    otlp_receiver.wait_for_spans(1, timeout=5)
    assert 0 == otlp_receiver.attempts("metrics")


def test_traces_exporter_variable_picks_the_console(tmp_path: Path) -> None:
    """OTEL_TRACES_EXPORTER=console prints spans, as traces_exporter="console" does."""
    result = run_script(
        """
        configure()
        with trace.get_tracer("test").start_as_current_span("printed"):
            pass
        """,
        tmp_path, env={"OTEL_TRACES_EXPORTER": "console"},
    )

    assert '"name": "printed"' in result.stdout


# --- bad values: the documented outcome ---------------------------------------------------------
BAD_ENVIRONMENT = [
    # (variable, value, outcome): "raises: <start of message>", or "warns: <text>" and spans flow
    ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json", "raises: OTEL_EXPORTER_OTLP_PROTOCOL='http/json'"),
    ("OTEL_BSP_MAX_QUEUE_SIZE", "lots", "raises: OTEL_BSP_MAX_QUEUE_SIZE='lots'"),
    # the SDK's own messages differ between its versions (" | " separates those of the versions
    # the matrix runs: the newest first, then SDK 1.30's)
    ("OTEL_SPAN_EVENT_COUNT_LIMIT", "many", "raises: OTEL_SPAN_EVENT_COUNT_LIMIT must be"
     " | cannot switch from manual field specification"),
    ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "soon", "raises: could not convert string to float"
     " | invalid literal for int()"),
    ("OTEL_BSP_SCHEDULE_DELAY", "soon", "warns: Unable to parse value for OTEL_BSP_SCHEDULE_DELAY"),
    ("OTEL_TRACES_EXPORTER", "otlp,zipkin", "warns: OTEL_TRACES_EXPORTER=otlp,zipkin: configure()"),
]


@pytest.mark.parametrize(("variable", "value", "outcome"), BAD_ENVIRONMENT,
                         ids=[case[0] for case in BAD_ENVIRONMENT])
def test_bad_environment_value_has_the_documented_outcome(
    variable: str, value: str, outcome: str, otlp_receiver: OtlpGrpcReceiver, tmp_path: Path
) -> None:
    """A malformed OTEL_* value: configure() raises ValueError (ours or the SDK's), or the SDK
    warns and uses its default while spans still reach the collector."""
    result = run_script(
        """
        try:
            configure(endpoint=ENDPOINT, timeout=2)
        except ValueError as exc:
            report(outcome=f"raises: {exc}")
        else:
            with trace.get_tracer("test").start_as_current_span("one"):
                pass
            shutdown()
            report(outcome="warns")
        """,
        tmp_path, otlp_receiver.endpoint, env={variable: value},
    )

    kind, _, text = outcome.partition(": ")
    if kind == "raises":
        got = result.result["outcome"]
        assert any(got.startswith(f"raises: {alt}") for alt in text.split(" | ")), (
            result.describe())
    else:
        assert ("warns", True, ["one"]) == (
            result.result["outcome"], text in result.stderr,
            [span.name for span in otlp_receiver.spans()],
        ), result.describe()


@pytest.mark.parametrize(
    ("arguments", "error"),
    [
        ({"endpoint": 4317}, TypeError),
        ({"timeout": "2"}, TypeError),
        ({"timeout": -1}, ValueError),
        ({"timeout": True}, TypeError),
        ({"max_queue_size": 0}, ValueError),
        ({"headers": {"a": 1}}, TypeError),
        ({"protocol": "http/json"}, ValueError),
        ({"traces_exporter": "zipkin"}, ValueError),
        ({"service_name": " "}, ValueError),
        ({"span_limits": {"max_events": 5}}, TypeError),
    ],
    ids=["endpoint", "timeout-type", "timeout-value", "timeout-bool", "queue", "headers",
         "protocol", "exporter", "service_name", "span_limits"],
)
def test_bad_argument_raises_a_clear_error_naming_it(
    arguments: dict[str, Any], error: type[Exception]
) -> None:
    """Misuse raises TypeError/ValueError that names the argument, before anything is set up."""
    (name,) = arguments
    with pytest.raises(error, match=rf"^configure\({name}="):
        otel_progress.configure(**arguments)


@pytest.mark.parametrize("name", sorted(inspect.signature(otel_progress.configure).parameters))
def test_every_keyword_is_type_checked(name: str) -> None:
    """Each configure() keyword rejects a value of the wrong type, naming itself."""
    with pytest.raises(TypeError, match=rf"^configure\({name}="):
        otel_progress.configure(**{name: object()})


def test_missing_http_exporter_raises_import_error_naming_the_extra(tmp_path: Path) -> None:
    """protocol="http/protobuf" without the exporter package says which extra to install."""
    result = run_script(
        """
        sys.modules["opentelemetry.exporter.otlp.proto.http"] = None
        try:
            configure(protocol="http/protobuf", timeout=2)
        except ImportError as exc:
            report(error=str(exc), provider=type(trace.get_tracer_provider()).__name__)
        """,
        tmp_path,
    )

    assert {"error": "protocol 'http/protobuf' needs: pip install 'otel-progress[http]'",
            "provider": "ProxyTracerProvider"} == result.result


# --- the lifecycle and the walls ----------------------------------------------------------------
def test_import_connects_no_celery_signal_and_reset_undoes_configure(tmp_path: Path) -> None:
    """``import otel_progress`` connects no worker_* receiver; configure() connects one each,
    once, and reset() disconnects them."""
    result = run_script(
        """
        from celery import signals
        names = ("worker_process_init", "worker_process_shutdown", "worker_shutdown")
        def counts():
            return [len(getattr(signals, name).receivers) for name in names]
        before = counts()
        import otel_progress
        imported = counts()
        otel_progress.configure(traces_exporter="none", metrics=False)
        otel_progress.configure(traces_exporter="none", metrics=False)
        configured = counts()
        otel_progress.reset()
        report(before=before, imported=imported, configured=configured, reset=counts())
        """,
        tmp_path,
    )

    assert {"before": [0, 0, 0], "imported": [0, 0, 0], "configured": [1, 1, 1],
            "reset": [0, 0, 0]} == result.result


PACKAGE = Path(otel_progress.__file__).parent
SDK_ROOMS = {"_config", "_pipeline", "_lifecycle", "testing"}


def imported_modules(path: Path) -> set[str]:
    """Every module a source file imports, at any depth (lazy imports too)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_only_the_export_rooms_import_the_sdk() -> None:
    """opentelemetry.sdk is imported by _config, _pipeline, _lifecycle and testing only."""
    importers = {
        path.stem for path in PACKAGE.rglob("*.py")
        if any(name.startswith("opentelemetry.sdk") for name in imported_modules(path))
    }
    assert set() == importers - SDK_ROOMS


def test_the_export_rooms_import_each_other_without_a_cycle() -> None:
    """_lifecycle imports neither _config nor _pipeline; _pipeline does not import _config."""
    def imports(stem: str) -> set[str]:
        return {name.split(".")[1] for name in imported_modules(PACKAGE / f"{stem}.py")
                if name.startswith("otel_progress.")}

    assert (set(), set()) == (
        imports("_lifecycle") & {"_config", "_pipeline"}, imports("_pipeline") & {"_config"}
    )
