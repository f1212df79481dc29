"""Export configuration: where otel_progress's spans and metrics go, set up by one call.

``configure()`` resolves each setting argument -> standard ``OTEL_*`` environment variable ->
default, from the one table ``_SETTINGS`` below (the README's table mirrors it). Settings that
the SDK exporters read themselves (endpoint, headers, insecure, and every variable configure()
does not take, such as certificates, compression, ``OTEL_BSP_SCHEDULE_DELAY`` and
``OTEL_METRIC_EXPORT_INTERVAL``) are passed on only when they came from an argument, so the
SDK's own per-signal rules (``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` used as-is, ``/v1/traces``
appended to ``OTEL_EXPORTER_OTLP_ENDPOINT`` for OTLP/HTTP, ...) keep applying.

Ownership: when the application (its own code or ``opentelemetry-instrument``) already set an
SDK provider, configure() uses it and adds nothing. Otherwise it sets one provider globally,
once (the OTel API refuses a second), and hangs its exporters on a swappable processor, so a
re-call, ``reset()`` and each prefork child can replace them.

Telemetry never breaks user code: wrong arguments or environment values raise a clear
``TypeError``/``ValueError`` from configure() itself; a failing or slow collector afterwards is
logged, counted and bounded in time, never raised.
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence, Sized
from dataclasses import dataclass, field
from typing import Any, Final, Generic, Literal, TypeVar
from urllib.parse import unquote

from opentelemetry import metrics, trace
from opentelemetry.context import Context
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    MetricExporter,
    MetricExportResult,
    MetricsData,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanLimits, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.util.re import parse_env_headers
from opentelemetry.util.types import AttributeValue

from otel_progress._attributes import (
    METRIC_SECTION_DURATION,
    METRIC_SPANS_DROPPED,
    SECTION_DURATION_BUCKETS,
)
from otel_progress._safety import internal_error

__all__ = ["configure", "dropped_spans", "force_flush", "reset", "shutdown"]

_logger = logging.getLogger("otel_progress")

_T = TypeVar("_T")
OtlpProtocol = Literal["grpc", "http/protobuf"]
_Owner = Literal["otel_progress", "application"]

DEFAULT_MAX_QUEUE_SIZE: Final = 8192
"""Spans the batch queue holds before it drops (the SDK's 2048 dropped spans in bursts)."""
DEFAULT_MAX_EXPORT_BATCH_SIZE: Final = 512
"""Spans per export request (the SDK's default); clamped to ``max_queue_size``."""
DEFAULT_TIMEOUT_S: Final = 10.0
"""Seconds one export request may take (the SDK's default); also bounds flush at exit."""
DEFAULT_MAX_ATTRIBUTE_LENGTH: Final = 4096
"""Characters kept of an attribute value; the SDK truncates longer ones."""
DEFAULT_MAX_EVENTS: Final = 1000
"""Events kept per span; the SDK drops later ones and counts them (``dropped_events_count``)."""
DEFAULT_MAX_ATTRIBUTES: Final = 128
"""Attributes kept per span, event and link; the SDK drops later ones and counts them."""
_DROP_WARNING_INTERVAL_S: Final = 60.0
"""At most one "queue full" warning per interval: a full queue drops thousands per second."""

_TRACES_EXPORTERS: Final = frozenset({"otlp", "console"})
_TRACER_SETTINGS: Final = (
    "console", "endpoint", "headers", "insecure", "max_queue_size", "protocol",
    "resource_attributes", "service_name", "span_limits", "traces_exporter",
)
"""Arguments that only shape a tracer provider configure() builds itself."""
_PROTOCOLS: Final = ("grpc", "http/protobuf")
_HTTP_EXTRA_HINT: Final = (
    "protocol='http/protobuf' needs the OTLP/HTTP exporter: pip install 'otel-progress[http]'"
)


# --- the settings table ------------------------------------------------------------------------
def _parse_str(raw: str) -> str:
    if not raw.strip():
        raise ValueError("must not be empty")
    return raw.strip()


def _parse_bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value not in ("true", "false"):
        raise ValueError("must be 'true' or 'false'")
    return value == "true"


def _parse_protocol(raw: str) -> str:
    value = raw.strip().lower()
    if value not in _PROTOCOLS:
        raise ValueError(f"must be one of {', '.join(_PROTOCOLS)} (http/json is not supported)")
    return value


def _parse_seconds(raw: str) -> float:
    # Seconds, as the installed Python OTLP exporters read these variables (the spec says ms).
    return _check_seconds(float(raw))


def _parse_positive_int(raw: str) -> int:
    return _check_positive_int(int(raw.strip()))


def _parse_traces_exporters(raw: str) -> frozenset[str]:
    # Lenient, unlike the argument: OTEL_TRACES_EXPORTER=zipkin belongs to an application that
    # sets up its own provider (opentelemetry-instrument), which configure() then leaves alone.
    names = {name.strip().lower() for name in raw.split(",") if name.strip()}
    unknown = names - _TRACES_EXPORTERS - {"none"}
    if unknown:
        _logger.warning(
            "OTEL_TRACES_EXPORTER=%s: otel_progress.configure() builds only otlp and console "
            "exporters; ignoring %s",
            raw,
            ", ".join(sorted(unknown)),
        )
    return frozenset(names & _TRACES_EXPORTERS)


def _parse_console(raw: str) -> bool:
    return "console" in {name.strip().lower() for name in raw.split(",")}


def _parse_metrics_exporter(raw: str) -> bool:
    # Only OTLP is ours to build; prometheus & co. come with the application's MeterProvider.
    return "otlp" in {name.strip().lower() for name in raw.split(",")}


def _parse_key_values(raw: str) -> dict[str, AttributeValue]:
    # The format of OTEL_RESOURCE_ATTRIBUTES, decoded as the SDK's OTELResourceDetector does.
    pairs: dict[str, AttributeValue] = {}
    for item in raw.split(","):
        key, sep, value = item.partition("=")
        if not item.strip():
            continue
        if not sep or not key.strip():
            raise ValueError(f"{item!r} is not key=value")
        pairs[key.strip()] = unquote(value.strip())
    return pairs


def _parse_headers(raw: str) -> dict[str, str]:
    return dict(parse_env_headers(raw, liberal=True))


def _check_str(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"must be a str, not {type(value).__name__}")
    return _parse_str(value)


def _check_bool(value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"must be a bool, not {type(value).__name__}")
    return value


def _check_protocol(value: object) -> str:
    return _parse_protocol(_check_str(value))


def _check_seconds(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"must be a number of seconds, not {type(value).__name__}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"must be a positive number of seconds, got {value!r}")
    return float(value)


def _check_positive_int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"must be an int, not {type(value).__name__}")
    if value <= 0:
        raise ValueError(f"must be positive, got {value!r}")
    return value


def _check_traces_exporter(value: object) -> frozenset[str]:
    names = _check_str(value)
    parsed = {name.strip().lower() for name in names.split(",") if name.strip()}
    unknown = parsed - _TRACES_EXPORTERS - {"none"}
    if unknown:
        raise ValueError(f"must name otlp, console or none, got {value!r}")
    return frozenset(parsed & _TRACES_EXPORTERS)


def _check_headers(value: object) -> dict[str, str]:
    if isinstance(value, str):
        return _parse_headers(value)
    if not isinstance(value, Mapping):
        raise TypeError(f"must be a mapping of str to str, not {type(value).__name__}")
    headers: dict[str, str] = {}
    for key, item in value.items():
        if not isinstance(key, str) or not isinstance(item, str):
            raise TypeError(f"must map str to str, got {key!r}: {item!r}")
        headers[key.lower()] = item  # gRPC metadata keys must be lower case
    return headers


def _check_attributes(value: object) -> dict[str, AttributeValue]:
    if not isinstance(value, Mapping):
        raise TypeError(f"must be a mapping, not {type(value).__name__}")
    attributes: dict[str, AttributeValue] = {}
    for key, item in value.items():
        if not isinstance(key, str):
            raise TypeError(f"keys must be str, got {key!r}")
        if not isinstance(item, (str, bool, int, float, tuple, list)):
            raise TypeError(f"{key!r}: {type(item).__name__} is not an attribute value")
        attributes[key] = item
    return attributes


def _check_span_limits(value: object) -> SpanLimits:
    if not isinstance(value, SpanLimits):
        raise TypeError(f"must be an SDK SpanLimits, not {type(value).__name__}")
    return value


def _argument_only(raw: str) -> SpanLimits:
    raise ValueError("has no environment variable")  # never called: the row lists none


@dataclass(frozen=True)
class _Setting(Generic[_T]):
    """One row of the table: the environment variables tried in order, then the default."""

    env: tuple[str, ...]
    parse: Callable[[str], _T]
    check: Callable[[object], _T] | None
    """Validates the configure() argument; None for settings configure() does not take."""
    default: _T
    doc: str
    sdk_reads_env: bool = False
    """The SDK exporter reads these variables itself: pass the value on only from an argument."""
    merge: bool = False
    """Mapping merged key by key: the argument's keys win over the environment's."""


_SETTINGS: Final[Mapping[str, _Setting[Any]]] = {
    "service_name": _Setting(
        ("OTEL_SERVICE_NAME",), _parse_str, _check_str, None,
        "service.name resource attribute; default: the SDK's unknown_service:<executable>",
    ),
    "endpoint": _Setting(
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"),
        _parse_str, _check_str, None,
        "base URL of the collector (signal paths are appended for OTLP/HTTP); "
        "default: the SDK's http://localhost:4317 (grpc) or http://localhost:4318 (http)",
        sdk_reads_env=True,
    ),
    "protocol": _Setting(
        ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"),
        _parse_protocol, _check_protocol, "grpc",
        "grpc (grpcio) or http/protobuf (the otel-progress[http] extra)",
    ),
    "headers": _Setting(
        ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "OTEL_EXPORTER_OTLP_HEADERS"),
        _parse_headers, _check_headers, None,
        "request headers / gRPC metadata, e.g. authorization=Bearer ...",
        sdk_reads_env=True,
    ),
    "insecure": _Setting(
        ("OTEL_EXPORTER_OTLP_TRACES_INSECURE", "OTEL_EXPORTER_OTLP_INSECURE"),
        _parse_bool, _check_bool, None,
        "gRPC without TLS; default: from the endpoint's scheme (http -> insecure)",
        sdk_reads_env=True,
    ),
    "timeout": _Setting(
        ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT"),
        _parse_seconds, _check_seconds, DEFAULT_TIMEOUT_S,
        "seconds per export request (as the Python exporters read it); bounds flush at exit",
    ),
    "traces_exporter": _Setting(
        ("OTEL_TRACES_EXPORTER",), _parse_traces_exporters, _check_traces_exporter,
        frozenset({"otlp"}),
        "comma-separated otlp, console, or none",
    ),
    "console": _Setting(
        ("OTEL_TRACES_EXPORTER",), _parse_console, _check_bool, False,
        "also print finished spans to stdout (ConsoleSpanExporter)",
    ),
    "metrics": _Setting(
        ("OTEL_METRICS_EXPORTER",), _parse_metrics_exporter, _check_bool, None,
        "export metrics over OTLP; default: on when configure() itself sends traces to OTLP",
    ),
    "resource_attributes": _Setting(
        ("OTEL_RESOURCE_ATTRIBUTES",), _parse_key_values, _check_attributes, {},
        "extra resource attributes, key=value,...", merge=True,
    ),
    "max_queue_size": _Setting(
        ("OTEL_BSP_MAX_QUEUE_SIZE",), _parse_positive_int, _check_positive_int,
        DEFAULT_MAX_QUEUE_SIZE,
        "spans buffered for export; beyond it spans are dropped and counted",
    ),
    "max_export_batch_size": _Setting(
        ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE",), _parse_positive_int, None,
        DEFAULT_MAX_EXPORT_BATCH_SIZE,
        "spans per export request, at most max_queue_size",
    ),
    "span_limits": _Setting(
        (), _argument_only, _check_span_limits, None,
        "an SDK SpanLimits replacing the three caps below",
    ),
    "max_attribute_length": _Setting(
        ("OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT",), _parse_positive_int, None,
        DEFAULT_MAX_ATTRIBUTE_LENGTH,
        "characters kept per attribute value",
    ),
    "max_events": _Setting(
        ("OTEL_SPAN_EVENT_COUNT_LIMIT",), _parse_positive_int, None, DEFAULT_MAX_EVENTS,
        "events kept per span",
    ),
    "max_attributes": _Setting(
        ("OTEL_ATTRIBUTE_COUNT_LIMIT",), _parse_positive_int, None, DEFAULT_MAX_ATTRIBUTES,
        "attributes kept per span, event and link",
    ),
}


