"""Every span call otel_progress makes, for TaskUpdater and Observer alike.

Starting the run span or a section span, a notification as a span event, an exception recorded,
the status, the end: only here. Attributes are built only when ``span.is_recording()``; a
section's are set at start in one dict and at its end in one ``set_attributes`` call. The hot
path never comes here: counters are pushed onto open spans by the flusher (:func:`sync`).
"""

from __future__ import annotations

import time
import traceback
from typing import Any, Final

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import (
    INVALID_SPAN,
    NonRecordingSpan,
    Span,
    Status,
    StatusCode,
    Tracer,
    TracerProvider,
)

from otel_progress import _attributes as A
from otel_progress import _live, _metrics
from otel_progress._payload import MAX_OPEN_SPANS, OpenSpan
from otel_progress._run import FAILED, REVOKED, Node, Run
from otel_progress._safety import (
    MAX_INT,
    MAX_NAME,
    exception_text,
    guard,
    redact,
    safe_str,
    type_name,
)
from otel_progress._version import __version__

_NAME: Final = "otel_progress"
_tracer: Tracer = trace.get_tracer(_NAME, __version__)
_open_runs: set[Run] = set()
"""Runs whose span otel_progress opened: ended at the latest at process exit (strong refs on
purpose: a run whose facade was dropped unfinished must still end its span)."""
_parent: tuple[object, otel_context.Context | None] = (None, None)
"""The last run span that top-level sections started under, and its context (contexts are
immutable): consecutive sections of one run reuse it instead of building one per section."""


_LIVE = False
"""``_live.enabled``, kept here by :func:`_live_changed` (a section start reads one global)."""


def _live_changed(enabled: bool) -> None:
    global _LIVE
    _LIVE = enabled


_live.on_change(_live_changed)


def use_tracer_provider(provider: TracerProvider | None) -> None:
    """Section and run spans from ``provider`` (``instrument(tracer_provider=)``); None: global."""
    global _tracer
    _tracer = trace.get_tracer(_NAME, __version__, tracer_provider=provider)


def _ids(span: Span) -> tuple[str | None, str | None]:
    ctx = span.get_span_context()
    if not ctx.is_valid:
        return None, None
    return trace.format_trace_id(ctx.trace_id), trace.format_span_id(ctx.span_id)


_NEAR_HALF: Final = 0.49999
"""A percent 0..100 scaled by 100 carries an error far below 1e-5: a fraction farther than this
from .5 rounds to the hundredth ``round(pct, 2)`` gives (it rounds the exact value, at ~0.3 us)."""


def _progress(node: Node) -> tuple[int | float | None, int | float | None, float | None]:
    """``node.counters()`` for span attributes, with its ``round(pct, 2)`` done cheaply (the
    same float): this runs on every notification and section end."""
    total = node.total
    current: int | float | None = None
    if node.current or total is not None:
        current = node.current
        if current.__class__ is int and not -MAX_INT <= current <= MAX_INT:
            current = MAX_INT if current > 0 else -MAX_INT
    pct = node.percent()
    if pct is not None:
        scaled = pct * 100.0
        hundredths = int(scaled + 0.5)
        pct = hundredths / 100.0 if -_NEAR_HALF < scaled - hundredths < _NEAR_HALF \
            else round(pct, 2)
    return current, total, pct


# --- runs ----------------------------------------------------------------------------------------
def start_run(run: Run, span_name: str, *, in_celery: bool) -> None:
    """Give ``run`` its span: Celery's ``run/<task>`` when it is recording, else its own."""
    current = trace.get_current_span()
    run.owns_span = not (in_celery and current.is_recording())
    if run.owns_span:
        span = _tracer.start_span(span_name, start_time=int(run.start * 1e9))
        _open_runs.add(run)
    else:
        span = current
    if span.is_recording():
        span.set_attributes({A.TASK_UUID: run.task_uuid, A.TASK_NAME: run.task_name})
    run.node.span = span
    run.trace_id, run.span_id = _ids(span)
    _metrics.track_running(run)
    if _LIVE:
        _live.run_started(run)


