"""Export configuration: configure() passes the SDK only the arguments given and otel_progress's
own defaults where their variable is unset; the SDK reads every other ``OTEL_*`` variable itself,
as opentelemetry-distro and logfire leave it. configure() reads only what picks the exporters
(``OTEL_TRACES_EXPORTER``, ``OTEL_METRICS_EXPORTER``, the protocols) and ``OTEL_BSP_MAX_QUEUE_SIZE``
(the exact drop count needs the number)."""

from __future__ import annotations

import importlib
import math
import os
import threading
import time
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any, Final, Literal

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.util.re import parse_env_headers
from opentelemetry.util.types import AttributeValue

from otel_progress import _lifecycle, _live, _metrics, _pipeline
from otel_progress._attributes import ERROR_TYPE as ATTR_ERROR_TYPE
from otel_progress._attributes import (
    METRIC_SECTION_DURATION,
    POST_MORTEM,
    SECTION_DEPTH,
    SECTION_DURATION_BUCKETS,
    SECTION_NAME,
    SECTION_STATE,
    TASK_NAME,
)
from otel_progress._redact import set_redactor
from otel_progress._safety import in_background, logger, safe_str
from otel_progress._version import __version__

OtlpProtocol = Literal["grpc", "http/protobuf"]
DEFAULT_MAX_QUEUE_SIZE: Final = 8192
"""Spans the batch queue holds before it drops (the SDK's 2048 dropped spans in bursts)."""
_PROTOCOLS: Final = ("grpc", "http/protobuf")
_EXPORTERS: Final = frozenset({"otlp", "console"})
_TYPES: Final[dict[str, tuple[type, ...]]] = {
    "service_name": (str,), "endpoint": (str,), "protocol": (str,), "headers": (str, Mapping),
    "insecure": (bool,), "console": (bool,), "timeout": (int, float), "traces_exporter": (str,),
    "resource_attributes": (Mapping,), "metrics": (bool,), "max_queue_size": (int,),
    "span_limits": (SpanLimits,), "live": (bool,), "live_interval": (int, float),
}
_RULES: Final[dict[str, tuple[Callable[[Any], bool], str]]] = {
    "protocol": (_PROTOCOLS.__contains__, "must be grpc or http/protobuf (not http/json)"),
    "traces_exporter": (lambda v: set() < _names(v) <= _EXPORTERS | {"none"},
                        "must name otlp, console or none"),
    "timeout": (lambda v: math.isfinite(v) and v > 0, "must be a positive number of seconds"),
    "max_queue_size": (lambda v: v > 0, "must be positive"),
    "live_interval": (lambda v: math.isfinite(v) and v > 0, "must be a positive number of seconds"),
}
_NOT_EXPORT: Final = frozenset({"metrics", "live", "live_interval"})
"""Arguments that mean something when the application owns the provider too."""
_LOCK = threading.RLock()
# What configure() set globally: it outlives reset() as the globals do.
_SWITCH: Final = _pipeline.Switch()
_provider: TracerProvider | None = None
_meter_provider: MeterProvider | None = None


def _check(name: str, value: object) -> Any:
    """The argument, or a TypeError/ValueError naming it."""
    types = _TYPES[name]
    item = str if name == "headers" else (str, bool, int, float, tuple, list)
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in types) or (
            isinstance(value, Mapping) and not all(
                isinstance(k, str) and isinstance(v, item) for k, v in value.items())):
        of = "str" if name == "headers" else "attribute values"
        kinds = " or ".join(t.__name__ for t in types).replace("Mapping", f"mapping of str to {of}")
        raise TypeError(f"configure({name}={value!r}): must be {kinds}")
    valid, why = _RULES.get(name, (lambda v: not isinstance(v, str) or bool(v.strip()),
                                   "must not be empty"))
    if not valid(value):
        raise ValueError(f"configure({name}={value!r}): {why}")
    return value


def _names(raw: str) -> set[str]:
    return {name.strip().lower() for name in raw.split(",") if name.strip()}


