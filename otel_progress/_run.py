"""One tracked run: its span, section tree, counters, log and payload.

``TaskUpdater`` and ``Observer`` are facades over a :class:`Run`. Inside a Celery task both share
the task's run (one payload, one flusher per task). The hot path (``advance``, ``progress``) only
touches counters on a :class:`Node`; spans attributes and the payload are filled from those
counters when a section closes, a notification is made, or the flusher runs.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from typing import Any, Final

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, Status, StatusCode

from otel_progress import _attributes as A
from otel_progress import _metrics
from otel_progress._log import BoundedLog
from otel_progress._payload import (
    MAX_PAYLOAD_BYTES,
    SCHEMA_VERSION,
    JobsPayload,
    ProgressPayload,
    RunState,
    SectionPayload,
    dumps,
    iso,
)
from otel_progress._safety import (
    MAX_NAME,
    clamp_percent,
    exception_class_line,
    exception_text,
    guarded,
    internal_error,
    logger,
    safe_str,
    type_name,
)
from otel_progress._version import __version__

tracer: Final = trace.get_tracer("otel_progress", __version__)

RUNNING: Final = "running"
SUCCEEDED: Final = "succeeded"
FAILED: Final = "failed"

CHILDREN_HEAD: Final = 10
"""Children of a node kept from the start (memory and payload cap)."""
CHILDREN_TAIL: Final = 10
"""Children of a node kept from the end."""
PAYLOAD_MAX_DEPTH: Final = 6
"""Levels of the section tree in the payload; deeper levels become an ``omitted`` marker."""
PAYLOAD_MAX_NODES: Final = 60
"""Sections listed in the payload at most; the rest are counted in ``omitted`` markers."""
OMITTED_NAME: Final = "…"


def _control_flow_types() -> tuple[type[BaseException], ...]:
    """Exceptions that steer Celery and must pass through sections unchanged, not as errors."""
    try:
        from celery.exceptions import Ignore, Reject, Retry
    except ImportError:  # pragma: no cover - celery is a dependency
        return ()
    return (Retry, Ignore, Reject)


def _unsuppressed_error_types() -> tuple[type[BaseException], ...]:
    """Errors that are recorded as errors but never suppressed (DECISIONS 3)."""
    found: list[type[BaseException]] = []
    try:
        from billiard.exceptions import SoftTimeLimitExceeded, Terminated, WorkerLostError

        found += [SoftTimeLimitExceeded, Terminated, WorkerLostError]
    except ImportError:  # pragma: no cover
        pass
    return tuple(found)


CONTROL_FLOW: Final = _control_flow_types()
NEVER_SUPPRESSED_ERRORS: Final = _unsuppressed_error_types()


def is_control_flow(exc: BaseException) -> bool:
    """``BaseException`` that is not an ``Exception``, or Celery's Retry/Ignore/Reject."""
    return not isinstance(exc, Exception) or isinstance(exc, CONTROL_FLOW)


def record_exception(span: Span, exc: BaseException) -> None:
    """``span.record_exception`` that survives exceptions whose ``__str__`` raises."""
    try:
        span.record_exception(exc, escaped=True)
    except Exception:
        import traceback

        try:
            stack = "".join(traceback.format_tb(exc.__traceback__))
        except Exception:
            stack = ""
        span.add_event("exception", {
            "exception.type": type_name(exc),
            "exception.message": exception_text(exc),
            "exception.stacktrace": stack,
            "exception.escaped": "True",
        })