@guard("spans.end_run")
def end_run(run: Run) -> None:
    """The run's final attributes and status; its span ends if otel_progress opened it."""
    _metrics.untrack(run)
    span: Span = run.node.span
    if span is None:
        return
    if span.is_recording():
        current, total, _ = run.node.counters()
        attrs: dict[str, Any] = {
            A.PERCENT: round(run.overall_percent()[0], 2),
            A.JOBS_FINISHED: run.jobs_finished,
            A.JOBS_TOTAL: run.jobs_total,
            A.STATUS: run.status,
            A.SECTION_STATE: run.state,
        }
        if current is not None:
            attrs[A.CURRENT] = current
        if total is not None:
            attrs[A.TOTAL] = total
        if run.cancelled and run.state == REVOKED:
            attrs[A.CANCEL_REQUESTED] = True  # a requested cancel: revoked, not an error
            if run.exc_message:
                span.add_event(run.exc_message, {A.SECTION_STATE: REVOKED})
        elif run.state in (FAILED, REVOKED):
            error_type = run.error_type or run.exc_type
            if error_type:
                attrs[A.ERROR_TYPE] = error_type  # an attribute, not a second exception record
            desc = run.exc_message or f"{run.jobs_finished} out of {run.jobs_total} jobs"
            span.set_status(Status(StatusCode.ERROR, desc))
        elif run.owns_span:
            span.set_status(Status(StatusCode.OK))  # OK is final: only on a span we own
        span.set_attributes(attrs)
    if run.owns_span:
        span.end(end_time=int((run.end or time.time()) * 1e9))
        _open_runs.discard(run)


def end_open_runs() -> None:
    """No run span is ever left unended: finish what is still open when the process exits."""
    for run in list(_open_runs):
        with guard("spans.end_open_runs"):
            if run.finish(complete=False):
                end_run(run)


# --- sections ------------------------------------------------------------------------------------
def start_section(run: Run, node: Node) -> object:
    """Start ``node``'s span under its parent and make it current; returns the context token."""
    global _parent
    parent = node.parent
    if parent is None or parent is run.node:
        run_span = run.node.span
        cached_span, ctx = _parent
        if cached_span is not run_span:
            ctx = None if run_span is None else trace.set_span_in_context(run_span)
            _parent = (run_span, ctx)
    else:
        ctx = otel_context.get_current()
        if not trace.get_current_span(ctx).get_span_context().is_valid:
            ctx = trace.set_span_in_context(parent.span)
    name = node.name
    task_name = run.task_name
    # A loop's sections share their name and parent: their start attributes are one dict,
    # kept on the parent (the SDK copies a span's attributes).
    memo = parent.child_attrs if parent is not None else None
    if memo is not None and memo[0] is name and memo[1] is task_name:
        attrs = memo[2]
    else:
        attrs = {A.SECTION_NAME: name, A.SECTION_DEPTH: node.depth, A.TASK_NAME: task_name}
        if parent is not None:
            parent.child_attrs = (name, task_name, attrs)
    span = _tracer.start_span(name, context=ctx, start_time=int(node.start * 1e9),
                              attributes=attrs)
    node.span = span
    if _LIVE:
        _live.section_started(run, node)
    if (span is INVALID_SPAN  # what NoOpTracer gives without a valid parent
            or (not span.is_recording() and not span.get_span_context().is_valid)) \
            and not trace.get_current_span().get_span_context().is_valid:
        return _NOT_ATTACHED  # no tracing at all (API only): an invalid span made current
        # over an invalid one changes nothing a reader of the context can see
    return otel_context.attach(trace.set_span_in_context(span))


_NOT_ATTACHED: Final = object()


def detach(token: object) -> None:
    """Restore the context that was current before the section."""
    if token is not _NOT_ATTACHED:
        otel_context.detach(token)  # type: ignore[arg-type]


