"""The routes on Starlette: the standalone app (``create_app``) and FastAPI's router share them."""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from otel_progress._payload import FINAL_STATES, comparable
from otel_progress.web._reader import Answer, Facts, Reader, policy_of

Authorize = Callable[[Request, Any], bool | Awaitable[bool]]
"""``authorize(request, task_id) -> bool`` (a coroutine function works too); ``task_id`` is
None for the list ``GET /tasks``."""

LIST_PATH = "/tasks"
LOG_PATH = "/tasks/{task_id}/log"
TASK_PATH = "/tasks/{task_id}"
VIEW_PATH = "/tasks/{task_id}/view"
EVENTS_PATH = "/tasks/{task_id}/events"
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
        return await self._gate(request, task_id, about)

    async def _gate(self, request: Request, task_id: str | None, about: Facts) -> Answer | None:
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

    async def tasks(self, request: Request) -> Response:
        """``GET /tasks?state=&name=&since=&until=&limit=&cursor=``: history rows, newest first."""
        about = facts(request)
        query = self.reader.list_query(request.query_params, about)
        if isinstance(query, Answer):
            return response(query)
        refused = await self._gate(request, None, about)
        if refused is not None:
            return response(refused)
        return response(await run_in_threadpool(self.reader.list_lookup, query, about))

    async def log(self, request: Request) -> Response:
        """``GET /tasks/{task_id}/log``: the run's seed log as text/plain."""
        task_id = request.path_params["task_id"]
        about = facts(request)
        refused = self.reader.check(task_id, None, about)
        if refused is None:
            refused = await self._gate(request, task_id, about)
        if refused is not None:
            return response(refused)
        return response(await run_in_threadpool(self.reader.log_lookup, task_id, about))

    async def events(self, request: Request) -> Response:
        """``GET /tasks/{task_id}/events``: the payload as server-sent events until it is final.

        The same checks as ``GET /tasks/{task_id}`` in the same order (id, ``authorize``, the
        lookup: 400/403/404/503 answer as JSON, not as a stream). Each event is the whole
        payload (``event: progress``, ``data:`` the JSON the status route answers, ``id:`` a
        digest of what changed), sent when it changes; a ``: heartbeat`` comment after
        ``EVENTS_HEARTBEAT`` seconds of silence; the stream ends after the final state's event
        (and after ``EVENTS_MAX_AGE``). ``Last-Event-ID`` resumes: a payload the client already
        has is not sent again, and a final one it already has answers 204, which tells an
        EventSource not to reconnect.
        """
        task_id = request.path_params["task_id"]
        about = facts(request)
        refused = await self._refusal(request, task_id, about)
        if refused is not None:
            return response(refused)
        params = dict(request.query_params)
        first = await run_in_threadpool(self.reader.lookup, task_id, params, about)
        if first.status != 200:
            return response(first)
        seen = request.headers.get("last-event-id")
        event_id, final = _event_facts(first.body)
        headers = {k: v for k, v in first.headers if k != "Content-Type"}
        if final and event_id == seen:
            return Response(status_code=204, headers=headers)
        headers["X-Accel-Buffering"] = "no"  # nginx: pass each event on at once
        return StreamingResponse(self._stream(request, task_id, params, about, first, seen),
                                 media_type="text/event-stream", headers=headers)

    async def _stream(self, request: Request, task_id: str, params: Mapping[str, str],
                      about: Facts, answer: Answer, seen: str | None) -> AsyncIterator[bytes]:
        from otel_progress import web  # the tunables, read per stream (tests shorten them)

        started = last_sent = time.monotonic()
        yield b"retry: 1000\n\n"
        while True:
            if answer.status == 200:
                event_id, final = _event_facts(answer.body)
                if event_id != seen:
                    seen = event_id
                    last_sent = time.monotonic()
                    yield b"id: %s\nevent: progress\ndata: %s\n\n" % (event_id.encode(),
                                                                        answer.body)
                if final:
                    return
            elif answer.status == 404:  # the record is gone (expired): nothing more to say
                yield b"event: gone\ndata: {}\n\n"
                return
            now = time.monotonic()
            if now - started >= web.EVENTS_MAX_AGE:
                return
            if now - last_sent >= web.EVENTS_HEARTBEAT:
                last_sent = now
                yield b": heartbeat\n\n"
            await asyncio.sleep(max(0.01, min(web.EVENTS_POLL,
                                              web.EVENTS_HEARTBEAT - (now - last_sent))))
            if await request.is_disconnected():
                return
            answer = await run_in_threadpool(self.reader.lookup, task_id, params, about)

    async def widget(self, request: Request) -> Response:
        """``GET /static/otel-progress.js``: public, it holds no task data."""
        return response(self.reader.widget(facts(request)))

    def routes(self) -> list[BaseRoute]:
        """The routes, relative to wherever they are mounted."""
        return [
            Route(LIST_PATH, self.tasks, methods=["GET"], name="otel_progress_tasks"),
            Route(LOG_PATH, self.log, methods=["GET"], name="otel_progress_log"),
            Route(TASK_PATH, self.task, methods=["GET", "OPTIONS"], name="otel_progress_task"),
            Route(VIEW_PATH, self.view, methods=["GET"], name="otel_progress_view"),
            Route(EVENTS_PATH, self.events, methods=["GET"], name="otel_progress_events"),
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
    history: object = None,
    cancellable: bool = False,
) -> Starlette:
    """The status app: ``GET /tasks/{id}``, ``GET /tasks/{id}/view``, ``GET /tasks/{id}/events``
    (server-sent events), the widget's JS, and from the task history ``GET /tasks`` (a filtered
    page of rows) and ``GET /tasks/{id}/log``.

    An ASGI app on Starlette; serve it with ``uvicorn`` (it binds 127.0.0.1 by default)::

        app = create_app(celery_app, trace_url="http://localhost:16686/trace/{trace_id}")
        # uvicorn module:app

    Without ``authorize`` it answers only clients on loopback (a proxied request, one with
    ``Forwarded``/``X-Forwarded-For``, is not one), unless ``allow_anonymous=True``.
    ``authorize(request, task_id) -> bool`` gets Starlette's ``Request`` and runs after the id's
    format check and before any lookup; only ``True`` allows. ``include_traceback`` and
    ``include_result`` opt in to the traceback and to Celery's result; ``cors_origins`` lists the
    origins a browser may read from (CORS is off without it). ``history`` is the store
    ``GET /tasks`` lists (a store or a URL; default: the one the app's workers write, False:
    none); ``authorize(request, None)`` decides who may list. ``POST /tasks/{id}/cancel`` asks
    a running task to stop (behind the same ``authorize``; it needs a JSON body or the
    ``X-OTel-Progress`` header); ``cancellable=True`` shows the cancel button on the view page.
    """
    reader = Reader(
        celery_app, policy=policy_of(authorize, allow_anonymous, default="loopback"),
        trace_url=trace_url, include_traceback=include_traceback, include_result=include_result,
        cors_origins=cors_origins, history=history,
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
    # No 307 to the slash-less URL (it would carry none of the reader's headers): a trailing
    # slash is an unknown route, a 404 like any other.
    app.router.redirect_slashes = False
    app.state.otel_progress_reader = reader
    return app


def _event_facts(body: bytes) -> tuple[str, bool]:
    """(event id, final) of a status answer's JSON body: the id is a digest of what the
    payload says apart from the clock (``updated``, ``elapsed_s``, ``rate``, ``eta_s``)."""
    try:
        data = json.loads(body)
    except ValueError:
        return hashlib.sha1(body).hexdigest()[:16], False
    if not isinstance(data, dict):
        return hashlib.sha1(body).hexdigest()[:16], False
    if "complete" in data and "progress" in data:  # the celery-progress envelope
        final = data.get("complete") is True and data.get("state") != "RETRY"
        progress = data.get("progress")
        digest_of: Any = dict(data, progress=comparable(progress)) if isinstance(
            progress, dict) else data
    else:
        final = data.get("state") in FINAL_STATES
        digest_of = comparable(data)
    text = json.dumps(digest_of, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16], final


def routes(reader: Reader, authorize: Authorize | None) -> Iterable[BaseRoute]:
    """The routes over ``reader`` (for a FastAPI router or a Starlette ``Mount``)."""
    return Endpoints(reader, authorize).routes()
