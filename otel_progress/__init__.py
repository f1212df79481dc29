"""otel_progress: the progress of Celery tasks as OpenTelemetry traces and as live progress
metadata for web frontends, from the same two seed APIs (``TaskUpdater`` and ``Observer``)."""

from otel_progress._config import configure, dropped_spans, force_flush, reset, shutdown
from otel_progress._observer import Observer
from otel_progress._payload import JobsPayload, ProgressPayload, SectionPayload
from otel_progress._publish import set_min_interval
from otel_progress._redact import default_redact
from otel_progress._run import TaskCancelled
from otel_progress._sections import Section, TaskUpdater
from otel_progress._threads import ProgressExecutor, propagate
from otel_progress._track import track
from otel_progress._version import __version__

__all__ = [
    "JobsPayload",
    "Observer",
    "ProgressExecutor",
    "ProgressPayload",
    "Section",
    "SectionPayload",
    "TaskCancelled",
    "TaskUpdater",
    "__version__",
    "configure",
    "default_redact",
    "dropped_spans",
    "force_flush",
    "propagate",
    "reset",
    "set_min_interval",
    "shutdown",
    "track",
]