def _resolve(given: dict[str, Any]) -> dict[str, Any]:
    """The validated arguments plus what configure() decides: equal settings change nothing."""
    s = {name: _check(name, value) for name, value in given.items() if value is not None}
    env = os.environ
    names = _names(s.get("traces_exporter") or env.get("OTEL_TRACES_EXPORTER") or "otlp")
    if not names <= _EXPORTERS | {"none"}:  # zipkin & co. come with the application's SDK
        logger.warning("OTEL_TRACES_EXPORTER=%s: configure() builds only otlp and console "
                       "exporters; ignoring the rest", env["OTEL_TRACES_EXPORTER"])
    if "console" in s:
        names = names | {"console"} if s["console"] else names - {"console"}
    s["exporters"] = frozenset(names & _EXPORTERS)
    if "metrics" not in s and env.get("OTEL_METRICS_EXPORTER", "").strip():
        s["metrics"] = "otlp" in _names(env["OTEL_METRICS_EXPORTER"])
    raw = env.get("OTEL_BSP_MAX_QUEUE_SIZE", "").strip()
    if "max_queue_size" not in s and raw and not (raw.isdigit() and int(raw) > 0):
        raise ValueError(f"OTEL_BSP_MAX_QUEUE_SIZE={raw!r}: must be a positive integer")
    s.setdefault("max_queue_size", int(raw) if raw else DEFAULT_MAX_QUEUE_SIZE)
    if isinstance(s.get("headers"), str):
        s["headers"] = parse_env_headers(s["headers"], liberal=True)
    if "headers" in s:  # gRPC metadata keys are lower case
        s["headers"] = {key.lower(): value for key, value in s["headers"].items()}
    s["protocols"] = [s.get("protocol") or _protocol(signal) for signal in ("TRACES", "METRICS")]
    s["resource"] = {**s.get("resource_attributes", {}),
                     **({SERVICE_NAME: s["service_name"]} if "service_name" in s else {})}
    live, interval = _live.from_environment() if not {"live", "live_interval"} <= set(s) \
        else (False, _live.DEFAULT_INTERVAL)
    s.setdefault("live", live)
    s.setdefault("live_interval", float(interval))
    s["environ"] = sorted((k, v) for k, v in env.items() if k.startswith("OTEL_"))
    return s


def _protocol(signal: str) -> str:
    """The signal's own variable, else the generic one, else grpc."""
    names = (f"OTEL_EXPORTER_OTLP_{signal}_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")
    variable = next((name for name in names if os.environ.get(name, "").strip()), None)
    raw = os.environ[variable].strip().lower() if variable else "grpc"
    if raw not in _PROTOCOLS:
        raise ValueError(f"{variable}={raw!r}: must be grpc or http/protobuf")
    return raw


def _exporter(s: dict[str, Any], signal: Literal["traces", "metrics"]) -> Any:
    """The SDK's OTLP exporter of ``signal``, given only the arguments the caller gave."""
    kwargs = {key: s[key] for key in ("endpoint", "headers", "insecure", "timeout") if key in s}
    http = s["protocols"][signal == "metrics"] == "http/protobuf"
    if http:
        kwargs.pop("insecure", None)  # the URL's scheme decides for HTTP
        if "endpoint" in kwargs:
            kwargs["endpoint"] = f"{kwargs['endpoint'].rstrip('/')}/v1/{signal}"
    try:
        module = importlib.import_module(f"opentelemetry.exporter.otlp.proto."
                                         f"{'http' if http else 'grpc'}.{signal[:-1]}_exporter")
    except ImportError as exc:
        raise ImportError("protocol 'http/protobuf' needs: pip install 'otel-progress[http]'") \
            from exc
    return getattr(module, "OTLPSpanExporter" if signal == "traces" else "OTLPMetricExporter")(
        **kwargs)


def _owners() -> list[str | None]:
    """Who owns the global tracer and meter providers: us, the application, or nobody yet."""
    owners: list[str | None] = []
    for current, ours in ((trace.get_tracer_provider(), _provider),
                          (metrics.get_meter_provider(), _meter_provider)):
        api = type(current).__module__.startswith(("opentelemetry.trace", "opentelemetry.metrics"))
        owners.append("otel_progress" if current is ours else None if api else "application")
    return owners


def _build(s: dict[str, Any]) -> _pipeline.Exporters:
    """A generation of exporters for what the application left to configure()."""
    tracer, meter = _owners()
    names = s["exporters"] if tracer != "application" else frozenset()
    wanted = s.get("metrics", "otlp" in names)  # by default metrics follow our OTLP traces
    queue = s["max_queue_size"]
    return _pipeline.Exporters(
        _pipeline.Redacting(_exporter(s, "traces")) if "otlp" in names else None,
        _pipeline.Redacting(ConsoleSpanExporter()) if "console" in names else None,
        _exporter(s, "metrics") if wanted and meter != "application" else None, queue,
        None if "OTEL_BSP_MAX_EXPORT_BATCH_SIZE" in os.environ or queue >= 512 else queue, s,
        _live.LIVE_BATCH_DELAY_MS if s["live"] and "OTEL_BSP_SCHEDULE_DELAY" not in os.environ
        else None,
    )


