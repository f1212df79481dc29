"""An in-process OTLP/gRPC receiver for the demo: it keeps the spans a worker exports, so the demo
can print the finished trace tree as Jaeger or Tempo would show it, and forwards them to the
user's own collector when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set."""

from __future__ import annotations

import contextlib
import threading
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

_STATUS = {0: "UNSET", 1: "OK", 2: "ERROR"}


@dataclass
class ReceivedSpan:
    """One span as the receiver decoded it."""

    name: str
    span_id: str
    parent_id: str
    trace_id: str
    start: int
    status: str
    attributes: dict[str, Any] = field(default_factory=dict)
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)


def _value(value: Any) -> Any:
    kind = value.WhichOneof("value")
    return None if kind is None else getattr(value, kind)


def _attrs(pairs: Any) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in pairs}


class _Servicer(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, receiver: DemoReceiver) -> None:
        self.receiver = receiver

    def Export(self, request: Any, context: Any) -> Any:  # the gRPC method name
        self.receiver._add(request)
        return trace_service_pb2.ExportTraceServiceResponse()


class DemoReceiver:
    """Listen on 127.0.0.1 at a free port; ``endpoint`` is what the worker exports to."""

    def __init__(self, forward_to: str | None = None) -> None:
        self._lock = threading.Lock()
        self._spans: list[ReceivedSpan] = []
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(  # type: ignore[no-untyped-call]
            _Servicer(self), self._server)
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        self._forward: Any = None
        self._channel: Any = None
        if forward_to:
            target = forward_to.split("://", 1)[-1].rstrip("/")
            self._channel = grpc.insecure_channel(target)
            self._forward = trace_service_pb2_grpc.TraceServiceStub(  # type: ignore[no-untyped-call]
                self._channel)
        self._server.start()

    @property
    def endpoint(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self.port}"

    def _add(self, request: Any) -> None:
        found = []
        for resource in request.resource_spans:
            for scope in resource.scope_spans:
                for span in scope.spans:
                    found.append(ReceivedSpan(
                        name=span.name, span_id=span.span_id.hex(),
                        parent_id=span.parent_span_id.hex(), trace_id=span.trace_id.hex(),
                        start=span.start_time_unix_nano,
                        status=_STATUS.get(span.status.code, "UNSET"),
                        attributes=_attrs(span.attributes),
                        events=[(e.name, _attrs(e.attributes)) for e in span.events],
                    ))
        with self._lock:
            self._spans += found
        if self._forward is not None:
            with contextlib.suppress(grpc.RpcError):  # the user's collector is not the demo's
                self._forward.Export(request, timeout=2)

    def spans(self) -> list[ReceivedSpan]:
        """Every span received so far."""
        with self._lock:
            return list(self._spans)

    def stop(self) -> None:
        """Stop listening (bounded)."""
        self._server.stop(grace=0.5).wait(2)
        if self._channel is not None:
            self._channel.close()


def render(spans: list[ReceivedSpan], trace_id: str) -> str:
    """The spans of ``trace_id`` as an indented tree with status, percent and events."""
    mine = [s for s in spans if s.trace_id == trace_id]
    ids = {s.span_id for s in mine}
    children: dict[str, list[ReceivedSpan]] = {}
    for span in mine:
        parent = span.parent_id if span.parent_id in ids else ""
        children.setdefault(parent, []).append(span)
    for kids in children.values():
        kids.sort(key=lambda s: s.start)
    lines: list[str] = []

    def walk(span: ReceivedSpan, prefix: str, last: bool, root: bool) -> None:
        pct = span.attributes.get("otel_progress.percent")
        extra = f"  {pct:.0f}%" if isinstance(pct, (int, float)) else ""
        branch = "" if root else ("└── " if last else "├── ")
        lines.append(f"{prefix}{branch}{span.name}  [{span.status}]{extra}")
        inner = prefix if root else prefix + ("    " if last else "│   ")
        for name, attrs in span.events:
            if name == "exception":
                lines.append(f"{inner}  ✗ {attrs.get('exception.type')}: "
                             f"{attrs.get('exception.message')}")
            else:
                lines.append(f"{inner}  • {name}")
        kids = children.get(span.span_id, [])
        for i, kid in enumerate(kids):
            walk(kid, inner, i == len(kids) - 1, False)

    for root in children.get("", []):
        walk(root, "", True, True)
    return "\n".join(lines)
