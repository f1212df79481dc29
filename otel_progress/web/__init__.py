"""The status app and the browser widget: what a frontend reads, and what a person sees.

::

    from otel_progress.web import create_app

    app = create_app(celery_app, trace_url="http://localhost:16686/trace/{trace_id}")
    # uvicorn module:app  ->  GET /tasks/{id}, GET /tasks/{id}/view, GET /static/otel-progress.js

The same routes for FastAPI (``otel_progress.web.fastapi.router``), Flask
(``otel_progress.web.flask.blueprint``) and Django (``include("otel_progress.web.django.urls")``),
all over one framework-neutral reader. ``STATIC_DIR`` holds ``otel-progress.js``. Importing this
package imports no web framework: ``create_app`` loads Starlette when it is first used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from otel_progress.web._reader import STALE_AFTER, STATIC_DIR

if TYPE_CHECKING:
    from otel_progress.web._starlette import create_app

__all__ = ["STALE_AFTER", "STATIC_DIR", "create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":  # Starlette only for those who use it (Django/Flask need none)
        from otel_progress.web._starlette import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