def _apply(s: dict[str, Any], given: set[str]) -> None:
    """Set the providers nobody set (once per process), then swap in new exporters."""
    global _provider, _meter_provider
    tracer, meter = _owners()
    if tracer == "application" and set(given) & set(_TYPES) - _NOT_EXPORT:
        logger.warning("otel_progress.configure(): the application already set a "
                       "TracerProvider; otel_progress uses it as is and adds no exporter")
    if _SWITCH.current is not None and _SWITCH.current.settings == s:
        return
    new = _build(s)
    if tracer is None:
        env = os.environ  # a variable set is the SDK's to read (None), else our default
        _provider = TracerProvider(
            resource=Resource.create(s["resource"]), shutdown_on_exit=False,
            span_limits=s.get("span_limits") or SpanLimits(
                max_attribute_length=None if "OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT" in env else 4096,
                max_events=None if "OTEL_SPAN_EVENT_COUNT_LIMIT" in env else 1000))
        _provider.add_span_processor(_SWITCH)
        trace.set_tracer_provider(_provider)  # not ours if another thread's came first
    if meter is None and new.metrics is not None:
        _meter_provider = MeterProvider(
            metric_readers=[PeriodicExportingMetricReader(
                _pipeline.MetricSwitch(_SWITCH, new.metrics),
                export_timeout_millis=s["timeout"] * 1000 if "timeout" in s else None)],
            resource=Resource.create(s["resource"]), shutdown_on_exit=False,
            views=[View(instrument_name=METRIC_SECTION_DURATION,  # the API's advisory is 1.30+
                        aggregation=ExplicitBucketHistogramAggregation(SECTION_DURATION_BUCKETS))])
        metrics.set_meter_provider(_meter_provider)
    _SWITCH.swap(new)


def _after_fork_in_child() -> None:
    global _LOCK
    _LOCK = threading.RLock()  # another thread may have held it at fork()
    _metrics.LOSSES.reset()
    if _SWITCH.current is not None:
        _SWITCH.current.after_fork()


def _rebuild_in_worker_process() -> None:
    """A new prefork child rebuilds the exporters configure() owns: the parent's are not ours."""
    with _LOCK:
        if (current := _SWITCH.current) is not None:
            current.abandon()
            _SWITCH.current = _build(current.settings)


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
    redact: Callable[[str], str] | bool | None = None,
    live: bool | None = None,
    live_interval: float | None = None,
) -> None:
    """Send otel_progress's spans and metrics to an OTLP collector (or the console).

    One call, no OpenTelemetry boilerplate: the arguments given reach the SDK, which reads every
    other ``OTEL_*`` variable itself. A re-call replaces the exporters; a provider the
    application set is used as is. A slow collector costs dropped, counted spans, never a
    waiting task; a shutdown takes at most ``timeout`` s (default 10). Bad arguments raise
    ``TypeError``/``ValueError``: ``configure(service_name="billing", endpoint="http://c:4317")``

    ``redact``: what every message, section name, attribute value, exception message, stack
    trace and log line goes through before it leaves the process (spans, payloads, history):
    a callable ``(str) -> str`` replaces the default pattern set (``otel_progress.
    default_redact``; compose them to keep it), ``False`` turns redaction off, ``True``
    restores the default. Set it before the worker forks (at the app's import), like the rest.

    ``live=True`` (``OTEL_PROGRESS_LIVE=true``) sends zero-duration placeholder spans for running
    runs and sections, one at the start and one per ``live_interval`` seconds
    (``OTEL_PROGRESS_LIVE_INTERVAL``, default 10) with the percent, so a long task shows in Jaeger
    or Tempo while it runs; the batch delay then defaults to 1 s.
    """
    args = dict(locals())  # exactly the keyword arguments, by name
    redactor = args.pop("redact")
    if redactor is not None and not (isinstance(redactor, bool) or callable(redactor)):
        raise TypeError(f"configure(redact={redactor!r}): must be a callable (str) -> str or "
                        "a bool")
    given = {name for name, value in args.items() if value is not None}
    s = _resolve(args)
    if redactor is not None:
        set_redactor(redactor)
    with _LOCK:
        _apply(s, given)
        _live.set_live(s["live"], s["live_interval"])
        _lifecycle.set_shutdown_bound(s.get("timeout", _lifecycle.DEFAULT_SHUTDOWN_BOUND_S))
    _lifecycle.connect_celery("configure")


def force_flush(timeout_millis: int = 30000) -> bool:
    """Export what the global SDK providers buffer within ``timeout_millis``; False if late."""
    return _flush(time.monotonic() + timeout_millis / 1000)