class Node:
    """A section (or the run itself, depth 0): counters on the hot path, the rest at close."""

    __slots__ = (
        "__weakref__", "_children_head", "_children_tail", "_omitted", "current", "depth",
        "end", "error", "explicit_pct", "has_children", "interrupted", "mark", "name",
        "parent", "span", "start", "state", "total",
    )

    def __init__(self, name: str, parent: Node | None, span: Span) -> None:
        self.name = name
        self.parent = parent
        self.depth: int = 0 if parent is None else parent.depth + 1
        self.span = span
        self.start = time.time()
        self.end: float | None = None
        self.state = RUNNING
        self.current: int | float = 0
        self.total: int | float | None = None
        self.explicit_pct: float | None = None
        self.mark = -1.0  # high-water mark of the percent: a section never goes backwards
        self.error: str | None = None
        self.interrupted: str | None = None
        self.has_children = False
        self._children_head: list[Node] = []
        self._children_tail: deque[Node] = deque(maxlen=CHILDREN_TAIL)
        self._omitted = 0

    def add_child(self, child: Node) -> None:
        """Keep the first and last children only: 10,000 sections must not grow memory."""
        self.has_children = True
        if len(self._children_head) < CHILDREN_HEAD:
            self._children_head.append(child)
            return
        if len(self._children_tail) == CHILDREN_TAIL:
            self._omitted += 1
        self._children_tail.append(child)

    def children(self) -> tuple[list[Node], int, list[Node]]:
        """(head, omitted count, tail)."""
        return self._children_head, self._omitted, list(self._children_tail)

    def percent(self) -> float | None:
        """Own percent (explicit wins over current/total), never lower than before; None if
        unknown. A succeeded section is 100."""
        if self.state == SUCCEEDED:
            self.mark = 100.0
            return 100.0
        pct = self.explicit_pct
        if pct is None and self.total:
            try:
                pct = clamp_percent(self.current / self.total * 100.0)
            except (TypeError, ZeroDivisionError, OverflowError):
                pct = None
        if pct is not None and pct > self.mark:
            self.mark = pct
        return self.mark if self.mark >= 0.0 else None

    def progress_attributes(self) -> dict[str, Any]:
        """``progress.percent/current/total`` as they stand now (current only once reported)."""
        attrs: dict[str, Any] = {}
        if self.current or self.total is not None:
            attrs[A.CURRENT] = self.current
        pct = self.percent()
        if pct is not None:
            attrs[A.PERCENT] = round(pct, 2)
        if self.total is not None:
            attrs[A.TOTAL] = self.total
        return attrs


