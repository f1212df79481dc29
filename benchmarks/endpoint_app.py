"""The ASGI app of the status-endpoint benchmark (``benchmarks/run.py`` serves it with uvicorn).

Two routes over the same Redis result backend, served by the same uvicorn process, so the
benchmark's clients compare them under the same conditions:

- ``/tasks/{id}``: otel_progress's status app (``create_app``): the id check, the gate, our own
  key, Celery's state, the reconciled payload, its headers.
- ``/anchor/{id}``: what a user writes instead, celery-progress's view body in a Starlette route:
  ``Progress(AsyncResult(id)).get_info()`` as JSON.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery
from celery.result import AsyncResult
from celery_progress.backend import Progress
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

from otel_progress.web import create_app

_url = os.environ["OTEL_PROGRESS_TEST_REDIS_URL"]
celery_app = Celery("bench_endpoint", broker=_url, backend=_url)
celery_app.conf.update(result_serializer="json", result_accept_content=["json"])


def anchor(request: Request) -> JSONResponse:
    """celery-progress's ``get_progress`` view, as a Starlette route (a sync view: threadpool)."""
    result: Any = AsyncResult(request.path_params["task_id"], app=celery_app)
    return JSONResponse(Progress(result).get_info())


app = Starlette(routes=[
    Route("/anchor/{task_id}", anchor),
    Mount("/", create_app(celery_app, allow_anonymous=True)),
])
