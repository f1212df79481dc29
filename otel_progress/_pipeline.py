"""What the SDK lacks around configure()'s exporters: a generation of them behind switches on the
one provider per process (re-configure(), reset() and prefork children replace it), bounded waits
(``BatchSpanProcessor.force_flush``/``shutdown`` ignore their timeouts, opentelemetry-python#4568),
an exact count of lost spans, and export health shared with forked children."""

from __future__ import annotations

import math
import mmap
import random
import struct
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Final, Literal

from opentelemetry import trace
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult, MetricsData
from opentelemetry.sdk.trace import Event, ReadableSpan, Span, SpanProcessor, _Span
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.export import SpanExportResult as Result
from opentelemetry.sdk.util import BoundedList
from opentelemetry.trace import Status

from otel_progress import _lifecycle, _live
from otel_progress._metrics import LOSSES
from otel_progress._redact import redactor
from otel_progress._safety import guard, in_background, logger, redact, redact_value

Signal = Literal["traces", "metrics"]
GIVE_UP_FOR_S: Final = 30.0
"""After an export failed, exits of this process and its forked children do not wait this long."""
_HEALTH: Final = mmap.mmap(-1, 16)  # per signal: time.time() its last export failed, 0.0 if ok


def record_export(signal: Signal, ok: bool) -> None:
    """Remember a signal's last export outcome, for this process and its forked children."""
    struct.pack_into("d", _HEALTH, 8 * (signal == "metrics"), 0.0 if ok else time.time())


def exports_failing(signal: Signal) -> bool:
    """Whether the signal's last export here or in a parent failed, within GIVE_UP_FOR_S."""
    failed_at: float = struct.unpack_from("d", _HEALTH, 8 * (signal == "metrics"))[0]
    return time.time() - failed_at < GIVE_UP_FOR_S



def emit_placeholder(real: Any, name: str, attributes: dict[str, Any], at_ns: int) -> str | None:
    """A zero-duration placeholder of the SDK span ``real`` (``_live``): its trace, its parent
    (none for a root), a new random span id, made on its own processor, resource, scope and
    limits so it goes where ``real`` will go. Returns the new id; None if ``real`` is no SDK
    span. ``random`` is reseeded in forked children, so prefork children draw distinct ids."""
    if not isinstance(real, Span):
        return None
    ctx = real.get_span_context()
    span_id = random.getrandbits(64)
    while span_id in (0, ctx.span_id):
        span_id = random.getrandbits(64)
    context = trace.SpanContext(ctx.trace_id, span_id, is_remote=False,
                                trace_flags=ctx.trace_flags, trace_state=ctx.trace_state)
    # _Span: the SDK's Span refuses direct construction; _Span is what its Tracer makes, and the
    # Tracer cannot be given a trace id for a root span (the run's placeholder needs one).
    placeholder = _Span(
        name, context, parent=real.parent, resource=real.resource, attributes=attributes,
        kind=trace.SpanKind.INTERNAL, span_processor=real._span_processor,
        instrumentation_scope=real.instrumentation_scope, limits=real._limits,
    )
    placeholder.start(start_time=at_ns)
    placeholder.end(end_time=at_ns)
    return trace.format_span_id(span_id)


_live.install_emitter(emit_placeholder)


def _clean_attributes(attributes: Any) -> dict[str, Any] | None:
    """Redacted attribute values, or None when nothing changed."""
    if not attributes:
        return None
    changed = False
    out: dict[str, Any] = {}
    for key, value in attributes.items():
        new = redact_value(key, value)
        if isinstance(new, list) and isinstance(value, tuple):
            new = tuple(new)
        changed = changed or new is not value
        out[key] = new
    return out if changed else None


def _bounded(values: dict[str, Any], like: Any) -> BoundedAttributes:
    """Attributes that keep the SDK's count of dropped ones (OTLP's dropped_attributes_count)."""
    bounded = BoundedAttributes(maxlen=None, attributes=values, immutable=True)
    bounded.dropped = getattr(like, "dropped", 0)
    return bounded