class Run:
    """The state of one tracked run (a Celery task, or a TaskUpdater/Observer outside one)."""

    def __init__(
        self,
        task_uuid: str,
        task_name: str,
        *,
        span_name: str | None = None,
        expected_sections: int | None = None,
        celery_task: Any = None,
        celery_task_id: str | None = None,
        attempt: int = 1,
        include_traceback: bool = False,
    ) -> None:
        self.task_uuid = task_uuid
        self.task_name = task_name
        self.expected_sections = expected_sections
        self.celery_task = celery_task
        self.celery_task_id = celery_task_id
        self.attempt = attempt
        self.include_traceback = include_traceback
        self.log = BoundedLog()
        self.verbose = False  # TaskUpdater(verbose=1): every log line also goes to logging
        self.description = ""
        self.start = time.time()
        self.end: float | None = None
        self.last_progress = self.start
        self.finished = False
        self.state: RunState = RUNNING
        self.celery_state = "PROGRESS"
        self.failed = False  # a job failed, or Observer.fail()/exception() was called
        self.exc_type: str | None = None
        self.exc_message: str | None = None
        self.latest_exc: BaseException | None = None
        self.latest_traceback: str | None = None
        self.jobs_finished = 0
        self.jobs_total = 0
        self.top_closed = 0
        self.top_count = 0
        self.open_top: dict[int, Node] = {}
        self._open_all: dict[int, Node] = {}
        self.children: list[str] = []
        self.extra: dict[str, Any] = {}  # Observer's meta= keys, published as mastf did
        self.lock = threading.RLock()
        self.counted_exc: BaseException | None = None

        current = trace.get_current_span()
        self.owns_span = not (celery_task_id is not None and current.is_recording())
        if self.owns_span:
            span = tracer.start_span(span_name or task_name, start_time=time.time_ns())
            _open_runs.add(self)
        else:
            span = current
        if span.is_recording():
            span.set_attribute(A.TASK_UUID, task_uuid)
            span.set_attribute(A.TASK_NAME, task_name)
        self.node = Node(task_name, None, span)
        _metrics.track_running(self)

    # --- span helpers --------------------------------------------------------------------------
    @property
    def span(self) -> Span:
        """The run span: the Celery ``run/<task>`` span, or one this run opened."""
        return self.node.span

    def parent_context(self) -> otel_context.Context:
        """Context whose current span is the run span (parent of top-level sections)."""
        return trace.set_span_in_context(self.node.span)

    def trace_ids(self) -> tuple[str | None, str | None]:
        """Hex trace and span id of the run span, or (None, None) without an SDK."""
        ctx = self.node.span.get_span_context()
        if not ctx.is_valid:
            return None, None
        return trace.format_trace_id(ctx.trace_id), trace.format_span_id(ctx.span_id)

    # --- sections ------------------------------------------------------------------------------
    def open_section(self, name: str, parent: Node | None) -> Node:
        """Create a section node under ``parent`` (the run when None) with its span started."""
        parent_node = parent or self.node
        if parent is None:
            ctx = self.parent_context()
        else:
            ctx = otel_context.get_current()
            if not trace.get_current_span(ctx).get_span_context().is_valid:
                ctx = trace.set_span_in_context(parent.span)
        span = tracer.start_span(name, context=ctx, attributes={
            A.SECTION_NAME: name,
            A.SECTION_DEPTH: parent_node.depth + 1,
            A.TASK_NAME: self.task_name,
        })
        node = Node(name, parent_node, span)
        with self.lock:
            parent_node.add_child(node)
            self._open_all[id(node)] = node
            if parent is None:
                self.top_count += 1
                self.open_top[id(node)] = node
        self._log("\t - " + safe_str(name))
        self.last_progress = node.start
        return node

    def close_section(self, node: Node, exc: BaseException | None) -> bool:
        """End ``node``'s span and count its job; return True when ``exc`` is an error."""
        if node.state != RUNNING:
            return False  # already closed (e.g. by the task-end hook)
        end = time.time()
        node.end = end
        span = node.span
        recording = span.is_recording()
        is_error = exc is not None and not is_control_flow(exc)
        leaf = not node.has_children
        counted_here = False
        if exc is None:
            node.state = SUCCEEDED
        elif not is_error:
            node.state = SUCCEEDED
            node.interrupted = type_name(exc)
        else:
            assert exc is not None
            node.state = FAILED
            node.error = exception_text(exc)
            counted_here = self.counted_exc is not exc
            self.counted_exc = exc  # exceptions do not support weakrefs; latest_exc holds it too
            self.remember_exception(exc)
        if recording:
            attrs = node.progress_attributes()
            attrs[A.SECTION_STATE] = node.state
            if exc is not None:
                record_exception(span, exc)
                if is_error:
                    attrs[A.ERROR_TYPE] = type_name(exc)
                    span.set_status(Status(StatusCode.ERROR, node.error))
                else:
                    attrs[A.INTERRUPTED] = node.interrupted
            span.set_attributes(attrs)
        spent = _time_spent(end - node.start)
        with self.lock:
            if node.state == FAILED:
                self._log("\t\tFailed")
                self._log(spent)
                if counted_here:
                    assert exc is not None
                    self.failed = True
                    self.jobs_total += 1
                    self._log("\t\tSee error message:\n" + exception_class_line(exc))
            elif node.interrupted is not None:
                self._log(f"\t\tInterrupted: {node.interrupted}")
                self._log(spent)
            elif leaf:
                self.jobs_total += 1
                self.jobs_finished += 1
                self._log("\t\tSuccessfully completed")
                self._log(spent)
            self._open_all.pop(id(node), None)
            if node.parent is self.node:
                self.open_top.pop(id(node), None)
                self.top_closed += 1
            self.last_progress = end
        span.end(end_time=int(end * 1e9))
        _metrics.record_section(self.task_name, node.name, node.state, end - node.start)
        return is_error

    def _log(self, line: str) -> None:
        self.log.append(line)
        if self.verbose:
            logger.info("%s", line)

    def open_nodes(self) -> list[Node]:
        """Sections entered and not yet left."""
        with self.lock:
            return list(self._open_all.values())

    def remember_exception(self, exc: BaseException) -> None:
        """Keep ``exc`` as the run's latest exception (payload keys, the run span's error.type)."""
        self.latest_exc = exc
        self.exc_type = type(exc).__name__
        self.exc_message = exception_text(exc)
        if self.include_traceback:
            import traceback

            try:
                self.latest_traceback = safe_str(
                    "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)), 8000
                )
            except Exception:
                self.latest_traceback = None

    # --- notifications -------------------------------------------------------------------------
    def notify(self, node: Node, text: str, attributes: dict[str, Any] | None) -> None:
        """A span event on ``node`` (name = message) plus a log line."""
        self.description = text
        self.last_progress = time.time()
        self._log("\t" + text)
        span = node.span
        if span.is_recording():
            attrs = node.progress_attributes()
            if attributes:
                attrs.update(attributes)
            span.add_event(text, attrs)

    # --- finishing -----------------------------------------------------------------------------
    def finish(self, *, outcome: RunState | None = None, final_line: bool = True) -> bool:
        """Mark the run finished (idempotent); return False when it already was."""
        with self.lock:
            if self.finished:
                return False
            self.finished = True
            self.end = time.time()
            if outcome is not None:
                self.state = outcome
                if outcome == FAILED:
                    self.failed = True
            else:
                self.state = FAILED if self.failed else SUCCEEDED
            if final_line:
                self._log(
                    f"\tTask Finished - {self.jobs_finished} out of {self.jobs_total} jobs finished"
                )
        _metrics.untrack(self)
        self._finish_span()
        return True

    @guarded()
    def _finish_span(self) -> None:
        span = self.node.span
        if span.is_recording():
            attrs = self.node.progress_attributes()
            attrs[A.PERCENT] = round(self.overall_percent()[0], 2)
            attrs[A.JOBS_FINISHED] = self.jobs_finished
            attrs[A.JOBS_TOTAL] = self.jobs_total
            attrs[A.STATUS] = self.status
            attrs[A.SECTION_STATE] = self.state
            span.set_attributes(attrs)
            if self.state in (FAILED, "revoked"):
                desc = self.exc_message or f"{self.jobs_finished} out of {self.jobs_total} jobs"
                span.set_status(Status(StatusCode.ERROR, desc))
                # An attribute, not a second exception record: fine on run/<task> too.
                error_type = type_name(self.latest_exc) if self.latest_exc else self.exc_type
                if error_type:
                    span.set_attribute(A.ERROR_TYPE, error_type)
            elif self.owns_span:
                # OK is final in the SDK: set it only on a span otel_progress owns.
                span.set_status(Status(StatusCode.OK))
        if self.owns_span:
            span.end(end_time=int((self.end or time.time()) * 1e9))
            _open_runs.discard(self)

    def sync_span_attributes(self) -> None:
        """Push counters to open spans (the flusher calls this; the hot path never does)."""
        if self.finished:
            return
        span = self.node.span
        if span.is_recording():
            attrs = self.node.progress_attributes()
            attrs[A.PERCENT] = round(self.overall_percent()[0], 2)
            span.set_attributes(attrs)
        for node in list(self.open_top.values()):
            if node.span.is_recording() and node.state == RUNNING:
                node.span.set_attributes(node.progress_attributes())

    # --- derived values ------------------------------------------------------------------------
    @property
    def status(self) -> int:
        """Seed status: 2 running, 1 every job succeeded, 0 a job failed (or revoked)."""
        if not self.finished:
            return 2
        return 0 if self.failed or self.state in (FAILED, "revoked") else 1

    def overall_percent(self) -> tuple[float, bool]:
        """(percent 0..100, indeterminate) following DECISIONS 8."""
        if self.finished:
            return 100.0, False
        own = self.node.percent()
        if own is not None:
            return own, False
        with self.lock:
            open_nodes = list(self.open_top.values())
            closed = self.top_closed
            seen = self.top_count
        denominator = self.expected_sections or seen
        known = [p for p in (n.percent() for n in open_nodes) if p is not None]
        if not denominator or (not closed and not known and not self.expected_sections):
            return 0.0, True
        total = closed * 100.0 + sum(known)
        return clamp_percent(total / max(denominator, closed + len(open_nodes))), False

    def current_total(self, percent: float) -> tuple[int | float, int | float]:
        """celery-progress's ``current``/``total``: the run's own counters when it has them."""
        node = self.node
        if node.total:
            return node.current, node.total
        if node.explicit_pct is None and self.expected_sections:
            return self.top_closed, self.expected_sections
        return round(percent, 2), 100

    # --- payload -------------------------------------------------------------------------------
    def payload(self) -> ProgressPayload:
        """Build the versioned payload (bounded in size; never NaN; JSON-safe)."""
        with self.lock:
            percent, indeterminate = self.overall_percent()
            current, total = self.current_total(percent)
            trace_id, span_id = self.trace_ids()
            data: ProgressPayload = {
                "schema": SCHEMA_VERSION,
                "state": self.state,
                "pending": self.state == "queued",
                "current": current,
                "total": total,
                "percent": round(percent, 2),
                "indeterminate": indeterminate,
                "description": self.description,
                "exc_type": self.exc_type if self.failed else None,
                "exc_message": self.exc_message if self.failed else None,
                "task_name": self.task_name,
                "task_uuid": self.task_uuid,
                "start": iso(self.start),
                "end": iso(self.end),
                "log": self.log.text(),
                "exception": self.exc_message if self.latest_exc is not None or self.failed
                else None,
                "finished": self.finished,
                "status": self.status,
                "jobs": JobsPayload(finished=self.jobs_finished, total=self.jobs_total),
                "sections": _tree(self.node),
                "trace_id": trace_id,
                "span_id": span_id,
                "attempt": self.attempt,
                "children": list(self.children[-100:]),
                "updated": iso(time.time()) or "",
            }
            if self.include_traceback:
                data["traceback"] = self.latest_traceback
            for key, value in self.extra.items():
                data.setdefault(key, _json_safe(value))  # type: ignore[misc]
        return _fit(data)