def end_section(run: Run, node: Node, exc: BaseException | None) -> None:
    """The section's end: its reported percent, state, error or interruption, in one call."""
    span: Span = node.span
    end = node.end or time.time()
    if span is not None and span.__class__ is not NonRecordingSpan:  # the API's no-op spans
        if span.is_recording():  # have nothing to set or end: two calls less without an SDK
            attrs: dict[str, Any] = {A.SECTION_STATE: node.state}
            if node.total is not None or node.current or node.explicit_pct is not None \
                    or node.mark >= 0.0:  # it reported progress: counters() has something
                current, total, pct = _progress(node)
                if current is not None:
                    attrs[A.CURRENT] = current
                if total is not None:
                    attrs[A.TOTAL] = total
                if pct is not None:
                    attrs[A.PERCENT] = pct  # what it reported: a normal exit does not make it 100
            if exc is not None:
                record_exception(span, exc)
            if node.interrupted is not None:
                attrs[A.INTERRUPTED] = node.interrupted  # control flow: not an error
            elif node.state == FAILED:
                attrs[A.ERROR_TYPE] = node.error_type or "Terminated"
                span.set_status(Status(StatusCode.ERROR, node.error or node.error_type))
            if len(attrs) == 1:  # the state alone (most sections): the SDK cleans one value
                span.set_attribute(A.SECTION_STATE, node.state)  # instead of a whole mapping
            else:
                span.set_attributes(attrs)
        span.end(end_time=int(end * 1e9))
    # Nothing reads an ended section's span: the tree keeps its first and last nodes, and
    # without this each of them would hold its span (events and all) alive with it.
    node.span = None
    node.event_attrs = None
    _metrics.record_section(run.task_name, node.name, node.state, end - node.start)


# --- events --------------------------------------------------------------------------------------
def notify(node: Node, text: str, attributes: dict[str, Any] | None) -> None:
    """A notification: an event named by the message, with the progress attributes.

    Notifications mostly come between progress changes: the attributes are kept on the node
    with what they were made from (the counters and the never-backwards mark, by identity) and
    reused while those are the same objects. The SDK copies an event's attributes, so one dict
    serves every event."""
    span: Span = node.span
    if span is None or not span.is_recording():
        return
    memo = node.event_attrs
    if memo is not None and memo[0] is node.current and memo[1] is node.total \
            and memo[2] is node.explicit_pct and memo[3] is node.mark:
        attrs: dict[str, Any] = memo[4]
    elif node.total is not None or node.current or node.explicit_pct is not None \
            or node.mark >= 0.0:  # it reported progress: counters() has something
        made_from = node.current, node.total, node.explicit_pct
        current, total, pct = _progress(node)  # may raise the mark: memoised after it
        attrs = {}
        if current is not None:
            attrs[A.CURRENT] = current
        if pct is not None:
            attrs[A.PERCENT] = pct
        if total is not None:
            attrs[A.TOTAL] = total
        node.event_attrs = (*made_from, node.mark, attrs)
    else:  # nothing reported yet: no progress attributes to carry
        span.add_event(text or "progress", attributes)
        return
    span.add_event(text or "progress", {**attrs, **attributes} if attributes else attrs)


def observer_progress(run: Run, text: str | None, percent: float, current: int | float,
                      total: int | float) -> None:
    """An Observer update with a new message: an event with the progress attributes.

    The run span's own progress attributes are not set per update (that cost a span's worth of
    attribute checks each time): the flusher pushes them (:func:`sync`) and the run's end sets
    them. Only a run nobody ends (a Celery span in a worker without the task-end hook) gets them
    with each event, as that is the last chance it has."""
    last_chance = run.ends_on_drop and not run.owns_span
    if text is None and not last_chance:
        return
    span: Span = run.node.span
    if span is None or not span.is_recording():
        return
    attrs = {A.PERCENT: percent, A.CURRENT: current, A.TOTAL: total}
    if text is not None:
        span.add_event(text or "progress", attrs)
    if last_chance:
        span.set_attributes(attrs)


