"""Celery integration: ``ProgressInstrumentor`` (one call turns everything on) and the reader.

::

    from otel_progress.celery import ProgressInstrumentor, get_progress

    ProgressInstrumentor().instrument()      # at import time of the Celery app module
    ...
    payload = get_progress(task_id, app=app)  # in a web view: the versioned payload or None

``opentelemetry-instrument celery -A app worker`` finds the instrumentor through the
``opentelemetry_instrumentor`` entry point, so the zero-code path needs no import at all.
Importing otel_progress connects no Celery signal: ``instrument()`` (or :func:`install`, for a
worker that uses no OpenTelemetry instrumentation) does, and ``uninstrument()`` /
:func:`uninstall` disconnect exactly what was connected.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from celery import Celery
from opentelemetry.instrumentation.instrumentor import (  # type: ignore[attr-defined]
    BaseInstrumentor,
)

from otel_progress import _backend, _celery, _metrics, _spans
from otel_progress._backend import FINAL_TIMEOUT, BackendUnavailable
from otel_progress._celery import install, uninstall
from otel_progress._package import _instruments
from otel_progress._payload import ProgressPayload

__all__ = [
    "FINAL_TIMEOUT", "BackendUnavailable", "ProgressInstrumentor", "get_progress", "install",
    "request_cancel", "uninstall",
]


class ProgressInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Turn on otel_progress for Celery: spans, the state bridge and lifecycle hooks.

    It makes sure ``opentelemetry-instrumentation-celery`` is active (so sections are children of
    ``run/<task>`` and ``apply_async`` propagates the trace), wraps ``Task.__call__`` so the final
    payload is written before Celery stores the result, and tracks published tasks as ``queued``
    and as children of the task that published them. ``uninstrument()`` undoes exactly that and
    restores the defaults.

    Options: ``min_interval`` (seconds between backend writes of a task, default 0.5),
    ``track_queued`` (default True), ``send_events`` (a Celery ``task-progress`` event with each
    progress write, default False), ``tracer_provider``/``meter_provider`` (for the Celery
    instrumentation *and* otel_progress's own section spans and metrics), ``history`` (the task
    history store: an ``otel_progress.history`` store, a URL ``redis://host:port/db`` /
    ``sqlite:///relative.db`` / ``sqlite:////absolute/path.db``, ``False`` for none; default
    ``OTEL_PROGRESS_HISTORY_URL``, else the Redis result backend's own server, else none).
    """

    _celery_instrumented_by_us = False

    def instrumentation_dependencies(self) -> Collection[str]:
        return _instruments

    def _instrument(self, **kwargs: Any) -> None:
        from opentelemetry.instrumentation.celery import CeleryInstrumentor

        min_interval = kwargs.get("min_interval")
        _celery.configure_bridge(
            min_interval=None if min_interval is None else float(min_interval),
            track_queued=kwargs.get("track_queued"),
            send_events=kwargs.get("send_events"),
        )
        _backend.set_history(kwargs.get("history"))
        _spans.use_tracer_provider(kwargs.get("tracer_provider"))
        _metrics.use_meter_provider(kwargs.get("meter_provider"))
        celery_instrumentor = CeleryInstrumentor()  # type: ignore[no-untyped-call]
        if not celery_instrumentor.is_instrumented_by_opentelemetry:
            celery_instrumentor.instrument(
                tracer_provider=kwargs.get("tracer_provider"),
                meter_provider=kwargs.get("meter_provider"),
            )
            type(self)._celery_instrumented_by_us = True
        install()

    def _uninstrument(self, **kwargs: Any) -> None:
        from opentelemetry.instrumentation.celery import CeleryInstrumentor

        uninstall()
        _backend.set_history(None)
        _spans.use_tracer_provider(None)
        _metrics.use_meter_provider(None)
        if type(self)._celery_instrumented_by_us:
            CeleryInstrumentor().uninstrument()  # type: ignore[no-untyped-call]
            type(self)._celery_instrumented_by_us = False


def get_progress(
    task_id: str, app: Celery | None = None, *, children: bool = True
) -> ProgressPayload | None:
    """The versioned payload of a task otel_progress tracks, or None (never tracked/unknown).

    Reads otel_progress's own key (queued, running and final payloads), else Celery's
    ``PROGRESS`` meta, and reconciles it with Celery's state: a task that died without its final
    write (a killed child, a revoke) reads finished with Celery's exception, its last progress
    kept. With ``children``, adds ``children_progress`` aggregated over every child task.
    Raises :class:`BackendUnavailable` when the result backend does not answer in time.
    """
    if app is None:
        from celery import current_app

        app = current_app
    return _backend.read(app, str(task_id), children=children)


def request_cancel(task_id: str, app: Celery | None = None) -> bool:
    """Ask a running task to stop cooperatively; True when the request was stored.

    The request lives in the result backend (a key of its own, with the results' expiry). The
    task's flusher reads it within one write interval (``min_interval``, 0.5 s by default), and
    the task raises :class:`otel_progress.TaskCancelled` at its next section boundary,
    ``notify()`` or ``raise_if_cancelled()`` (``updater.cancelled`` tells a loop that checks).
    The run then reads ``revoked`` (not failed) on spans and payload, and Celery stores REVOKED.
    A task that never checks runs on (``app.control.revoke(task_id, terminate=True)`` still
    stops it). False on backends that hold no keys (rpc://, database); raises
    :class:`BackendUnavailable` when the backend does not answer in time::

        request_cancel(result.id, app=app)
    """
    if app is None:
        from celery import current_app

        app = current_app
    return _backend.request_cancel(app, str(task_id))