def _json_safe(value: Any) -> Any:
    """A caller's meta value as JSON can carry it (others become capped text, NaN null)."""
    try:
        return json.loads(json.dumps(value, default=safe_str, allow_nan=False))
    except (TypeError, ValueError, RecursionError):
        return safe_str(value)


def _time_spent(seconds: float) -> str:
    """The seed's ``Time spent: 0h0m`` line."""
    secs = int(seconds)
    return f"\t\tTime spent: {secs // 3600}h{(secs // 60) % 60}m"


def _section_payload(node: Node) -> SectionPayload:
    pct = node.percent()
    return SectionPayload(
        name=safe_str(node.name, MAX_NAME),
        state=node.state,  # type: ignore[typeddict-item]
        percent=None if pct is None else round(pct, 2),
        start=iso(node.start),
        end=iso(node.end),
        error=node.error,
        interrupted=node.interrupted,
        children=[],
    )


def _tree(root: Node) -> list[SectionPayload]:
    """The section tree with at most PAYLOAD_MAX_NODES nodes and PAYLOAD_MAX_DEPTH levels."""
    budget = [PAYLOAD_MAX_NODES]

    def build(node: Node) -> list[SectionPayload]:
        head, omitted, tail = node.children()
        out: list[SectionPayload] = []
        skipped = omitted
        for child in (*head, None, *tail):
            if child is None:
                if skipped:
                    out.append(SectionPayload(name=OMITTED_NAME, omitted=skipped))
                skipped = 0
                continue
            if budget[0] <= 0:
                skipped += 1
                continue
            budget[0] -= 1
            item = _section_payload(child)
            if child.has_children:
                if child.depth >= PAYLOAD_MAX_DEPTH:
                    sub_head, sub_omitted, sub_tail = child.children()
                    item["children"] = [SectionPayload(
                        name=OMITTED_NAME, omitted=len(sub_head) + sub_omitted + len(sub_tail)
                    )]
                else:
                    item["children"] = build(child)
            out.append(item)
        if skipped:
            out.append(SectionPayload(name=OMITTED_NAME, omitted=skipped))
        return out

    return build(root)


