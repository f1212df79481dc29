"""configure(): settings resolution, and spans/metrics reaching a real OTLP receiver on loopback.

Anything that sets the global OTel providers runs in a child interpreter (``run_python``): the
API allows one provider per process, and the pytest process keeps its own for span capture.
"""

from __future__ import annotations

import inspect
import sys
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import SpanLimits

from otel_progress import _config
from otel_progress._attributes import (
    METRIC_PROGRESS_AGE,
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
            "OTEL_EXPORTER_OTLP_TIMEOUT": str(TIMEOUT_S),
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


def test_span_ended_by_an_exit_callback_is_still_exported(
    otlp_receiver: OtlpGrpcReceiver, tmp_path: Path
) -> None:
    """run_before_exit_flush() callbacks run before the final flush, whatever the atexit order."""
    run_script(
        """
        import atexit
        from otel_progress._config import run_before_exit_flush
        configure(endpoint=ENDPOINT, timeout=2)
        span = trace.get_tracer("test").start_span("open at exit")
        run_before_exit_flush(span.end)
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
        from otel_progress import _config
        memory = InMemorySpanExporter()
        app_provider = TracerProvider()
        app_provider.add_span_processor(SimpleSpanProcessor(memory))
        trace.set_tracer_provider(app_provider)
        configure(endpoint=ENDPOINT, timeout=2, metrics=False)
        with trace.get_tracer("test").start_as_current_span("app span"):
            pass
        force_flush(2000)
        report(names=[s.name for s in memory.get_finished_spans()],
               same_provider=trace.get_tracer_provider() is app_provider,
               owner=_config._state.tracer_owner)
        """,
        tmp_path, otlp_receiver.endpoint,
    )

    assert ({"names": ["app span"], "same_provider": True, "owner": "application"}, 0) == (
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


# --- the settings table (no network, no globals) ------------------------------------------------
# (setting, argument, (variable, raw value), value from the argument, from the variable, default)
RESOLUTION_CASES: list[tuple[str, object, tuple[str, str], object, object, object]] = [
    ("service_name", "arg-svc", ("OTEL_SERVICE_NAME", "env-svc"), "arg-svc", "env-svc", None),
    (
        "endpoint", "http://127.0.0.1:1111", ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:2222"),
        "http://127.0.0.1:1111", "http://127.0.0.1:2222", None,
    ),
    ("protocol", "grpc", ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"), "grpc", "http/protobuf",
     "grpc"),
    (
        "headers", {"Authorization": "Bearer a"},
        ("OTEL_EXPORTER_OTLP_HEADERS", "authorization=Bearer%20e"),
        {"authorization": "Bearer a"}, {"authorization": "Bearer e"}, None,
    ),
    ("insecure", False, ("OTEL_EXPORTER_OTLP_INSECURE", "true"), False, True, None),
    ("timeout", 2, ("OTEL_EXPORTER_OTLP_TIMEOUT", "7"), 2.0, 7.0, 10.0),
    (
        "traces_exporter", "console", ("OTEL_TRACES_EXPORTER", "none"),
        frozenset({"console"}), frozenset(), frozenset({"otlp"}),
    ),
    ("console", False, ("OTEL_TRACES_EXPORTER", "otlp,console"), False, True, False),
    ("metrics", True, ("OTEL_METRICS_EXPORTER", "none"), True, False, True),
    (
        "resource_attributes", {"deployment.environment": "arg"},
        ("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=env"),
        {"deployment.environment": "arg"}, {"deployment.environment": "env"}, {},
    ),
    ("max_queue_size", 100, ("OTEL_BSP_MAX_QUEUE_SIZE", "300"), 100, 300, 8192),
]
# Settings configure() takes no argument for: (setting, (variable, raw), from it, default).
ENVIRONMENT_ONLY_CASES: list[tuple[str, tuple[str, str], object, object]] = [
    ("max_export_batch_size", ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "64"), 64, 512),
    ("max_attribute_length", ("OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT", "100"), 100, 4096),
    ("max_events", ("OTEL_SPAN_EVENT_COUNT_LIMIT", "10"), 10, 1000),
    ("max_attributes", ("OTEL_ATTRIBUTE_COUNT_LIMIT", "16"), 16, 128),
]


def resolved(setting: str, arguments: Mapping[str, object], environ: Mapping[str, str]) -> Any:
    """One resolved value (the whole table is resolved, as configure() does)."""
    return getattr(_config._resolve(arguments, environ), setting)


@pytest.mark.parametrize(("setting", "argument", "env", "from_argument", "_env", "_default"),
                         RESOLUTION_CASES, ids=[case[0] for case in RESOLUTION_CASES])
def test_argument_beats_environment(
    setting: str, argument: object, env: tuple[str, str], from_argument: object, _env: object,
    _default: object,
) -> None:
    """A configure() argument wins over its OTEL_* variable."""
    assert from_argument == resolved(setting, {setting: argument}, dict([env]))


@pytest.mark.parametrize(
    ("setting", "env", "from_env", "_default"),
    [(case[0], case[2], case[4], case[5]) for case in RESOLUTION_CASES] + ENVIRONMENT_ONLY_CASES,
    ids=[case[0] for case in RESOLUTION_CASES] + [case[0] for case in ENVIRONMENT_ONLY_CASES],
)
def test_environment_beats_default(
    setting: str, env: tuple[str, str], from_env: object, _default: object
) -> None:
    """Without an argument, the OTEL_* variable wins over the default."""
    assert from_env == resolved(setting, {}, dict([env]))


@pytest.mark.parametrize(
    ("setting", "default"),
    [(case[0], case[5]) for case in RESOLUTION_CASES]
    + [(case[0], case[3]) for case in ENVIRONMENT_ONLY_CASES],
    ids=[case[0] for case in RESOLUTION_CASES] + [case[0] for case in ENVIRONMENT_ONLY_CASES],
)
def test_default_without_argument_or_environment(setting: str, default: object) -> None:
    """With neither argument nor variable, the documented default applies."""
    assert default == resolved(setting, {}, {})


def test_the_table_has_a_row_for_every_configure_keyword() -> None:
    """Every configure() keyword resolves through the one table (no setting bypasses it)."""
    keywords = set(inspect.signature(_config.configure).parameters)
    rows = {name for name, row in _config._SETTINGS.items() if row.check is not None}
    assert keywords == rows


def test_traces_specific_variable_beats_the_generic_one() -> None:
    """OTEL_EXPORTER_OTLP_TRACES_TIMEOUT wins over OTEL_EXPORTER_OTLP_TIMEOUT."""
    environ = {"OTEL_EXPORTER_OTLP_TRACES_TIMEOUT": "3", "OTEL_EXPORTER_OTLP_TIMEOUT": "9"}
    assert 3.0 == resolved("timeout", {}, environ)


def test_resource_attributes_argument_merges_over_the_environment() -> None:
    """resource_attributes= overrides OTEL_RESOURCE_ATTRIBUTES key by key, keeping the rest."""
    environ = {"OTEL_RESOURCE_ATTRIBUTES": "team=env,region=eu"}
    assert {"team": "arg", "region": "eu"} == resolved(
        "resource_attributes", {"resource_attributes": {"team": "arg"}}, environ
    )


def test_service_name_argument_beats_the_service_name_variable_in_the_resource() -> None:
    """service_name= is the resource's service.name even when OTEL_SERVICE_NAME is set."""
    environ = {"OTEL_SERVICE_NAME": "env-svc", "OTEL_RESOURCE_ATTRIBUTES": "service.name=attr"}
    resource = resolved("resource_attributes", {"service_name": "arg-svc"}, environ)
    assert "arg-svc" == resource["service.name"]


def test_service_name_variable_beats_resource_attributes_variable() -> None:
    """OTEL_SERVICE_NAME wins over service.name in OTEL_RESOURCE_ATTRIBUTES (as in the SDK)."""
    environ = {"OTEL_SERVICE_NAME": "env-svc", "OTEL_RESOURCE_ATTRIBUTES": "service.name=attr"}
    assert "env-svc" == resolved("resource_attributes", {}, environ)["service.name"]


def test_console_argument_adds_console_to_the_exporters() -> None:
    """console=True keeps OTLP and adds the console exporter."""
    assert frozenset({"otlp", "console"}) == resolved("traces_exporter", {"console": True}, {})


def test_metrics_default_off_when_traces_do_not_go_to_otlp() -> None:
    """Metrics follow traces by default: no OTLP traces, no OTLP metrics."""
    assert False is resolved("metrics", {"traces_exporter": "console"}, {})


def test_batch_size_is_clamped_to_the_queue_size() -> None:
    """A queue smaller than the default batch size still makes a valid batch processor."""
    assert 10 == resolved("max_export_batch_size", {"max_queue_size": 10}, {})


def test_span_limits_argument_replaces_the_default_caps() -> None:
    """span_limits= is used as given, instead of the caps from the table."""
    limits = SpanLimits(max_events=5)
    assert limits is _config._resolve({"span_limits": limits}, {}).limits()


def test_only_arguments_are_passed_to_the_exporter_for_variables_it_reads_itself() -> None:
    """Endpoint/headers from the environment are left to the SDK exporter's own rules."""
    environ = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:2222",
        "OTEL_EXPORTER_OTLP_HEADERS": "a=b",
    }
    settings = _config._resolve({"insecure": True, "timeout": 2}, environ)
    assert {"insecure": True, "timeout": 2.0} == settings.exporter_kwargs()