def redact_span(span: ReadableSpan) -> ReadableSpan:
    """``span`` with its name, attributes, events and status description redacted.

    The last line of defence: otel_progress redacts what it writes where it writes it, but
    other instrumentations (Celery's records the task's exception on ``run/<task>``) do not.
    Returns the same span when nothing changed."""
    name = redact(span.name)
    attributes = _clean_attributes(span.attributes)
    events, events_changed = [], False
    for event in span.events:
        event_name = redact(event.name)
        event_attributes = _clean_attributes(event.attributes)
        if event_name is event.name and event_attributes is None:
            events.append(event)
            continue
        events_changed = True
        events.append(Event(event_name, _bounded(event_attributes, event.attributes)
                            if event_attributes is not None else event.attributes,
                            event.timestamp))
    status = span.status
    description = status.description
    clean_description = redact(description) if description else description
    if name is span.name and attributes is None and not events_changed \
            and clean_description is description:
        return span
    if clean_description is not description:
        status = Status(status.status_code, clean_description)
    kept_events: Any = span.events
    if events_changed:
        kept_events = BoundedList(None)
        kept_events.extend(events)
        kept_events.dropped = span.dropped_events
    return ReadableSpan(
        name=name, context=span.context, parent=span.parent, resource=span.resource,
        attributes=_bounded(attributes, span._attributes) if attributes is not None
        else span._attributes,  # the SDK's BoundedAttributes: its dropped count goes out too
        events=kept_events, links=span._links, kind=span.kind, status=status,
        start_time=span.start_time, end_time=span.end_time,
        instrumentation_scope=span.instrumentation_scope,
    )


class Redacting(SpanExporter):
    """A span exporter that redacts every span before ``inner`` sends it (in the export thread,
    off the task's path)."""

    def __init__(self, inner: SpanExporter) -> None:
        self.inner = inner

    def export(self, spans: Sequence[ReadableSpan]) -> Result:
        if redactor() is not None:
            spans = [redact_span(span) for span in spans]
        return self.inner.export(spans)

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)