def _fit(data: ProgressPayload) -> ProgressPayload:
    """Trim the log, then the tree, until the payload is under MAX_PAYLOAD_BYTES."""
    try:
        size = len(dumps(data).encode("utf-8"))
    except (TypeError, ValueError) as exc:  # never ship a non-JSON payload
        internal_error("payload", exc)
        data["sections"] = []
        data["log"] = ""
        return data
    if size <= MAX_PAYLOAD_BYTES:
        return data
    over = size - MAX_PAYLOAD_BYTES
    log = data["log"]
    if len(log) > over + 64:
        cut = len(log) - over - 64
        data["log"] = "\t… trimmed …\n" + log[-cut:]
    if len(dumps(data).encode("utf-8")) > MAX_PAYLOAD_BYTES:
        count = len(data["sections"])
        data["sections"] = [SectionPayload(name=OMITTED_NAME, omitted=count)]
    if len(dumps(data).encode("utf-8")) > MAX_PAYLOAD_BYTES:
        data["log"] = data["log"][-2048:]
        data["description"] = data["description"][:200]
    return data


# Runs whose span otel_progress opened: ended at the latest at process exit (strong refs on
# purpose: a run whose facade was dropped unfinished must still end its span).
_open_runs: set[Run] = set()


def end_open_runs() -> None:
    """No run span is ever left unended: finish what is still open when the process exits."""
    for run in list(_open_runs):
        try:
            run.finish(final_line=True)
        except Exception as exc:  # pragma: no cover - exit path
            internal_error("atexit", exc)


