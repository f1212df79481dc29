"""Real OTLP receivers on 127.0.0.1 for tests: gRPC (traces and metrics) and HTTP (protobuf).

They run inside the pytest process on threads, store what they receive, and decode it into flat
records, so a test can assert on spans exported by another process over a real connection.
``mode`` makes them misbehave for fault tests: ``unavailable`` answers every export with
UNAVAILABLE (HTTP 503), ``hang`` never answers until the receiver stops.

Use the fixtures by listing this module in the root conftest's ``pytest_plugins``, or by binding
them in a test module (an assignment, so ruff sees no unused import redefined by a parameter)::

    from tests.support import otlp_receiver as receivers
    otlp_receiver = receivers.otlp_receiver
"""

from __future__ import annotations

import gzip
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

import grpc
import pytest
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Status

__all__ = [
    "DataPointRecord",
    "EventRecord",
    "MetricRecord",
    "Mode",
    "OtlpGrpcReceiver",
    "OtlpHttpReceiver",
    "SpanRecord",
    "closed_loopback_port",
    "make_otlp_receiver",
    "otlp_http_receiver",
    "otlp_receiver",
]

Mode = Literal["ok", "unavailable", "hang"]
_MAX_HANG_S = 120.0
"""A hanging export is held at most this long even if nobody stops the receiver."""
_POLL_S = 0.02


def _decode(value: AnyValue) -> Any:
    """An OTLP AnyValue as the Python value the SDK was given."""
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [_decode(item) for item in value.array_value.values]
    if kind == "kvlist_value":
        return _attributes(value.kvlist_value.values)
    return getattr(value, kind)


def _attributes(pairs: Any) -> dict[str, Any]:
    return {pair.key: _decode(pair.value) for pair in pairs}


def _hex(raw: bytes) -> str | None:
    return raw.hex() if raw else None


@dataclass(frozen=True)
class EventRecord:
    """A span event as received."""

    name: str
    attributes: dict[str, Any]
    time_unix_nano: int


@dataclass(frozen=True)
class SpanRecord:
    """A span as received, flattened with its resource and scope."""

    name: str
    trace_id: str
    span_id: str
    parent_span_id: str | None
    status_code: str
    """``UNSET``, ``OK`` or ``ERROR``."""
    status_message: str
    attributes: dict[str, Any]
    events: tuple[EventRecord, ...]
    resource: dict[str, Any]
    scope: str
    start_time_unix_nano: int
    end_time_unix_nano: int
    dropped_attributes_count: int
    dropped_events_count: int


@dataclass(frozen=True)
class DataPointRecord:
    """One data point of a metric: ``value`` for sums/gauges, count/sum/buckets for histograms."""

    attributes: dict[str, Any]
    value: float | int | None
    count: int | None
    sum: float | None
    bucket_counts: tuple[int, ...]
    explicit_bounds: tuple[float, ...]


@dataclass(frozen=True)
class MetricRecord:
    """A metric as received in one export request."""

    name: str
    kind: str
    """The OTLP data field: ``sum``, ``gauge``, ``histogram``, ..."""
    unit: str
    data_points: tuple[DataPointRecord, ...]
    resource: dict[str, Any]
    scope: str


def _span_records(request: trace_service_pb2.ExportTraceServiceRequest) -> list[SpanRecord]:
    records = []
    for resource_spans in request.resource_spans:
        resource = _attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                records.append(
                    SpanRecord(
                        name=span.name,
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id=_hex(span.parent_span_id),
                        status_code=Status.StatusCode.Name(span.status.code).removeprefix(
                            "STATUS_CODE_"
                        ),
                        status_message=span.status.message,
                        attributes=_attributes(span.attributes),
                        events=tuple(
                            EventRecord(e.name, _attributes(e.attributes), e.time_unix_nano)
                            for e in span.events
                        ),
                        resource=resource,
                        scope=scope_spans.scope.name,
                        start_time_unix_nano=span.start_time_unix_nano,
                        end_time_unix_nano=span.end_time_unix_nano,
                        dropped_attributes_count=span.dropped_attributes_count,
                        dropped_events_count=span.dropped_events_count,
                    )
                )
    return records


def _data_point(point: Any) -> DataPointRecord:
    histogram = hasattr(point, "bucket_counts")
    value_field = None if histogram else point.WhichOneof("value")
    return DataPointRecord(
        attributes=_attributes(point.attributes),
        value=getattr(point, value_field) if value_field else None,
        count=point.count if histogram else None,
        sum=point.sum if histogram else None,
        bucket_counts=tuple(point.bucket_counts) if histogram else (),
        explicit_bounds=tuple(point.explicit_bounds) if histogram else (),
    )


