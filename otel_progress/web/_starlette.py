"""The routes on Starlette: the standalone app (``create_app``) and FastAPI's router share them."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from otel_progress.web._reader import Answer, Facts, Reader, policy_of

Authorize = Callable[[Request, str], bool | Awaitable[bool]]
"""``authorize(request, task_id) -> bool`` (a coroutine function works too)."""

TASK_PATH = "/tasks/{task_id}"
VIEW_PATH = "/tasks/{task_id}/view"
CANCEL_PATH = "/tasks/{task_id}/cancel"
WIDGET_PATH = "/static/otel-progress.js"


def response(answer: Answer) -> Response:
    """Starlette's response for a reader answer (headers as given, nothing added)."""
    headers = {k: v for k, v in answer.headers if k != "Content-Type"}
    return Response(answer.body, status_code=answer.status, headers=headers,
                    media_type=answer.content_type)


def facts(request: Request) -> Facts:
    """What the reader needs of a Starlette request."""
    host = request.client.host if request.client else None
    return Facts.from_headers(host, request.headers)


class Endpoints:
    """The three routes over one reader; the user's hook runs off the event loop if sync."""

    def __init__(self, reader: Reader, authorize: Authorize | None) -> None:
        self.reader = reader
        self.authorize = authorize

    async def _refusal(self, request: Request, task_id: str, about: Facts) -> Answer | None:
        refused = self.reader.check(task_id, request.query_params, about)
        if refused is not None:
            return refused
        decision: object = None
        if self.authorize is not None:
            hook = self.authorize
            if inspect.iscoroutinefunction(hook):
                try:
                    decision = await hook(request, task_id)
                except Exception as exc:
                    decision = self.reader.hook_failed(exc)
            else:  # a sync hook may block (a database): off the event loop
                decision = await run_in_threadpool(self.reader.decide, hook, request, task_id)
        return self.reader.gate(about, decision)

    async def task(self, request: Request) -> Response:
        """``GET /tasks/{task_id}`` (and its CORS preflight)."""
        task_id = request.path_params["task_id"]
        about = facts(request)
        if request.method == "OPTIONS":
            return response(self.reader.preflight(about))
        refused = await self._refusal(request, task_id, about)
        if refused is not None:
            return response(refused)
        params = dict(request.query_params)
        return response(await run_in_threadpool(self.reader.lookup, task_id, params, about))

    async def cancel(self, request: Request) -> Response:
        """``POST /tasks/{task_id}/cancel``: ask the running task to stop (and its preflight)."""
        task_id = request.path_params["task_id"]
        about = facts(request)
        if request.method == "OPTIONS":
            return response(self.reader.preflight(about, "POST, OPTIONS"))
        refused = self.reader.cancel_check(about) or await self._refusal(request, task_id, about)
        if refused is not None:
            return response(refused)
        return response(await run_in_threadpool(self.reader.cancel, task_id, about))

    async def view(self, request: Request) -> Response:
        """``GET /tasks/{task_id}/view``: the HTML page with the widget."""
        task_id = request.path_params["task_id"]
        about = facts(request)
        refused = await self._refusal(request, task_id, about)
        return response(refused if refused is not None else self.reader.view(task_id, about))

    async def widget(self, request: Request) -> Response:
        """``GET /static/otel-progress.js``: public, it holds no task data."""
        return response(self.reader.widget(facts(request)))

    def routes(self) -> list[BaseRoute]:
        """The routes, relative to wherever they are mounted."""
        return [
            Route(TASK_PATH, self.task, methods=["GET", "OPTIONS"], name="otel_progress_task"),
            Route(VIEW_PATH, self.view, methods=["GET"], name="otel_progress_view"),
            Route(CANCEL_PATH, self.cancel, methods=["POST", "OPTIONS"],
                  name="otel_progress_cancel"),
            Route(WIDGET_PATH, self.widget, methods=["GET"], name="otel_progress_widget"),
        ]


def create_app(
    celery_app: Any,
    *,
    authorize: Authorize | None = None,
    allow_anonymous: bool = False,
    trace_url: str | None = None,
    include_traceback: bool = False,
    cors_origins: Sequence[str] | None = None,
    include_result: bool = False,
    cancellable: bool = False,
) -> Starlette:
    """The status app: ``GET /tasks/{id}``, ``GET /tasks/{id}/view``, the widget's JS.

    An ASGI app on Starlette; serve it with ``uvicorn`` (it binds 127.0.0.1 by default)::

        app = create_app(celery_app, trace_url="http://localhost:16686/trace/{trace_id}")
        # uvicorn module:app

    Without ``authorize`` it answers only clients on loopback (a proxied request, one with
    ``Forwarded``/``X-Forwarded-For``, is not one), unless ``allow_anonymous=True``.
    ``authorize(request, task_id) -> bool`` gets Starlette's ``Request`` and runs after the id's
    format check and before any lookup; only ``True`` allows. ``include_traceback`` and
    ``include_result`` opt in to the traceback and to Celery's result; ``cors_origins`` lists the
    origins a browser may read from (CORS is off without it). ``POST /tasks/{id}/cancel`` asks
    a running task to stop (behind the same ``authorize``; it needs a JSON body or the
    ``X-OTel-Progress`` header); ``cancellable=True`` shows the cancel button on the view page.
    """
    reader = Reader(
        celery_app, policy=policy_of(authorize, allow_anonymous, default="loopback"),
        trace_url=trace_url, include_traceback=include_traceback, include_result=include_result,
        cors_origins=cors_origins,
    )
    reader.cancellable = bool(cancellable)
    endpoints = Endpoints(reader, authorize)

    async def http_error(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 503
        if status >= 500:
            return response(reader.unavailable(facts(request)))
        message = {404: "not found", 405: "method not allowed"}.get(status, "bad request")
        return response(reader.error(status, message, facts(request)))

    app = Starlette(routes=endpoints.routes(), exception_handlers={
        HTTPException: http_error, Exception: http_error,
    })
    app.state.otel_progress_reader = reader
    return app


def routes(reader: Reader, authorize: Authorize | None) -> Iterable[BaseRoute]:
    """The routes over ``reader`` (for a FastAPI router or a Starlette ``Mount``)."""
    return Endpoints(reader, authorize).routes()