@dataclass(frozen=True)
class _Settings:
    """The resolved table: what configure() builds from."""

    service_name: str | None
    endpoint: str | None
    protocol: str
    headers: Mapping[str, str] | None
    insecure: bool | None
    timeout: float
    traces_exporter: frozenset[str]
    console: bool
    metrics: bool
    resource_attributes: Mapping[str, AttributeValue]
    max_queue_size: int
    max_export_batch_size: int
    span_limits: SpanLimits | None
    max_attribute_length: int
    max_events: int
    max_attributes: int
    sources: Mapping[str, str] = field(compare=False)
    """Where each value came from: ``argument``, the variable's name, or ``default``."""

    @property
    def otlp(self) -> bool:
        return "otlp" in self.traces_exporter

    def exporter_kwargs(self) -> dict[str, Any]:
        """Arguments for an OTLP exporter: only those given as arguments, plus the timeout."""
        kwargs: dict[str, Any] = {"timeout": self.timeout}
        for name, setting in _SETTINGS.items():
            if setting.sdk_reads_env and self.sources[name] == "argument":
                kwargs[name] = getattr(self, name)
        return kwargs

    def pipeline_key(self) -> tuple[object, ...]:
        """What the exporters depend on: equal keys mean a re-call changes nothing."""
        return (
            self.endpoint, self.protocol, sorted((self.headers or {}).items()), self.insecure,
            self.timeout, self.traces_exporter, self.console, self.max_queue_size,
            self.max_export_batch_size, tuple(sorted(self.exporter_kwargs())),
        )

    def provider_key(self) -> tuple[object, ...]:
        """What the provider itself is built from, fixed once it is set globally."""
        return (sorted(self.resource_attributes.items()), _limits_key(self.limits()))

    def limits(self) -> SpanLimits:
        if self.span_limits is not None:
            return self.span_limits
        return SpanLimits(
            max_attributes=self.max_attributes,
            max_events=self.max_events,
            max_attribute_length=self.max_attribute_length,
        )

    def resource(self) -> Resource:
        """The SDK merges the OTEL_* resource variables under these again: the same values."""
        return Resource.create(dict(self.resource_attributes))