def _metric_records(request: metrics_service_pb2.ExportMetricsServiceRequest) -> list[MetricRecord]:
    records = []
    for resource_metrics in request.resource_metrics:
        resource = _attributes(resource_metrics.resource.attributes)
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                kind = metric.WhichOneof("data") or ""
                points = getattr(metric, kind).data_points if kind else ()
                records.append(
                    MetricRecord(
                        name=metric.name,
                        kind=kind,
                        unit=metric.unit,
                        data_points=tuple(_data_point(point) for point in points),
                        resource=resource,
                        scope=scope_metrics.scope.name,
                    )
                )
    return records


class _Store:
    """What a receiver got: accepted requests, every request's headers, attempts per signal."""

    def __init__(self, mode: Mode, metrics_mode: Mode | None) -> None:
        if mode not in ("ok", "unavailable", "hang"):
            raise ValueError(f"unknown mode {mode!r}")
        self.mode: Mode = mode
        self.metrics_mode: Mode = metrics_mode or mode
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._trace_requests: list[trace_service_pb2.ExportTraceServiceRequest] = []
        self._metric_requests: list[metrics_service_pb2.ExportMetricsServiceRequest] = []
        self._headers: list[dict[str, str]] = []
        self._attempts = {"traces": 0, "metrics": 0}

    def _record(self, signal: str, headers: dict[str, str], request: Any, accepted: bool) -> None:
        with self._lock:
            self._headers.append(headers)
            self._attempts[signal] += 1
            if accepted and signal == "traces":
                self._trace_requests.append(request)
            elif accepted:
                self._metric_requests.append(request)

    def _hold(self, still_wanted: Callable[[], bool]) -> None:
        """Block a handler until the receiver stops, the client leaves, or the cap passes."""
        deadline = time.monotonic() + _MAX_HANG_S
        while not self._stopping.wait(_POLL_S):
            if not still_wanted() or time.monotonic() >= deadline:
                return

    @property
    def headers(self) -> list[dict[str, str]]:
        """Headers (gRPC metadata) of every export request, lower-case keys, in arrival order."""
        with self._lock:
            return list(self._headers)

    def attempts(self, signal: Literal["traces", "metrics"] = "traces") -> int:
        """Export requests that arrived for ``signal``, answered or not."""
        with self._lock:
            return self._attempts[signal]

    def spans(self) -> list[SpanRecord]:
        """Every span accepted so far, in arrival order."""
        with self._lock:
            requests = list(self._trace_requests)
        return [span for request in requests for span in _span_records(request)]

    def metrics(self) -> list[MetricRecord]:
        """Every metric of every accepted request, in arrival order (cumulative repeats too)."""
        with self._lock:
            requests = list(self._metric_requests)
        return [metric for request in requests for metric in _metric_records(request)]

    def wait_for_spans(
        self, until: int | Callable[[list[SpanRecord]], bool] = 1, timeout: float = 10.0
    ) -> list[SpanRecord]:
        """Poll until ``until`` spans arrived (or the predicate holds); TimeoutError if not."""
        return _wait(self.spans, until, timeout, "spans")

    def wait_for_metrics(
        self, until: int | Callable[[list[MetricRecord]], bool] = 1, timeout: float = 10.0
    ) -> list[MetricRecord]:
        """Poll until ``until`` metrics arrived (or the predicate holds); TimeoutError if not."""
        return _wait(self.metrics, until, timeout, "metrics")


def _wait(
    read: Callable[[], list[Any]], until: int | Callable[[list[Any]], bool], timeout: float,
    what: str,
) -> list[Any]:
    def done(items: list[Any]) -> bool:
        return len(items) >= until if isinstance(until, int) else until(items)

    deadline = time.monotonic() + timeout
    while True:
        items = read()
        if done(items):
            return items
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what} not received within {timeout} s; got {items!r}")
        time.sleep(_POLL_S)


