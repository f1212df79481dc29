"""The status routes as a FastAPI router: ``app.include_router(router(celery_app, ...))``.

::

    from fastapi import FastAPI
    from otel_progress.web.fastapi import router

    app = FastAPI()
    app.include_router(router(celery_app, authorize=can_see_task), prefix="/progress")

The same routes, answers and options as :func:`otel_progress.web.create_app`, except that it
denies every request unless ``authorize`` or ``allow_anonymous=True`` is given (the host app
decides who its clients are). ``authorize(request, task_id)`` gets Starlette's ``Request``, which
is FastAPI's; a coroutine function works too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import APIRouter
from starlette.responses import Response

from otel_progress.web._reader import Reader, policy_of
from otel_progress.web._starlette import (
    CANCEL_PATH,
    EVENTS_PATH,
    LIST_PATH,
    LOG_PATH,
    TASK_PATH,
    VIEW_PATH,
    WIDGET_PATH,
    Authorize,
    Endpoints,
)

__all__ = ["router"]


def router(
    celery_app: Any,
    *,
    authorize: Authorize | None = None,
    allow_anonymous: bool = False,
    trace_url: str | None = None,
    include_traceback: bool = False,
    cors_origins: Sequence[str] | None = None,
    include_result: bool = False,
    history: object = None,
) -> APIRouter:
    """An ``APIRouter`` with ``GET /tasks/{task_id}``, ``/tasks/{task_id}/view``,
    ``/tasks/{task_id}/events`` (server-sent events), the widget, ``GET /tasks`` (history rows)
    and ``GET /tasks/{task_id}/log``."""
    reader = Reader(
        celery_app, policy=policy_of(authorize, allow_anonymous, default="deny"),
        trace_url=trace_url, include_traceback=include_traceback, include_result=include_result,
        cors_origins=cors_origins, history=history,
    )
    endpoints = Endpoints(reader, authorize)
    api = APIRouter(tags=["otel_progress"])
    api.add_api_route(LIST_PATH, endpoints.tasks, methods=["GET"], response_class=Response,
                      name="otel_progress_tasks",
                      summary="Task history: ?state=&name=&since=&until=&limit=&cursor=")
    api.add_api_route(LOG_PATH, endpoints.log, methods=["GET"], response_class=Response,
                      name="otel_progress_log", summary="A task's log (text/plain)")
    api.add_api_route(TASK_PATH, endpoints.task, methods=["GET", "OPTIONS"],
                      response_class=Response, name="otel_progress_task",
                      summary="A task's progress payload (or ?format=celery-progress)")
    api.add_api_route(VIEW_PATH, endpoints.view, methods=["GET"], response_class=Response,
                      name="otel_progress_view", summary="The task shown with the widget")
    api.add_api_route(EVENTS_PATH, endpoints.events, methods=["GET"], response_class=Response,
                      name="otel_progress_events",
                      summary="The task's payload as server-sent events until it is final")
    api.add_api_route(CANCEL_PATH, endpoints.cancel, methods=["POST", "OPTIONS"],
                      response_class=Response, name="otel_progress_cancel",
                      summary="Ask the running task to stop at its next section", status_code=202)
    api.add_api_route(WIDGET_PATH, endpoints.widget, methods=["GET"], response_class=Response,
                      name="otel_progress_widget", summary="otel-progress.js",
                      include_in_schema=False)
    return api