def record_failure(run: Run, exc: BaseException | None, exc_type: type[BaseException] | None,
                   text: str) -> None:
    """Observer.fail()/exception(): the exception (or one made from the message) on the span."""
    span: Span = run.node.span
    if span is None or not span.is_recording():
        return
    recorded = exc
    if recorded is None and exc_type is not None:
        try:
            recorded = exc_type(text)
        except Exception:
            recorded = RuntimeError(text)
    if recorded is not None:
        record_exception(span, recorded)


MAX_STACKTRACE: Final = 16_000
"""Characters kept of an ``exception.stacktrace`` (SpanLimits may cap it further)."""


def record_exception(span: Span, exc: BaseException) -> None:
    """The ``exception`` event ``span.record_exception`` makes, with the message and stack
    trace redacted (the SDK's would put ``str(exc)`` and the frames out as they are), and
    surviving exceptions whose ``__str__`` raises."""
    try:
        stack = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    except Exception:
        try:
            stack = "".join(traceback.format_tb(exc.__traceback__))
        except Exception:
            stack = ""
    span.add_event("exception", {
        "exception.type": type_name(exc),
        "exception.message": exception_text(exc),
        "exception.stacktrace": redact(safe_str(stack, MAX_STACKTRACE)),
        "exception.escaped": "True",
    })


@guard("spans.sync")
def sync(run: Run) -> None:
    """Push counters to the open spans (the flusher calls this; the hot path never does)."""
    if run.finished:
        return
    span: Span = run.node.span
    if span is not None and span.is_recording():
        current, total, _ = run.node.counters()
        attrs: dict[str, Any] = {A.PERCENT: round(run.overall_percent()[0], 2)}
        if current is not None:
            attrs[A.CURRENT] = current
        if total is not None:
            attrs[A.TOTAL] = total
        span.set_attributes(attrs)
    for node in list(run.open_top.values()):
        node_span: Span = node.span
        if node_span is not None and node_span.is_recording() and node.state == "running":
            current, total, pct = node.counters()
            attrs = {}
            if current is not None:
                attrs[A.CURRENT] = current
            if total is not None:
                attrs[A.TOTAL] = total
            if pct is not None:
                attrs[A.PERCENT] = pct
            if attrs:
                node_span.set_attributes(attrs)


# --- post-mortem ---------------------------------------------------------------------------------
def _open_span(span: Any, name: str, start: float, depth: int) -> OpenSpan | None:
    """What it takes to end ``span`` from another process, or None if nothing records it."""
    if span is None or not span.is_recording():
        return None
    ctx = span.get_span_context()
    if not ctx.is_valid or not ctx.trace_flags.sampled:
        return None
    parent = getattr(span, "parent", None)  # the SDK's spans know their parent's context
    return OpenSpan(
        name=safe_str(getattr(span, "name", None) or name, MAX_NAME),
        trace_id=trace.format_trace_id(ctx.trace_id),
        span_id=trace.format_span_id(ctx.span_id),
        parent_id=trace.format_span_id(parent.span_id) if parent is not None else None,
        start=start,
        depth=depth,
    )


def leave_for_post_mortem(run: Run, node: Node) -> None:
    """``node``'s span is left unended (its process is being killed) and listed for the main
    worker process to end (the final payload's private part)."""
    if node.state == "running" and len(run.dying_spans) < MAX_OPEN_SPANS:
        item = _open_span(node.span, node.name, node.start, node.depth)
        if item is not None:
            run.dying_spans.insert(0, item)  # innermost leave first: keep outermost first


def open_span_facts(run: Run) -> list[OpenSpan]:
    """The run's spans that have not ended, outermost first (the run span, then sections).

    The publisher stores them in the payload's private part: if the process dies with them
    open, the main worker process ends them with these ids (``_lifecycle.export_post_mortem``).
    A run that has finished has none."""
    if run.finished:
        return []
    out: list[OpenSpan] = []
    root = _open_span(run.node.span, run.task_name, run.start, 0)
    if root is not None:
        out.append(root)
    nodes = run.open_nodes()  # innermost first
    for node in sorted(nodes, key=lambda n: n.depth)[:MAX_OPEN_SPANS - len(out)]:
        item = _open_span(node.span, node.name, node.start, node.depth)
        if item is not None:
            out.append(item)
    return out
