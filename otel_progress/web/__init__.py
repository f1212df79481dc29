"""The status app and the browser widget: what a frontend reads, and what a person sees.

::

    from otel_progress.web import create_app

    app = create_app(celery_app, trace_url="http://localhost:16686/trace/{trace_id}")
    # uvicorn module:app  ->  GET /tasks/{id}, GET /tasks/{id}/view, GET /static/otel-progress.js
    #                         GET /tasks/{id}/events (server-sent events, Starlette/FastAPI)

The same routes for FastAPI (``otel_progress.web.fastapi.router``), Flask
(``otel_progress.web.flask.blueprint``) and Django (``include("otel_progress.web.django.urls")``),
all over one framework-neutral reader. ``STATIC_DIR`` holds ``otel-progress.js``. Importing this
package imports no web framework: ``create_app`` loads Starlette when it is first used.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

WRITE_INTERVAL: Final = 0.5
"""The flusher's default ``min_interval``: a running task's payload is rewritten at most this
often, and only when it changed."""
STALE_AFTER: Final = max(10 * WRITE_INTERVAL, 30.0)
"""Seconds after which a payload of a task that is not final and stopped changing reads
``stale: true``: ten write intervals, but at least 30 s (a section doing slow work without
reporting is not yet dead)."""
EVENTS_POLL: Final = WRITE_INTERVAL
"""Seconds between two reads of the result backend behind one ``GET /tasks/{id}/events``
stream (the payload changes at most once per write interval)."""
EVENTS_HEARTBEAT: Final = 15.0
"""Seconds of silence after which an events stream sends a comment line (``: heartbeat``), so
proxies and browsers keep an idle connection open."""
EVENTS_MAX_AGE: Final = 3600.0
"""Seconds after which an events stream ends (the browser's EventSource reconnects with
``Last-Event-ID``): no request is held open without bound."""
STATIC_DIR: Final = Path(__file__).resolve().parent / "static"
"""The widget's directory (``otel-progress.js``), for Django's ``STATICFILES_DIRS`` and friends."""

if TYPE_CHECKING:
    from otel_progress.web._starlette import create_app

__all__ = ["EVENTS_HEARTBEAT", "EVENTS_MAX_AGE", "EVENTS_POLL", "STALE_AFTER", "STATIC_DIR",
           "WRITE_INTERVAL", "create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":  # Starlette only for those who use it (Django/Flask need none)
        from otel_progress.web._starlette import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