def _limits_key(limits: SpanLimits) -> tuple[object, ...]:
    return tuple(sorted(vars(limits).items()))


def _resolve(arguments: Mapping[str, object], environ: Mapping[str, str]) -> _Settings:
    """Resolve every row of ``_SETTINGS``: argument, then environment, then default."""
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for name, setting in _SETTINGS.items():
        argument = arguments.get(name)
        from_env: tuple[str, Any] | None = None
        for variable in setting.env:
            raw = environ.get(variable)
            if raw is not None and raw.strip():
                try:
                    from_env = (variable, setting.parse(raw))
                except (TypeError, ValueError) as exc:
                    raise ValueError(f"{variable}={raw!r}: {exc}") from None
                break
        if argument is not None:
            assert setting.check is not None, name
            try:
                value = setting.check(argument)
            except (TypeError, ValueError) as exc:
                raise type(exc)(f"configure({name}={argument!r}): {exc}") from None
            if setting.merge and from_env is not None:
                value = {**from_env[1], **value}
            values[name], sources[name] = value, "argument"
        elif from_env is not None:
            sources[name], values[name] = from_env
        else:
            values[name], sources[name] = setting.default, "default"
    _combine(arguments, values, sources)
    return _Settings(**values, sources=sources)


def _combine(
    arguments: Mapping[str, object], values: dict[str, Any], sources: Mapping[str, str]
) -> None:
    """Settings that depend on each other, after each row resolved on its own."""
    exporters = values["traces_exporter"]
    if sources["console"] == "argument":  # console=True/False adds/removes it from the list
        exporters = exporters | {"console"} if values["console"] else exporters - {"console"}
    values["traces_exporter"] = exporters
    values["console"] = "console" in exporters
    if values["metrics"] is None:
        values["metrics"] = "otlp" in exporters
    values["max_export_batch_size"] = min(values["max_export_batch_size"], values["max_queue_size"])
    # service.name: the service_name argument, the resource_attributes argument's, then
    # OTEL_SERVICE_NAME, then OTEL_RESOURCE_ATTRIBUTES's (the SDK's order for the last two).
    attributes = dict(values["resource_attributes"])
    given = arguments.get("resource_attributes")
    given_name = isinstance(given, Mapping) and SERVICE_NAME in given
    if values["service_name"] is not None and (
        sources["service_name"] == "argument" or not given_name
    ):
        attributes[SERVICE_NAME] = values["service_name"]
    values["resource_attributes"] = attributes


