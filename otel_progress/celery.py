"""Celery integration: ``ProgressInstrumentor`` (one call turns everything on) and the reader.

::

    from otel_progress.celery import ProgressInstrumentor, get_progress

    ProgressInstrumentor().instrument()      # at import time of the Celery app module
    ...
    payload = get_progress(task_id, app=app)  # in a web view: the versioned payload or None

``opentelemetry-instrument celery -A app worker`` finds the instrumentor through the
``opentelemetry_instrumentor`` entry point, so the zero-code path needs no import at all.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from typing import Any

from opentelemetry.instrumentation.instrumentor import (  # type: ignore[attr-defined]
    BaseInstrumentor,
)

from otel_progress import _bridge, _hooks, _lifecycle
from otel_progress._bridge import FINAL_TIMEOUT
from otel_progress._package import _instruments
from otel_progress._payload import FINAL_STATES, SCHEMA_VERSION, ProgressPayload

__all__ = ["FINAL_TIMEOUT", "ProgressInstrumentor", "get_progress"]

_CELERY_FINAL = {"SUCCESS": "succeeded", "FAILURE": "failed", "REVOKED": "revoked"}
MAX_CHILDREN_READ = 100
"""Children whose progress the reader aggregates at most (the first ones listed)."""


class ProgressInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Turn on otel_progress for Celery: spans, the state bridge and lifecycle hooks.

    It makes sure ``opentelemetry-instrumentation-celery`` is active (so sections are children of
    ``run/<task>`` and ``apply_async`` propagates the trace), wraps ``Task.__call__`` so the final
    payload is written before Celery stores the result, tracks published tasks as ``queued``
    and as children of the task that published them. ``uninstrument()`` undoes exactly that.

    Options: ``min_interval`` (seconds between backend writes of a task, default 0.5),
    ``track_queued`` (default True), ``send_events`` (a Celery ``task-progress`` event with each
    progress write, default False), ``tracer_provider``/``meter_provider`` for the Celery
    instrumentation.
    """

    _celery_instrumented_by_us = False

    def instrumentation_dependencies(self) -> Collection[str]:
        return _instruments

    def _instrument(self, **kwargs: Any) -> None:
        from opentelemetry.instrumentation.celery import CeleryInstrumentor

        if "min_interval" in kwargs:
            _bridge.set_min_interval(float(kwargs["min_interval"]))
        _hooks.track_queued = bool(kwargs.get("track_queued", True))
        _bridge.set_send_events(bool(kwargs.get("send_events", False)))
        celery_instrumentor = CeleryInstrumentor()  # type: ignore[no-untyped-call]
        if not celery_instrumentor.is_instrumented_by_opentelemetry:
            celery_instrumentor.instrument(
                tracer_provider=kwargs.get("tracer_provider"),
                meter_provider=kwargs.get("meter_provider"),
            )
            type(self)._celery_instrumented_by_us = True
        _hooks.install_task_end_hook()
        _hooks.connect_signals()
        _lifecycle.connect_celery("instrument")

    def _uninstrument(self, **kwargs: Any) -> None:
        from opentelemetry.instrumentation.celery import CeleryInstrumentor

        _hooks.disconnect_signals()
        _lifecycle.disconnect_celery("instrument")
        _bridge.set_send_events(False)
        _hooks.remove_task_end_hook()
        if type(self)._celery_instrumented_by_us:
            CeleryInstrumentor().uninstrument()  # type: ignore[no-untyped-call]
            type(self)._celery_instrumented_by_us = False


def _decode(backend: Any, raw: Any) -> dict[str, Any] | None:
    if raw is None:
        return None
    try:
        value = backend.decode(raw)
    except Exception:
        try:
            value = json.loads(raw)
        except Exception:
            return None
    return value if isinstance(value, dict) and value.get("schema") == SCHEMA_VERSION else None


def _read_own(backend: Any, task_id: str) -> dict[str, Any] | None:
    getter = getattr(backend, "get", None)
    if getter is None:
        return None
    try:
        return _decode(backend, getter(_bridge.own_key(task_id)))
    except Exception:
        return None


def get_progress(
    task_id: str, app: Any = None, *, children: bool = True
) -> ProgressPayload | None:
    """The versioned payload of a task otel_progress tracks, or None (never tracked/unknown).

    Prefers otel_progress's own key (final and queued payloads), else Celery's ``PROGRESS``
    meta; a Celery final state overrides a payload that never got its final write (the worker
    died). With ``children``, adds ``children_progress`` aggregated from the child tasks.
    """
    if app is None:
        from celery import current_app as app
    from celery.result import AsyncResult

    backend = app.backend
    own = _read_own(backend, task_id)
    if own is not None and own.get("state") in FINAL_STATES:
        payload: dict[str, Any] | None = own
    else:
        result: Any = AsyncResult(task_id, app=app)
        try:
            state, info = result.state, result.info
        except Exception:
            state, info = "PENDING", None
        if isinstance(info, dict) and info.get("schema") == SCHEMA_VERSION:
            payload = dict(info)
            if state in _CELERY_FINAL and payload.get("state") not in FINAL_STATES:
                payload["state"] = _CELERY_FINAL[state]
        elif own is not None:
            payload = dict(own)
            if state in _CELERY_FINAL:
                payload["state"] = _CELERY_FINAL[state]
                payload["pending"] = False
            elif state in ("STARTED", "RECEIVED", "PROGRESS"):
                payload["state"] = "running"
                payload["pending"] = False
            elif state == "RETRY":
                payload["state"] = "retrying"
        else:
            payload = None
    if payload is None:
        return None
    if children and payload.get("children"):
        payload["children_progress"] = _children_progress(app, payload["children"])
    return payload  # type: ignore[return-value]


def _children_progress(app: Any, ids: list[str]) -> dict[str, Any]:
    """Aggregate children: count by state and the mean percent (a final child counts 100)."""
    tasks: list[dict[str, Any]] = []
    for child_id in ids[:MAX_CHILDREN_READ]:
        child = get_progress(child_id, app, children=False)
        if child is None:
            tasks.append({"id": child_id, "state": "queued", "percent": 0.0})
            continue
        state = child.get("state", "running")
        pct = 100.0 if state in FINAL_STATES else float(child.get("percent") or 0.0)
        tasks.append({"id": child_id, "state": state, "percent": pct})
    total = len(ids)
    finished = sum(1 for t in tasks if t["state"] in FINAL_STATES)
    failed = sum(1 for t in tasks if t["state"] == "failed")
    percent = round(sum(t["percent"] for t in tasks) / len(tasks), 2) if tasks else 0.0
    return {"total": total, "finished": finished, "failed": failed, "percent": percent,
            "tasks": tasks}