class _TraceServicer(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, receiver: OtlpGrpcReceiver) -> None:
        self._receiver = receiver

    def Export(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._receiver._answer("traces", request, context)
        return trace_service_pb2.ExportTraceServiceResponse()


class _MetricsServicer(metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self, receiver: OtlpGrpcReceiver) -> None:
        self._receiver = receiver

    def Export(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._receiver._answer("metrics", request, context)
        return metrics_service_pb2.ExportMetricsServiceResponse()


class OtlpGrpcReceiver(_Store):
    """An OTLP/gRPC TraceService and MetricsService on 127.0.0.1 (a free port)."""

    def __init__(self, mode: Mode = "ok", *, metrics_mode: Mode | None = None,
                 port: int = 0) -> None:
        """``port``: 0 for a free one; a stopped receiver's port to come back where it was."""
        super().__init__(mode, metrics_mode)
        self._executor = futures.ThreadPoolExecutor(max_workers=16, thread_name_prefix="otlp-rx")
        self._server = grpc.server(self._executor)
        # The generated registration functions carry no annotations.
        add_traces: Any = trace_service_pb2_grpc.add_TraceServiceServicer_to_server
        add_metrics: Any = metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server
        add_traces(_TraceServicer(self), self._server)
        add_metrics(_MetricsServicer(self), self._server)
        self.port: int = self._server.add_insecure_port(f"127.0.0.1:{port}")
        self._server.start()

    @property
    def endpoint(self) -> str:
        """What configure(endpoint=...) takes: ``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.port}"

    def _answer(self, signal: str, request: Any, context: grpc.ServicerContext) -> None:
        mode = self.mode if signal == "traces" else self.metrics_mode
        headers = {key.lower(): str(value) for key, value in context.invocation_metadata()}
        self._record(signal, headers, request, accepted=mode == "ok")
        if mode == "hang":
            self._hold(context.is_active)
            context.abort(grpc.StatusCode.UNAVAILABLE, "receiver stopped")
        elif mode == "unavailable":
            context.abort(grpc.StatusCode.UNAVAILABLE, "test receiver is unavailable")

    def stop(self) -> None:
        """Release hanging exports and stop serving (bounded)."""
        self._stopping.set()
        self._server.stop(grace=0.2).wait(5.0)
        self._executor.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> OtlpGrpcReceiver:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


class OtlpHttpReceiver(_Store):
    """An OTLP/HTTP receiver on 127.0.0.1: ``POST /v1/traces`` and ``/v1/metrics`` (protobuf)."""

    def __init__(self, mode: Mode = "ok", *, metrics_mode: Mode | None = None) -> None:
        super().__init__(mode, metrics_mode)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
            name="otlp-http-rx", daemon=True,
        )
        self._thread.start()

    @property
    def endpoint(self) -> str:
        """The base URL configure(endpoint=..., protocol="http/protobuf") takes."""
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        """Release hanging exports and stop serving (bounded)."""
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5.0)

    def __enter__(self) -> OtlpHttpReceiver:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


def _handler_for(receiver: OtlpHttpReceiver) -> type[BaseHTTPRequestHandler]:
    signals: dict[str, tuple[str, Any, Any]] = {
        "/v1/traces": (
            "traces", trace_service_pb2.ExportTraceServiceRequest,
            trace_service_pb2.ExportTraceServiceResponse,
        ),
        "/v1/metrics": (
            "metrics", metrics_service_pb2.ExportMetricsServiceRequest,
            metrics_service_pb2.ExportMetricsServiceResponse,
        ),
    }

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            if self.path not in signals:
                self._reply(404, b"")
                return
            signal, request_type, response_type = signals[self.path]
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            request = request_type.FromString(body)
            headers = {key.lower(): value for key, value in self.headers.items()}
            mode = receiver.mode if signal == "traces" else receiver.metrics_mode
            receiver._record(signal, headers, request, accepted=mode == "ok")
            if mode == "hang":
                receiver._hold(lambda: True)
                self.close_connection = True  # never answer: the client gave up long ago
            elif mode == "unavailable":
                self._reply(503, b"")
            else:
                self._reply(200, response_type().SerializeToString())

        def _reply(self, status: int, body: bytes) -> None:
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True  # the exporter timed out and left

        def log_message(self, format: str, *args: Any) -> None:
            pass  # keep test output clean

    return Handler


def closed_loopback_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture
def otlp_receiver() -> Iterator[OtlpGrpcReceiver]:
    """A well-behaved OTLP/gRPC receiver for the test."""
    with OtlpGrpcReceiver() as receiver:
        yield receiver


@pytest.fixture
def otlp_http_receiver() -> Iterator[OtlpHttpReceiver]:
    """A well-behaved OTLP/HTTP receiver for the test."""
    with OtlpHttpReceiver() as receiver:
        yield receiver


@pytest.fixture
def make_otlp_receiver() -> Iterator[Callable[..., OtlpGrpcReceiver]]:
    """Factory for gRPC receivers in any mode; all are stopped after the test."""
    made: list[OtlpGrpcReceiver] = []

    def make(mode: Mode = "ok", *, metrics_mode: Mode | None = None) -> OtlpGrpcReceiver:
        receiver = OtlpGrpcReceiver(mode, metrics_mode=metrics_mode)
        made.append(receiver)
        return receiver

    yield make
    for receiver in made:
        receiver.stop()