# --- SDK internals (opentelemetry-sdk 1.45), isolated here ---------------------------------------
def _batch_queue(processor: BatchSpanProcessor) -> tuple[Sized, int] | None:
    """The batch processor's queue and capacity, to see a drop coming.

    The SDK drops the oldest span silently when its queue is full: one log line (deduplicated),
    and its ``otel.sdk.processor.span.processed{error.type=queue_full}`` metric only counts when
    OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED is set. No public hook is left, so this reads the
    private deque: SDK >= 1.33 keeps it in ``_batch_processor``, older ones on the processor.
    tests/test_export_faults.py::test_batch_queue_probe_sees_the_installed_sdks_queue guards it.
    """
    for holder, queue_name, limit_name in (
        (getattr(processor, "_batch_processor", None), "_queue", "_max_queue_size"),
        (processor, "queue", "max_queue_size"),
    ):
        queue = getattr(holder, queue_name, None)
        limit = getattr(holder, limit_name, None)
        if isinstance(queue, Sized) and isinstance(limit, int):
            return queue, limit
    return None


def _preferences(exporter: MetricExporter) -> dict[str, Any]:
    """The temporality/aggregation the OTLP exporter derived from the environment.

    ``PeriodicExportingMetricReader`` reads these same base-class attributes off its exporter;
    our swappable exporter forwards them so the reader behaves as with the OTLP exporter.
    """
    return {
        "preferred_temporality": getattr(exporter, "_preferred_temporality", None),
        "preferred_aggregation": getattr(exporter, "_preferred_aggregation", None),
    }


# --- bounded waiting ----------------------------------------------------------------------------
class _Background:
    """``fn`` on a daemon thread, waited for a bounded time.

    The SDK's ``BatchSpanProcessor.force_flush``/``shutdown`` ignore their timeouts
    (opentelemetry-python#4568): with a dead collector they take one exporter timeout per batch.
    """

    def __init__(self, fn: Callable[[], object], name: str) -> None:
        self._fn = fn
        self._name = name
        self._ok = False
        self._finished = threading.Event()
        thread = threading.Thread(target=self._run, name=name, daemon=True)
        try:
            thread.start()
        except RuntimeError:  # interpreter shutting down: no new threads, run inline
            self._run()

    def _run(self) -> None:
        try:
            self._ok = self._fn() is not False
        except Exception as exc:  # the exporters log details; a traceback adds nothing here
            _logger.warning("otel_progress: %s failed: %r", self._name, exc)
        finally:
            self._finished.set()

    def wait(self, timeout_s: float) -> bool:
        """True when ``fn`` finished in time and did not report failure."""
        return self._finished.wait(max(timeout_s, 0.0)) and self._ok