class Exporters(SpanExporter):
    """One generation of configure()'s exporters (spans through the SDK's batch queue, console,
    metrics) and the ledger of every span in that queue: admitted before it enters, out when the
    queue hands it to :meth:`export`, refused when full. So the SDK's queue never drops by itself
    (its own count over-counts under load) and each lost span counts once."""

    def __init__(self, spans: SpanExporter | None, console: SpanExporter | None,
                 metrics: MetricExporter | None, queue: int, batch: int | None,
                 settings: Any = None, delay_ms: int | None = None) -> None:
        self._inner, self.metrics, self._queue = spans, metrics, queue
        self.settings = settings  # what configure() built this generation from
        self._lock = threading.Lock()
        self._pending = self._in_flight = 0
        self._closed, self._deadline = False, math.inf
        self.batch = None if spans is None else BatchSpanProcessor(
            self, max_queue_size=queue, max_export_batch_size=batch,
            schedule_delay_millis=delay_ms)
        self._console = None if console is None else SimpleSpanProcessor(console)

    def on_end(self, span: ReadableSpan) -> None:
        sampled = span.context is not None and span.context.trace_flags.sampled
        if self.batch is not None and sampled:
            with self._lock:
                admitted = self._pending < self._queue and not self._closed
                self._pending += admitted
            if admitted:
                self.batch.on_end(span)
            else:
                LOSSES.add(1, "shutdown" if self._closed else "queue_full", self._queue)
        if self._console is not None:
            self._console.on_end(span)

    def export(self, spans: Sequence[ReadableSpan]) -> Result:
        with self._lock:
            if self._closed:
                return Result.FAILURE  # counted when the ledger closed
            self._pending -= len(spans)
            self._in_flight += len(spans)
        inner = self._inner if time.monotonic() < self._deadline else None
        result = Result.FAILURE
        try:
            if inner is not None:
                result = inner.export(spans)
        except Exception:
            if self._deadline != -math.inf:
                raise  # the batch processor logs it; else shutdown() closed the connection
        finally:
            with self._lock:
                self._in_flight -= len(spans)
                lost = 0 if self._closed or result is Result.SUCCESS else len(spans)
            if inner is not None:
                record_export("traces", result is Result.SUCCESS)
            LOSSES.add(lost, "export_failed" if inner is not None else "shutdown")
        return result

    def shutdown(self) -> None:
        """Stop exporting spans now: an export in flight fails instead of waiting its timeout."""
        self._deadline, inner, self._inner = -math.inf, self._inner, None
        if inner is not None:
            inner.shutdown()

    def close(self, deadline: float, at_exit: bool = False,
              flush_metrics: Callable[[], bool] | None = None) -> None:
        """Export what is queued until ``deadline`` (metrics, by ``flush_metrics``, in parallel),
        then stop. At exit a signal whose export failed lately, here or in the parent, does not
        wait at all: its unexported spans count as lost."""
        metrics_done = None
        if flush_metrics and self.metrics and not (at_exit and exports_failing("metrics")):
            metrics_done = in_background(flush_metrics, "otel_progress-metrics")
        if self._console is not None:
            self._console.shutdown()
        if self.batch is not None:
            give_up = at_exit and exports_failing("traces")
            before, self._deadline = LOSSES.count, time.monotonic() if give_up else deadline
            done = in_background(self.batch.shutdown, "otel_progress-shutdown")
            if not done(self._deadline - time.monotonic()):
                if not give_up:
                    record_export("traces", ok=False)  # still exporting at the deadline: a timeout
                self.shutdown()
            with self._lock:
                lost, self._pending, self._in_flight = self._pending + self._in_flight, 0, 0
                self._closed = True
            LOSSES.add(lost, "shutdown")
            if (gone := LOSSES.count - before) > 0:
                logger.warning("otel_progress: %d span(s) not exported at shutdown (%s)", gone,
                               "exports were failing" if give_up else "bound reached")
        if metrics_done is not None and not metrics_done(deadline - time.monotonic()):
            record_export("metrics", ok=False)  # still exporting at the deadline: a timeout
            logger.warning("otel_progress: metrics were not exported within the shutdown bound")
        if self.metrics is not None:
            self.metrics.shutdown()  # the OTLP exporters close their connection at once

    def after_fork(self) -> None:
        """The SDK's batch processor empties its queue in a forked child: so does the ledger."""
        self._lock = threading.Lock()
        self._pending = self._in_flight = 0

    def abandon(self) -> None:
        """Stop in a prefork child that rebuilt its exporters, leaving the parent's connections."""
        self._deadline, self._inner, self.metrics, self._closed = -math.inf, None, None, True
        if self.batch is not None:
            in_background(self.batch.shutdown, "otel_progress-abandon")


class Switch(SpanProcessor):
    """The one span processor configure() adds to its provider, holding the current exporters
    (which the metric reader's :class:`MetricSwitch` uses too)."""

    current: Exporters | None = None

    def swap(self, exporters: Exporters | None) -> None:
        """Make ``exporters`` current and close the previous ones within the shutdown bound."""
        old, self.current = self.current, exporters
        if old is not None:
            old.close(time.monotonic() + _lifecycle.shutdown_bound())

    @guard("otel_progress._pipeline.span_export")  # runs inside span.end(): never into the caller
    def on_end(self, span: ReadableSpan) -> None:
        if self.current is not None:
            self.current.on_end(span)

    def shutdown(self) -> None:
        self.swap(None)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        batch = self.current and self.current.batch
        return batch is None or in_background(batch.force_flush, "otel_progress-flush")(
            timeout_millis / 1000)


class MetricSwitch(MetricExporter):
    """The exporter of configure()'s metric reader: the current exporters' OTLP one."""

    def __init__(self, switch: Switch, first: MetricExporter) -> None:
        # The reader reads temporality/aggregation off its exporter: forward what the OTLP
        # exporter derived from the environment (base-class attributes, private).
        super().__init__(getattr(first, "_preferred_temporality", None),
                         getattr(first, "_preferred_aggregation", None))
        self._switch = switch

    def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000,
               **kwargs: Any) -> MetricExportResult:
        inner = self._switch.current and self._switch.current.metrics
        if not inner:
            return MetricExportResult.SUCCESS
        result = inner.export(metrics_data, timeout_millis=timeout_millis, **kwargs)
        record_export("metrics", result is MetricExportResult.SUCCESS)
        return result

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True  # the OTLP exporters buffer nothing

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        pass  # each generation of exporters closes its own