def _flush(deadline: float) -> bool:
    """Flush the global SDK providers by ``deadline`` (the API's proxies buffer nothing)."""
    flushed = True
    for provider in (trace.get_tracer_provider(), metrics.get_meter_provider()):
        if callable(flush := getattr(provider, "force_flush", None)):
            timeout_s = max(deadline - time.monotonic(), 0.0)
            done = in_background(partial(flush, timeout_s * 1000), "otel_progress-flush")
            flushed = done(timeout_s) and flushed
    return flushed


def _shutdown(deadline: float, at_exit: bool = True) -> None:
    """Close configure()'s exporters and flush an application's, by ``deadline``."""
    with _LOCK:
        provider = _meter_provider
        if _SWITCH.current is not None:  # close while current: the metric reader flushes to it
            _SWITCH.current.close(deadline, at_exit, None if provider is None else (
                lambda: provider.force_flush((deadline - time.monotonic()) * 1000)))
            _SWITCH.current = None
        _flush(deadline)  # an application's providers: a prefork child never runs the SDK's atexit


def shutdown() -> None:
    """Close configure()'s exporters (an application's are only flushed) within the bound."""
    _shutdown(time.monotonic() + _lifecycle.shutdown_bound(), at_exit=False)


def reset() -> None:
    """Undo configure() for tests: exporters, settings, counts, hooks and the redactor (back to
    the default pattern set); the provider stays."""
    shutdown()
    _metrics.LOSSES.reset()
    _lifecycle.set_shutdown_bound(_lifecycle.DEFAULT_SHUTDOWN_BOUND_S)
    _lifecycle.disconnect_celery("configure")
    set_redactor(True)
    _live.reset()


def dropped_spans() -> int:
    """Spans lost here: a full queue, a failed export, or given up at shutdown (the metric)."""
    return _metrics.LOSSES.count


class _PostMortem:
    """Ends spans a dead process left open, with their original ids (``_lifecycle.PostMortem``).

    Safe because the originals were never exported: their process died before ending them. The
    spans go through the global SDK provider's processors like any other span (so the batch
    queue, limits, redaction and drop counting apply), then one bounded flush."""

    @staticmethod
    def _provider() -> TracerProvider | None:
        provider = trace.get_tracer_provider()
        return provider if isinstance(provider, TracerProvider) else None

    def ready(self) -> bool:
        return self._provider() is not None

    def export(self, spans: list[dict[str, Any]], end_time: float, error_type: str,
               message: str, task_name: str) -> int:
        provider = self._provider()
        # The SDK keeps its processors private; a span built here must reach them as if ended.
        processor = getattr(provider, "_active_span_processor", None)
        if provider is None or processor is None:
            return 0
        scope = InstrumentationScope("otel_progress", __version__)
        sampled = TraceFlags(TraceFlags.SAMPLED)
        sent = 0
        for item in spans:
            try:
                trace_id, span_id = int(item["trace_id"], 16), int(item["span_id"], 16)
                parent_id = int(item["parent_id"], 16) if item.get("parent_id") else None
                start_ns = int(float(item["start"]) * 1e9)
                depth = int(item.get("depth") or 0)
                name = safe_str(item["name"], 200)
            except (KeyError, TypeError, ValueError):
                continue  # a payload we did not write: skip the entry, keep the rest
            attributes: dict[str, AttributeValue] = {
                ATTR_ERROR_TYPE: error_type, POST_MORTEM: True, TASK_NAME: task_name,
                SECTION_STATE: "failed",
            }
            if depth > 0:
                attributes |= {SECTION_NAME: name, SECTION_DEPTH: depth}
            processor.on_end(ReadableSpan(
                name=name,
                context=SpanContext(trace_id, span_id, is_remote=False, trace_flags=sampled),
                parent=None if parent_id is None else SpanContext(
                    trace_id, parent_id, is_remote=depth == 0, trace_flags=sampled),
                resource=provider.resource,
                attributes=attributes,
                kind=SpanKind.CONSUMER if depth == 0 else SpanKind.INTERNAL,
                status=Status(StatusCode.ERROR, safe_str(message or error_type, 1000)),
                start_time=start_ns,
                end_time=max(int(end_time * 1e9), start_ns),
                instrumentation_scope=scope,
            ))
            sent += 1
        if sent:
            in_background(partial(processor.force_flush, int(_lifecycle.shutdown_bound() * 1000)),
                          "otel_progress-post-mortem")
        return sent


_lifecycle.set_post_mortem(_PostMortem())
_lifecycle.on_shutdown(_shutdown, "export")
_lifecycle.on_fork_child(_after_fork_in_child)
_lifecycle.on_worker_process_init(_rebuild_in_worker_process)