# --- dropped spans ------------------------------------------------------------------------------
class _DropReporter:
    """Counts spans lost to a full queue: a metric, a total, and a rate-limited warning."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._count = 0
        self._last_warning = -math.inf
        self._counter: metrics.Counter | None = None

    @property
    def count(self) -> int:
        return self._count

    def reset(self) -> None:
        with self._lock:
            self._count = 0
            self._last_warning = -math.inf

    def record(self, max_queue_size: int) -> None:
        now = time.monotonic()
        with self._lock:
            self._count += 1
            total = self._count
            warn = now - self._last_warning >= _DROP_WARNING_INTERVAL_S
            if warn:
                self._last_warning = now
            if self._counter is None:
                # The API's proxy meter forwards to a MeterProvider set later.
                self._counter = metrics.get_meter("otel_progress").create_counter(
                    METRIC_SPANS_DROPPED, unit="{span}",
                    description="Spans dropped because the export queue was full",
                )
            counter = self._counter
        counter.add(1)
        if warn:
            _logger.warning(
                "otel_progress: the span export queue is full (max_queue_size=%d): spans are "
                "being dropped (%d so far; counted in %s). The collector is slow or down, or "
                "max_queue_size is too small. This warning repeats at most every %.0f s.",
                max_queue_size, total, METRIC_SPANS_DROPPED, _DROP_WARNING_INTERVAL_S,
            )


_DROPS: Final = _DropReporter()


# --- span export ---------------------------------------------------------------------------------
class _GuardedSpanExporter(SpanExporter):
    """The OTLP exporter behind a switch, so a shutdown can give up on a dead collector in time."""

    def __init__(self, inner: SpanExporter) -> None:
        self._inner: SpanExporter | None = inner
        self._deadline = math.inf
        self.lost = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        inner = self._inner
        result = SpanExportResult.FAILURE
        if inner is not None and time.monotonic() < self._deadline:
            try:
                result = inner.export(spans)
            except Exception:
                if self._deadline != -math.inf:
                    raise  # the batch processor logs it
                # else: abort() closed the channel under this export on purpose
        if result is not SpanExportResult.SUCCESS:
            self.lost += len(spans)
        return result

    def give_up_at(self, deadline: float) -> None:
        """Batches that start exporting after ``deadline`` (monotonic) are dropped; count anew."""
        self.lost = 0
        self._deadline = deadline

    def abort(self) -> None:
        """Close the connection now: an export in flight fails instead of waiting its timeout."""
        self._deadline = -math.inf
        inner, self._inner = self._inner, None
        if inner is not None:
            inner.shutdown()

    def detach(self) -> None:
        """Forget the exporter without touching it: in a forked child it is the parent's."""
        self._deadline = -math.inf
        self._inner = None

    def shutdown(self) -> None:
        inner, self._inner = self._inner, None
        if inner is not None:
            inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        inner = self._inner
        return True if inner is None else inner.force_flush(timeout_millis)


class _SpanPipeline:
    """One set of exporters built from settings: OTLP through a batch queue, console directly."""

    def __init__(self, settings: _Settings) -> None:
        self.timeout_s = settings.timeout
        self._guard: _GuardedSpanExporter | None = None
        self._batch: BatchSpanProcessor | None = None
        self._queue: tuple[Sized, int] | None = None
        self._console: SimpleSpanProcessor | None = None
        if settings.otlp:
            self._guard = _GuardedSpanExporter(_otlp_span_exporter(settings))
            self._batch = BatchSpanProcessor(
                self._guard,
                max_queue_size=settings.max_queue_size,
                max_export_batch_size=settings.max_export_batch_size,
            )
            self._queue = _batch_queue(self._batch)
        if settings.console:
            self._console = SimpleSpanProcessor(ConsoleSpanExporter())

    def on_end(self, span: ReadableSpan) -> None:
        batch = self._batch
        if batch is not None:
            queue = self._queue
            if (
                queue is not None
                and len(queue[0]) >= queue[1]
                and span.context is not None
                and span.context.trace_flags.sampled
            ):
                _DROPS.record(queue[1])
            batch.on_end(span)
        if self._console is not None:
            self._console.on_end(span)

    def force_flush(self, timeout_s: float) -> bool:
        batch = self._batch
        if batch is None:
            return True
        return _Background(batch.force_flush, "otel_progress-flush").wait(timeout_s)

    def shutdown(self, timeout_s: float) -> None:
        """Export what is queued, giving up after ``timeout_s`` (plus one second to abort)."""
        if self._console is not None:
            self._console.shutdown()
        batch, guard = self._batch, self._guard
        if batch is None or guard is None:
            return
        guard.give_up_at(time.monotonic() + timeout_s)
        done = _Background(batch.shutdown, "otel_progress-shutdown")
        if not done.wait(timeout_s):
            guard.abort()
            done.wait(1.0)
        if guard.lost:
            _logger.warning(
                "otel_progress: %d span(s) could not be exported at shutdown (export timeout "
                "%.1f s)",
                guard.lost, timeout_s,
            )

    def abandon(self) -> None:
        """Stop the parent's pipeline in a forked child without using the parent's connection."""
        if self._guard is not None:
            self._guard.detach()
        if self._batch is not None:
            _Background(self._batch.shutdown, "otel_progress-abandon").wait(1.0)


class _SwappableSpanProcessor(SpanProcessor):
    """The one processor configure() adds to its provider; the pipeline inside is replaceable."""

    def __init__(self) -> None:
        self._pipeline: _SpanPipeline | None = None

    @property
    def pipeline(self) -> _SpanPipeline | None:
        return self._pipeline

    def swap(self, pipeline: _SpanPipeline | None) -> _SpanPipeline | None:
        old, self._pipeline = self._pipeline, pipeline
        return old

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        pass  # the batch and console processors do nothing on start

    def on_end(self, span: ReadableSpan) -> None:
        pipeline = self._pipeline
        if pipeline is not None:
            try:
                pipeline.on_end(span)
            except Exception as exc:  # runs inside span.end(): never into the caller
                internal_error("otel_progress._config.span_export", exc)

    def shutdown(self) -> None:
        pipeline = self.swap(None)
        if pipeline is not None:
            pipeline.shutdown(pipeline.timeout_s)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        pipeline = self._pipeline
        return True if pipeline is None else pipeline.force_flush(timeout_millis / 1000)


