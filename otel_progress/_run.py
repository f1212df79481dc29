"""One tracked run's state: the section tree, counters, the seed log and the state vocabulary.

``TaskUpdater`` and ``Observer`` are facades over a :class:`Run`; inside a Celery task both share
the task's run. This room holds no OpenTelemetry and no Celery: a node keeps its span as an
opaque handle that only ``_spans`` touches, and the payload is built from these fields by
``_payload``. The hot path (``advance``, ``progress``) only touches counters on a :class:`Node`.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any, Final, Literal

from otel_progress._log import INDENT, BoundedLog
from otel_progress._safety import (
    MAX_INT,
    clamp_percent,
    exception_class_line,
    exception_text,
    logger,
    redact,
    safe_str,
    type_name,
)

RunState = Literal["queued", "running", "retrying", "succeeded", "failed", "revoked"]
"""The one state vocabulary (DECISIONS 7): payload ``state``, history index, widget."""
SectionState = Literal["running", "succeeded", "failed", "revoked"]
"""``revoked``: a cancel (``TaskCancelled``) left the section; not a failure (issue 14)."""

QUEUED: Final = "queued"
RUNNING: Final = "running"
RETRYING: Final = "retrying"
SUCCEEDED: Final = "succeeded"
FAILED: Final = "failed"
REVOKED: Final = "revoked"
FINAL_STATES: Final[frozenset[str]] = frozenset({SUCCEEDED, FAILED, REVOKED})

STATUS_FAILED: Final = 0
STATUS_COMPLETED: Final = 1
STATUS_RUNNING: Final = 2

CHILDREN_HEAD: Final = 10
"""Children of a node kept from the start (memory and payload cap)."""
CHILDREN_TAIL: Final = 10
"""Children of a node kept from the end."""
MAX_CHILD_TASKS: Final = 10_000
"""Child task ids a run remembers (the reader aggregates all of them)."""

Outcome = Literal["succeeded", "failed", "interrupted", "aborted", "cancelled"]
"""How a section ended: normally; with an error; by control flow that steers the task (Retry,
Ignore, Reject: it reads succeeded); or cut short without an error (SystemExit,
KeyboardInterrupt, a revoke: it reads failed at the percent it had, but is no failed job); or
left by ``TaskCancelled`` (a cancel requested from the page: it reads revoked, no failed job)."""


class TaskCancelled(BaseException):
    """A cancel was requested for this task (``POST /tasks/<id>/cancel``, ``request_cancel()``).

    Raised at the task's next section boundary, ``notify()`` or ``raise_if_cancelled()`` once the
    flusher saw the request. A ``BaseException`` (like ``asyncio.CancelledError``), so the
    ``except Exception`` of a task body does not swallow it and a section never suppresses it;
    the run, and every section it leaves, read ``revoked``, not ``failed``.
    """


class Node:
    """A section (or the run itself, depth 0): counters on the hot path, the rest at close."""

    __slots__ = (
        "__weakref__", "_children_head", "_children_tail", "_omitted", "child_attrs",
        "current", "depth", "end", "error", "error_type", "event_attrs", "explicit_pct",
        "has_children", "interrupted", "mark", "name", "parent", "span", "start", "state",
        "total",
    )

    def __init__(self, name: str, parent: Node | None, span: Any = None) -> None:
        self.name = name
        self.parent = parent
        self.depth: int = 0 if parent is None else parent.depth + 1
        self.span = span  # an OpenTelemetry span, handled by _spans only
        self.event_attrs: tuple[Any, ...] | None = None  # _spans' memo of the event attributes
        self.child_attrs: tuple[Any, ...] | None = None  # _spans' memo: its children's span's
        self.start = time.time()
        self.end: float | None = None
        self.state: SectionState = RUNNING
        self.current: int | float = 0
        self.total: int | float | None = None
        self.explicit_pct: float | None = None
        self.mark = -1.0  # high-water mark of the percent: a section never goes backwards
        self.error: str | None = None
        self.error_type: str | None = None
        self.interrupted: str | None = None
        self.has_children = False
        # Made on the first child (and the tail on the eleventh): most sections have none, and
        # a deque is the dearest allocation of a section.
        self._children_head: list[Node] | None = None
        self._children_tail: deque[Node] | None = None
        self._omitted = 0

    def add_child(self, child: Node) -> None:
        """Keep the first and last children only: 10,000 sections must not grow memory."""
        head = self._children_head
        if head is None:
            self._children_head = [child]
            self.has_children = True
            return
        if len(head) < CHILDREN_HEAD:
            head.append(child)
            return
        tail = self._children_tail
        if tail is None:
            tail = self._children_tail = deque(maxlen=CHILDREN_TAIL)
        elif len(tail) == CHILDREN_TAIL:
            self._omitted += 1
        tail.append(child)

    def children(self) -> tuple[list[Node], int, list[Node]]:
        """(head, omitted count, tail)."""
        head, tail = self._children_head, self._children_tail
        return ([] if head is None else head), self._omitted, ([] if tail is None else list(tail))

    def percent(self) -> float | None:
        """The percent this node reported (explicit wins over current/total), never lower than
        before; None when it reported nothing. Closing a section does not change it."""
        pct = self.explicit_pct
        total = self.total
        if pct is None and total:
            current = self.current
            if current.__class__ is int and current > MAX_INT:
                current = MAX_INT
            try:
                pct = current / total * 100.0  # a float: clamp_percent, inline (every notify)
            except (TypeError, ZeroDivisionError, OverflowError, ValueError):
                pct = None
            else:
                if pct < 0.0:
                    pct = 0.0
                elif pct > 100.0:
                    pct = 100.0
        if pct is not None and pct > self.mark:
            self.mark = pct
        return self.mark if self.mark >= 0.0 else None

    def shown_percent(self) -> float | None:
        """What a frontend shows: a succeeded section is 100, any other its own percent."""
        return 100.0 if self.state == SUCCEEDED else self.percent()

    def counters(self) -> tuple[int | float | None, int | float | None, float | None]:
        """(current once reported, total, percent), clamped for JSON and span attributes."""
        current: int | float | None = None
        if self.current or self.total is not None:
            current = self.current
            if current.__class__ is int and not -MAX_INT <= current <= MAX_INT:
                current = MAX_INT if current > 0 else -MAX_INT
        pct = self.percent()
        return current, self.total, None if pct is None else round(pct, 2)


class Run:
    """The state of one tracked run (a Celery task, or a TaskUpdater/Observer outside one)."""

    def __init__(
        self,
        task_uuid: str,
        task_name: str,
        *,
        expected_sections: int | None = None,
        celery_task_id: str | None = None,
        attempt: int = 1,
        include_traceback: bool = False,
    ) -> None:
        self.task_uuid = task_uuid
        self.task_name = task_name
        self.expected_sections = expected_sections
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
        self.complete = False  # finished by reaching its end (not killed, revoked, raised)
        self.state: RunState = RUNNING
        self.celery_state = "PROGRESS"
        self.failed = False  # a job failed, or Observer.fail()/exception() was called
        self.exc_type: str | None = None
        self.exc_message: str | None = None
        self.error_type: str | None = None  # qualified, for the span's error.type
        self.latest_exc: BaseException | None = None
        self.latest_traceback: str | None = None
        self.jobs_finished = 0
        self.jobs_total = 0
        self.top_closed = 0
        self.top_count = 0
        self.high_water = 0.0  # the overall percent never decreases within an attempt
        self.open_top: dict[Node, Node] = {}  # keyed by the node itself (identity): no id() call
        self._open_all: dict[Node, Node] = {}
        self.children: list[str] = []
        self.retry_at: float | None = None  # when a retrying run's next attempt is due
        self.extra: dict[str, Any] = {}  # Observer's meta= keys, published as mastf did
        self.lock = threading.RLock()
        self.counted_exc: BaseException | None = None
        self.trace_id: str | None = None
        self.span_id: str | None = None
        self.owns_span = True
        self.cancel_requested = False
        """Set by the flusher when the backend holds a cancel request for the task: the hot
        path's one attribute read at a section boundary and ``notify()``."""
        self.cancelled = False
        """TaskCancelled was raised for this run: it ends ``revoked`` even if the task caught it."""
        self.ends_on_drop = celery_task_id is None
        """Nobody ends this run at a task end: its facade does when it is dropped."""
        self.node = Node(task_name, None)
        self._last_line = ("", " - ")
        """The last section name and its log line (" - " + name): made once for a loop's."""
        self.dying_spans: list[Any] = []
        """Open spans of a run whose process is being killed (SIGTERM before SIGKILL): left
        unended, listed in the final payload's private part for the main process to end."""

    # --- sections ------------------------------------------------------------------------------
    def add_section(self, name: str, parent: Node | None) -> Node:
        """A new running section under ``parent`` (the run when None)."""
        parent_node = parent or self.node
        node = Node(name, parent_node)
        lock = self.lock
        lock.acquire()  # acquire/release: half the cost of ``with`` on a lock, twice a section
        try:
            parent_node.add_child(node)
            self._open_all[node] = node
            if parent is None:
                self.top_count += 1
                self.open_top[node] = node
        finally:
            lock.release()
        last_name, rest = self._last_line  # one tuple: threads never see a torn pair
        if name is not last_name:  # a loop's sections share their (redacted) name object
            rest = " - " + name
            self._last_line = (name, rest)
        self.log.add(rest)  # not through _log: one call less on every section
        if self.verbose:
            logger.info("%s", INDENT + rest)
        self.last_progress = node.start
        return node

    def close_section(self, node: Node, outcome: Outcome, exc: BaseException | None) -> bool:
        """Count ``node``'s job and write its log lines; False when it was already closed."""
        if node.state != RUNNING:
            return False
        end = time.time()
        node.end = end
        if node.total or node.explicit_pct is not None:
            node.percent()  # freeze the high-water mark before the state changes
        counted_here = False
        if outcome == SUCCEEDED:
            node.state = SUCCEEDED
        elif outcome == FAILED:
            node.state = FAILED
            if exc is not None:
                node.error = exception_text(exc)
                node.error_type = type_name(exc)
                counted_here = self.counted_exc is not exc
                self.counted_exc = exc  # exceptions do not support weakrefs
                self.remember_exception(exc)
            else:
                counted_here = True
        elif outcome == "cancelled":
            node.state = REVOKED
            node.interrupted = type_name(exc) if exc is not None else "TaskCancelled"
        elif outcome == "aborted":
            node.state = FAILED
            if exc is not None:
                node.interrupted = type_name(exc)
            else:
                node.error_type = "Terminated"
        else:
            node.state = SUCCEEDED
            if outcome == "interrupted" and exc is not None:
                node.interrupted = type_name(exc)
        took = end - node.start
        spent = _SPENT_UNDER_A_MINUTE if -1.0 < took < 60.0 else _time_spent(took)
        lock = self.lock
        lock.acquire()
        try:
            if node.interrupted is not None:
                self._log2(f"\tInterrupted: {node.interrupted}", spent)
            elif node.state == FAILED:
                self._log2("\tFailed", spent)
                if counted_here:
                    self.failed = True
                    self.jobs_total += 1
                    if exc is not None:
                        self._log("\tSee error message:\n" + exception_class_line(exc))
            elif not node.has_children:
                self.jobs_total += 1
                self.jobs_finished += 1
                self.log.add2(_SUCCEEDED_LINE, spent)  # not through _log2: one call less
                if self.verbose:
                    logger.info("%s", INDENT + _SUCCEEDED_LINE)
                    logger.info("%s", INDENT + spent)
            self._open_all.pop(node, None)
            if node.parent is self.node:
                self.open_top.pop(node, None)
                self.top_closed += 1
            self.last_progress = end
        finally:
            lock.release()
        return True

    def progress_mark(self) -> tuple[object, ...]:
        """What moves when the run progresses without stamping the clock: ``advance()``,
        ``track()`` and ``Observer.update()`` change counters only (a clock read is a third of
        their cost). The progress-age gauge compares marks between its collections."""
        with self.lock:
            nodes = list(self._open_all)
        node = self.node
        return (node.current, node.total, self.description,
                *[(n.current, n.total) for n in nodes])

    def open_nodes(self) -> list[Node]:
        """Sections entered and not yet left, innermost first."""
        with self.lock:
            return sorted(self._open_all.values(), key=lambda n: -n.depth)

    def _log(self, rest: str) -> None:
        """The log line ``INDENT + rest`` (every line of the seed's log begins with a tab)."""
        self.log.add(rest)
        if self.verbose:
            logger.info("%s", INDENT + rest)

    def _log2(self, first: str, second: str) -> None:
        self.log.add2(first, second)
        if self.verbose:
            logger.info("%s", INDENT + first)
            logger.info("%s", INDENT + second)

    def remember_exception(self, exc: BaseException) -> None:
        """Keep ``exc`` as the run's latest exception (payload keys, the run span's error.type)."""
        self.latest_exc = exc
        self.exc_type = type(exc).__name__
        self.exc_message = exception_text(exc)
        self.error_type = type_name(exc)
        if self.include_traceback:
            import traceback

            try:
                self.latest_traceback = redact(safe_str(
                    "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)), 8000
                ))
            except Exception:
                self.latest_traceback = None

    def note(self, text: str) -> None:
        """A notification: the latest description and a log line."""
        self.description = text
        self.last_progress = time.time()
        self.log.add(text)  # the line INDENT + text, made when the log is read
        if self.verbose:
            logger.info("%s", INDENT + text)

    # --- finishing -----------------------------------------------------------------------------
    def finish(self, *, outcome: RunState | None = None, complete: bool = True,
               final_line: bool = True) -> bool:
        """Mark the run finished (idempotent); return False when it already was.

        ``complete`` is False when the run was cut short (killed, revoked, an exception left the
        task): its percent then stays where it was instead of reading 100.
        """
        with self.lock:
            if self.finished:
                return False
            self.high_water = self.overall_percent()[0]
            if self.cancelled and outcome is None:
                outcome, complete = REVOKED, False  # a cancel it saw: revoked, not done
            self.finished = True
            self.complete = complete and outcome != RETRYING
            self.end = time.time()
            if outcome is not None:
                self.state = outcome
                if outcome in (FAILED, REVOKED):
                    self.failed = True
            else:
                self.state = FAILED if self.failed else SUCCEEDED
            if final_line:
                self._log(
                    f"Task Finished - {self.jobs_finished} out of {self.jobs_total} jobs finished"
                )
        return True

    # --- derived values ------------------------------------------------------------------------
    @property
    def status(self) -> int:
        """Seed status: 2 running, 1 every job succeeded, 0 a job failed (or revoked)."""
        if not self.finished or self.state == RETRYING:
            return STATUS_RUNNING
        return STATUS_FAILED if self.failed or self.state in (FAILED, REVOKED) else STATUS_COMPLETED

    def overall_percent(self) -> tuple[float, bool]:
        """(percent 0..100, indeterminate) following DECISIONS 8.

        Within one attempt the percent never decreases and reads 100 only once the run
        completed. Without ``expected_sections`` the denominator is an estimate: the top-level
        sections seen so far plus one still to come, so the estimate never reaches 100 early;
        the payload says ``indeterminate: true`` only while no top-level section has closed or
        reported progress (nothing is known yet).
        """
        if self.finished:
            return (100.0 if self.complete else self.high_water), False
        own = self.node.percent()
        if own is not None:
            pct, indeterminate = min(own, 100.0), False
        else:
            with self.lock:
                open_nodes = list(self.open_top.values())
                closed = self.top_closed
                seen = self.top_count
            known = [p for p in (n.percent() for n in open_nodes) if p is not None]
            done = closed * 100.0 + sum(known)
            if self.expected_sections:
                denominator = max(self.expected_sections, seen)
                indeterminate = False
            else:
                denominator = seen + 1
                # an estimate, but a known one once a section closed or reported (issue 13:
                # indeterminate only while progress is unknown)
                indeterminate = not closed and not known
            pct = clamp_percent(done / denominator) if denominator else 0.0
        if pct >= 100.0:
            pct = 99.99  # 100 only once the run finished
        if pct > self.high_water:
            self.high_water = pct
        return self.high_water, indeterminate

    def current_total(self, percent: float) -> tuple[int | float, int | float]:
        """celery-progress's ``current``/``total``: the run's own counters when it has them."""
        node = self.node
        current, total, _ = node.counters()
        if total:
            return current or 0, total
        if node.explicit_pct is None and self.expected_sections:
            return self.top_closed, self.expected_sections
        return round(percent, 2), 100


def _time_spent(seconds: float) -> str:
    """The seed's ``Time spent: 0h0m`` line (without the indent :class:`BoundedLog` adds)."""
    secs = int(seconds)
    return f"\tTime spent: {secs // 3600}h{(secs // 60) % 60}m"


_SUCCEEDED_LINE: Final = "\tSuccessfully completed"
_SPENT_UNDER_A_MINUTE: Final = _time_spent(0.0)
"""What ``_time_spent`` gives for -1 < seconds < 60 (``int()`` truncates to 0): most sections'."""