@pytest.mark.parametrize(
    ("arguments", "error"),
    [
        ({"endpoint": 4317}, TypeError),
        ({"timeout": "2"}, TypeError),
        ({"timeout": -1}, ValueError),
        ({"max_queue_size": 0}, ValueError),
        ({"headers": {"a": 1}}, TypeError),
        ({"protocol": "http/json"}, ValueError),
        ({"traces_exporter": "zipkin"}, ValueError),
        ({"span_limits": {"max_events": 5}}, TypeError),
    ],
    ids=["endpoint", "timeout-type", "timeout-value", "queue", "headers", "protocol",
         "exporter", "span_limits"],
)
def test_bad_argument_raises_a_clear_error_naming_it(
    arguments: dict[str, object], error: type[Exception]
) -> None:
    """Misuse at construction raises TypeError/ValueError that names the argument."""
    (name,) = arguments
    with pytest.raises(error, match=rf"^configure\({name}="):
        _config._resolve(arguments, {})


def test_bad_environment_value_raises_value_error_naming_the_variable() -> None:
    """A malformed OTEL_* value is reported with the variable's name, not silently ignored."""
    with pytest.raises(ValueError, match=r"^OTEL_BSP_MAX_QUEUE_SIZE='lots'"):
        _config._resolve({}, {"OTEL_BSP_MAX_QUEUE_SIZE": "lots"})


def test_unknown_exporter_in_the_environment_is_ignored() -> None:
    """OTEL_TRACES_EXPORTER=zipkin (the application's business) is skipped, not an error."""
    assert frozenset({"otlp"}) == resolved(
        "traces_exporter", {}, {"OTEL_TRACES_EXPORTER": "otlp,zipkin"}
    )


def test_missing_http_exporter_raises_import_error_naming_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """protocol="http/protobuf" without the exporter package says which extra to install."""
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.http", None)
    with pytest.raises(ImportError, match=r"otel-progress\[http\]"):
        _config._require_exporter("http/protobuf")