def _require_exporter(protocol: str) -> None:
    """Fail at configure() time, with the extra to install, rather than at the first export."""
    if protocol == "http/protobuf":
        try:
            import opentelemetry.exporter.otlp.proto.http  # noqa: F401
        except ImportError as exc:
            raise ImportError(_HTTP_EXTRA_HINT) from exc


def _signal_url(endpoint: str, path: str) -> str:
    return f"{endpoint.rstrip('/')}/{path}"


def _otlp_span_exporter(settings: _Settings) -> SpanExporter:
    kwargs = settings.exporter_kwargs()
    if settings.protocol == "http/protobuf":
        _require_exporter(settings.protocol)
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter as HttpSpanExporter,
        )

        kwargs.pop("insecure", None)  # the URL's scheme decides for HTTP
        if "endpoint" in kwargs:
            kwargs["endpoint"] = _signal_url(kwargs["endpoint"], "v1/traces")
        return HttpSpanExporter(**kwargs)
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter(**kwargs)


# --- metric export -------------------------------------------------------------------------------
def _otlp_metric_exporter(settings: _Settings) -> MetricExporter:
    kwargs = settings.exporter_kwargs()
    if settings.protocol == "http/protobuf":
        _require_exporter(settings.protocol)
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
            OTLPMetricExporter as HttpMetricExporter,
        )

        kwargs.pop("insecure", None)
        if "endpoint" in kwargs:
            kwargs["endpoint"] = _signal_url(kwargs["endpoint"], "v1/metrics")
        return HttpMetricExporter(**kwargs)
    from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

    return OTLPMetricExporter(**kwargs)


class _SwappableMetricExporter(MetricExporter):
    """The exporter of configure()'s metric reader; the OTLP exporter inside is replaceable."""

    def __init__(self, inner: MetricExporter, timeout_s: float) -> None:
        super().__init__(**_preferences(inner))
        self._inner: MetricExporter | None = inner
        self.timeout_s = timeout_s

    @property
    def inner(self) -> MetricExporter | None:
        return self._inner

    def swap(self, inner: MetricExporter | None, timeout_s: float) -> MetricExporter | None:
        old, self._inner = self._inner, inner
        self.timeout_s = timeout_s
        return old

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        inner = self._inner
        if inner is None:
            return MetricExportResult.SUCCESS
        return inner.export(metrics_data, timeout_millis=timeout_millis, **kwargs)

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        inner = self._inner
        return True if inner is None else inner.force_flush(timeout_millis)

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        inner, self._inner = self._inner, None
        if inner is not None:
            inner.shutdown(timeout_millis=timeout_millis)


# --- state ---------------------------------------------------------------------------------------
@dataclass
class _Owned:
    """What configure() created and set globally; it outlives reset() as the global does."""

    tracer_provider: TracerProvider | None = None
    span_processor: _SwappableSpanProcessor | None = None
    provider_key: tuple[object, ...] | None = None
    meter_provider: MeterProvider | None = None
    metric_exporter: _SwappableMetricExporter | None = None


@dataclass
class _State:
    """What the last configure() applied; reset() starts a fresh one."""

    settings: _Settings | None = None
    tracer_owner: _Owner | None = None
    meter_owner: _Owner | None = None
    warned_fixed: bool = False


_LOCK: Final = threading.RLock()
_OWNED: Final = _Owned()
_state = _State()
_hooks_installed = False


def _is_api_default(provider: object) -> bool:
    """Whether ``provider`` is the API's own proxy/no-op, i.e. nobody configured an SDK yet."""
    return type(provider).__module__.split(".")[:2] in (
        ["opentelemetry", "trace"], ["opentelemetry", "metrics"],
    )


def _claim_tracer_provider(settings: _Settings) -> _Owner:
    if _state.tracer_owner is not None:
        return _state.tracer_owner
    current = trace.get_tracer_provider()
    if _OWNED.tracer_provider is not None and current is _OWNED.tracer_provider:
        return "otel_progress"
    if not _is_api_default(current):
        return "application"
    provider = TracerProvider(
        resource=settings.resource(),
        span_limits=settings.limits(),
        shutdown_on_exit=False,  # our atexit hook flushes, bounded by the export timeout
    )
    processor = _SwappableSpanProcessor()
    provider.add_span_processor(processor)
    trace.set_tracer_provider(provider)
    if trace.get_tracer_provider() is not provider:  # another thread set one first
        return "application"
    _OWNED.tracer_provider, _OWNED.span_processor = provider, processor
    _OWNED.provider_key = settings.provider_key()
    return "otel_progress"


def _claim_meter_provider(settings: _Settings) -> _Owner:
    if _state.meter_owner is not None:
        return _state.meter_owner
    current = metrics.get_meter_provider()
    if _OWNED.meter_provider is not None and current is _OWNED.meter_provider:
        return "otel_progress"
    if not _is_api_default(current):
        return "application"
    exporter = _SwappableMetricExporter(_otlp_metric_exporter(settings), settings.timeout)
    provider = MeterProvider(
        metric_readers=[
            PeriodicExportingMetricReader(exporter, export_timeout_millis=settings.timeout * 1000)
        ],
        resource=settings.resource(),
        views=[
            View(
                instrument_name=METRIC_SECTION_DURATION,
                aggregation=ExplicitBucketHistogramAggregation(boundaries=SECTION_DURATION_BUCKETS),
            )
        ],
        shutdown_on_exit=False,
    )
    metrics.set_meter_provider(provider)
    if metrics.get_meter_provider() is not provider:
        exporter.shutdown()
        return "application"
    _OWNED.meter_provider, _OWNED.metric_exporter = provider, exporter
    return "otel_progress"


