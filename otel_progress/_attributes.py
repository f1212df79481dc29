"""Every span attribute, event and metric name otel_progress emits, in one place.

Each constant documents its type, unit and range. Tests assert these exact keys; dashboards,
TraceQL queries and the collector configs in ``collector-config/`` rely on them.
"""

from __future__ import annotations

from typing import Final

# --- span attributes (run span and section spans) ----------------------------------------------
PERCENT: Final = "otel_progress.percent"
"""float, percent, 0.0..100.0 (clamped, never NaN). Overall on the run span, own on a section."""
CURRENT: Final = "otel_progress.current"
"""int or float, items done, >= 0 (set by ``progress(current=)``/``advance()``/Observer; absent
until something was reported)."""
TOTAL: Final = "otel_progress.total"
"""int or float, items expected, > 0 (absent when unknown)."""
TASK_UUID: Final = "otel_progress.task_uuid"
"""str, the TaskUpdater's ``task_uuid`` (the Celery task id inside a task). Run span only:
sections reach it through their trace."""
TASK_NAME: Final = "otel_progress.task_name"
"""str, the TaskUpdater's ``task_name`` (the Celery task name inside a task). Run span and every
section (a span-metrics dimension)."""
SECTION_NAME: Final = "otel_progress.section"
"""str, the section's name as given (also the span name)."""
SECTION_STATE: Final = "otel_progress.state"
"""str, one of ``running, succeeded, failed`` on sections; the run's payload state on the run."""
SECTION_DEPTH: Final = "otel_progress.depth"
"""int, >= 1: 1 for a top-level section, 2 for its children, ..."""
JOBS_FINISHED: Final = "otel_progress.jobs.finished"
"""int, >= 0, jobs that succeeded so far (set on the run span when it ends)."""
JOBS_TOTAL: Final = "otel_progress.jobs.total"
"""int, >= 0, jobs (leaf or failed sections) closed so far."""
STATUS: Final = "otel_progress.status"
"""int, the seed's status: 2 running, 1 every job succeeded, 0 a job failed (run span only)."""
INTERRUPTED: Final = "otel_progress.interrupted"
"""str, set when control flow (Retry, Ignore, Reject, KeyboardInterrupt, ...) left a section:
the exception's qualified type name. Not an error."""
POST_MORTEM: Final = "otel_progress.post_mortem"
"""bool, True on a span the main worker process ended for a process that died with it open
(SIGKILL, hard time limit, OOM, revoke): its end time is the moment of death, status ERROR."""
PLACEHOLDER: Final = "otel_progress.placeholder"
"""bool, always true: a live placeholder (``configure(live=True)``), a zero-duration span that
shows a run or section in the trace backend while it is still running. Never on a real span.
Hide placeholders with TraceQL ``{ span.otel_progress.placeholder != true }``."""
REAL_SPAN_ID: Final = "otel_progress.span_id"
"""str, 16 lower-case hex digits: on a placeholder, the span id of the real run or section span
it stands for (the placeholder has its own, new span id)."""
CANCEL_REQUESTED: Final = "otel_progress.cancelled"
"""bool, true on the run span and the section that ``TaskCancelled`` left when a cancel
requested from the page or ``request_cancel()`` stopped the task (state ``revoked``)."""
ERROR_TYPE: Final = "error.type"
"""str, OTel semantic convention: qualified type name of the exception that failed the span."""

# --- span events -------------------------------------------------------------------------------
# A notification's event name is its message (truncated to MAX_MESSAGE characters).
MAX_MESSAGE: Final = 1000
"""Characters kept of a message: event name, log line, payload description (the one cap)."""

# --- metrics (OTel metrics API; exported with the same configuration as spans) -------------------
METRIC_SECTIONS: Final = "otel_progress.sections"
"""Counter, {section}: finished sections. Labels: task_name, section_name, status.
Prometheus: ``otel_progress_sections_total``."""
METRIC_SECTION_DURATION: Final = "otel_progress.section.duration"
"""Histogram, s: section wall time, buckets 0.1 s .. 1 h. Labels: task_name, section_name, status.
Prometheus: ``otel_progress_section_duration_seconds_{bucket,sum,count}``."""
METRIC_PROGRESS_AGE: Final = "otel_progress.progress.age"
"""Gauge, s: for each task name, the largest time since a running run last reported progress
(0 when none runs). A stuck span never ends, so this is what "stopped reporting" alerts use.
Prometheus: ``otel_progress_progress_age_seconds``. Label: task_name."""
METRIC_RUNS_RUNNING: Final = "otel_progress.runs.running"
"""Gauge, {run}: for each task name, the runs in this process that are running now (tracked
by a TaskUpdater/Observer and not finished). Prometheus: ``otel_progress_runs_running``.
Label: task_name. A running task has no ended span, so span metrics cannot count it."""
METRIC_SPANS_DROPPED: Final = "otel_progress.spans.dropped"
"""Counter, {span}: spans lost before reaching the collector; ``error.type`` is ``queue_full``,
``export_failed`` or ``shutdown`` (given up at the shutdown bound)."""

LABEL_TASK_NAME: Final = "task_name"
LABEL_SECTION_NAME: Final = "section_name"
LABEL_STATUS: Final = "status"
MAX_LABEL_VALUES: Final = 200
"""Distinct values kept per metric label; later ones are reported as ``other``."""
SECTION_DURATION_BUCKETS: Final = (
    0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0,
)
"""Histogram bucket bounds (seconds) fit for long tasks: 100 ms up to one hour."""