def _apply_traces(settings: _Settings, previous: _Settings | None) -> None:
    owner = _state.tracer_owner = _claim_tracer_provider(settings)
    if owner == "application":
        given = [name for name in _TRACER_SETTINGS if settings.sources[name] == "argument"]
        if given:
            _logger.warning(
                "otel_progress.configure(): the application already set a TracerProvider; "
                "otel_progress uses it as is and adds no exporter (ignoring %s)",
                ", ".join(sorted(given)),
            )
        return
    processor = _OWNED.span_processor
    assert processor is not None
    if settings.provider_key() != _OWNED.provider_key and not _state.warned_fixed:
        _state.warned_fixed = True
        _logger.warning(
            "otel_progress.configure(): service_name, resource_attributes and span_limits are "
            "fixed by the first configure() in a process; keeping the first ones"
        )
    unchanged = previous is not None and previous.pipeline_key() == settings.pipeline_key()
    if unchanged and (processor.pipeline is not None or not (settings.otlp or settings.console)):
        return
    pipeline = _SpanPipeline(settings) if settings.otlp or settings.console else None
    old = processor.swap(pipeline)
    if old is not None:
        old.shutdown(old.timeout_s)


def _apply_metrics(settings: _Settings, previous: _Settings | None) -> None:
    # By default metrics follow configure()'s own OTLP traces: an application that set up
    # tracing itself gets no MeterProvider it did not ask for.
    follows_app = settings.sources["metrics"] == "default" and _state.tracer_owner == "application"
    if not settings.metrics or follows_app:
        if _state.meter_owner == "otel_progress" and _OWNED.metric_exporter is not None:
            _retire_metric_exporter(_OWNED.metric_exporter.swap(None, settings.timeout))
        return
    claimed_now = _state.meter_owner is None and _OWNED.meter_provider is None
    owner = _state.meter_owner = _claim_meter_provider(settings)
    exporter = _OWNED.metric_exporter
    if owner == "application" or exporter is None or claimed_now:
        return
    unchanged = previous is not None and previous.pipeline_key() == settings.pipeline_key()
    if unchanged and previous is not None and previous.metrics and exporter.inner is not None:
        return
    _retire_metric_exporter(exporter.swap(_otlp_metric_exporter(settings), settings.timeout))


def _retire_metric_exporter(exporter: MetricExporter | None) -> None:
    if exporter is not None:
        _Background(exporter.shutdown, "otel_progress-metrics-shutdown").wait(1.0)


def _flush_owned_metrics(timeout_s: float) -> _Background | None:
    provider = _OWNED.meter_provider
    if provider is None:
        return None
    return _Background(
        lambda: provider.force_flush(timeout_millis=timeout_s * 1000), "otel_progress-metrics"
    )


def _install_hooks() -> None:
    """atexit, and Celery's prefork signals when Celery is importable; once per process."""
    global _hooks_installed
    if _hooks_installed:
        return
    _hooks_installed = True
    atexit.register(_at_exit)
    try:
        from celery import signals
    except ImportError:
        return
    # weak=False: a strong reference, so the handlers stay connected whatever happens to this
    # module's globals during interpreter or worker teardown.
    signals.worker_process_init.connect(_on_worker_process_init, weak=False)
    signals.worker_process_shutdown.connect(_on_worker_process_shutdown, weak=False)


_before_exit_flush: list[Callable[[], object]] = []


def run_before_exit_flush(callback: Callable[[], object]) -> None:
    """Have ``callback`` run at exit just before the final flush (e.g. to end open run spans).

    atexit runs handlers last-registered-first, so a handler registered before configure()
    would otherwise run after the exporters are gone.
    """
    if callback not in _before_exit_flush:
        _before_exit_flush.append(callback)


def _at_exit() -> None:
    for callback in _before_exit_flush:
        try:
            callback()
        except Exception:
            _logger.exception("otel_progress: an exit callback failed")
    try:
        if _state.tracer_owner == "otel_progress" or _state.meter_owner == "otel_progress":
            shutdown()
    except Exception:
        _logger.exception("otel_progress: flushing telemetry at exit failed")


def _on_worker_process_init(**_: object) -> None:
    """In a new prefork child, rebuild the exporters configure() owns: the parent's are not ours."""
    try:
        with _LOCK:
            settings = _state.settings
            if settings is None:
                return
            processor = _OWNED.span_processor
            if _state.tracer_owner == "otel_progress" and processor is not None:
                fresh = _SpanPipeline(settings) if settings.otlp or settings.console else None
                inherited = processor.swap(fresh)
                if inherited is not None:
                    inherited.abandon()
            exporter = _OWNED.metric_exporter
            if _state.meter_owner == "otel_progress" and exporter is not None and settings.metrics:
                exporter.swap(_otlp_metric_exporter(settings), settings.timeout)
    except Exception:
        _logger.exception("otel_progress: rebuilding the exporters in a worker process failed")


def _on_worker_process_shutdown(**_: object) -> None:
    """A prefork child exits with os._exit(): atexit never runs, so flush here."""
    try:
        if _state.tracer_owner == "otel_progress" or _state.meter_owner == "otel_progress":
            shutdown()
        elif _state.settings is not None:
            force_flush(int(_state.settings.timeout * 1000))
    except Exception:
        _logger.exception("otel_progress: flushing telemetry in a worker process failed")


# --- public API ----------------------------------------------------------------------------------
def configure(
    *,
    service_name: str | None = None,
    endpoint: str | None = None,
    protocol: OtlpProtocol | None = None,
    headers: Mapping[str, str] | str | None = None,
    insecure: bool | None = None,
    console: bool | None = None,
    timeout: float | None = None,
    traces_exporter: str | None = None,
    resource_attributes: Mapping[str, AttributeValue] | None = None,
    metrics: bool | None = None,
    max_queue_size: int | None = None,
    span_limits: SpanLimits | None = None,
) -> None:
    """Send otel_progress's spans and metrics to an OTLP collector (or the console).

    One call, so a worker needs no OpenTelemetry boilerplate. Each setting comes from its
    argument, else its standard ``OTEL_*`` variable, else the default (the table in
    ``otel_progress._config``). Calling it again with the same settings changes nothing; with
    other settings it replaces the exporters. If the application already set an SDK
    TracerProvider/MeterProvider, configure() uses it as is and adds nothing. Spans are batched
    (queue of ``max_queue_size``): when the collector cannot keep up they are dropped and
    counted, and the task never waits. Exit, and each prefork child's end, flush within
    ``timeout`` seconds. Wrong arguments or ``OTEL_*`` values raise ``TypeError``/``ValueError``.

    Example::

        otel_progress.configure(service_name="billing-worker", endpoint="http://collector:4317")
    """
    arguments: dict[str, object] = {
        "service_name": service_name, "endpoint": endpoint, "protocol": protocol,
        "headers": headers, "insecure": insecure, "console": console, "timeout": timeout,
        "traces_exporter": traces_exporter, "resource_attributes": resource_attributes,
        "metrics": metrics, "max_queue_size": max_queue_size, "span_limits": span_limits,
    }
    settings = _resolve(arguments, os.environ)
    if settings.otlp or settings.metrics:
        _require_exporter(settings.protocol)
    with _LOCK:
        previous = _state.settings
        _apply_traces(settings, previous)
        _apply_metrics(settings, previous)
        _state.settings = settings
        _install_hooks()


def force_flush(timeout_millis: int = 30000) -> bool:
    """Export buffered spans and metrics now, waiting at most ``timeout_millis``.

    Works on whichever SDK providers are set globally (configure()'s or the application's).
    Returns False when something was still pending at the deadline; it keeps exporting in the
    background.
    """
    deadline = time.monotonic() + timeout_millis / 1000
    ok = True
    for provider in (trace.get_tracer_provider(), metrics.get_meter_provider()):
        ok = _flush_provider(provider, deadline - time.monotonic()) and ok
    return ok


def _flush_provider(provider: object, timeout_s: float) -> bool:
    flush = getattr(provider, "force_flush", None)
    if not callable(flush) or _is_api_default(provider):
        return True
    timeout_ms = max(timeout_s, 0.0) * 1000
    return _Background(lambda: flush(timeout_ms), "otel_progress-flush").wait(timeout_s)


def shutdown() -> None:
    """Flush and close the exporters configure() created, bounded by the export timeout.

    The providers stay set (the API allows one per process) but export nothing until configure()
    is called again. An application-owned provider is only flushed: its owner shuts it down.
    Runs by itself at exit and, in a Celery prefork child, at ``worker_process_shutdown``.
    """
    with _LOCK:
        settings, _state.settings = _state.settings, None
        timeout_s = settings.timeout if settings is not None else DEFAULT_TIMEOUT_S
        deadline = time.monotonic() + timeout_s
        exporter = _OWNED.metric_exporter
        metrics_flush = None
        if _state.meter_owner == "otel_progress" and exporter is not None:
            # In parallel with the spans, so exit waits one timeout, not two.
            metrics_flush = _flush_owned_metrics(timeout_s)
        processor = _OWNED.span_processor
        if _state.tracer_owner == "otel_progress" and processor is not None:
            pipeline = processor.swap(None)
            if pipeline is not None:
                pipeline.shutdown(timeout_s)
        elif _state.tracer_owner == "application":
            _flush_provider(trace.get_tracer_provider(), timeout_s)
        if _state.meter_owner == "application":
            _flush_provider(metrics.get_meter_provider(), deadline - time.monotonic())
        if metrics_flush is not None and exporter is not None:
            if not metrics_flush.wait(deadline - time.monotonic()):
                _logger.warning(
                    "otel_progress: metrics were not exported within %.1f s", timeout_s
                )
            _retire_metric_exporter(exporter.swap(None, timeout_s))


def reset() -> None:
    """Undo configure() for tests: close its exporters and forget its settings and counts.

    A provider configure() set stays the global one (without exporters) and is reused by the
    next configure(); whether the application owns a provider is detected afresh.
    """
    global _state
    shutdown()
    with _LOCK:
        _state = _State()
        _DROPS.reset()


def dropped_spans() -> int:
    """Spans dropped so far in this process because the export queue was full."""
    return _DROPS.count
