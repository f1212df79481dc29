"""The status routes as a Flask blueprint: ``app.register_blueprint(blueprint(celery_app))``.

::

    from flask import Flask
    from otel_progress.web.flask import blueprint

    app = Flask(__name__)
    app.register_blueprint(blueprint(celery_app, authorize=can_see_task), url_prefix="/progress")

The same routes, answers and options as :func:`otel_progress.web.create_app`, except that it
denies every request unless ``authorize`` or ``allow_anonymous=True`` is given.
``authorize(request, task_id)`` gets Flask's ``request`` (the object behind the proxy).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from flask import Blueprint, Response, request

from otel_progress.web._reader import Answer, Facts, Reader, policy_of

__all__ = ["blueprint"]


def _response(answer: Answer) -> Response:
    result = Response(answer.body, status=answer.status, content_type=answer.content_type)
    for key, value in answer.headers:
        if key != "Content-Type":
            result.headers[key] = value
    return result


def _facts() -> Facts:
    return Facts.from_headers(request.remote_addr, request.headers)


def blueprint(
    celery_app: Any,
    *,
    authorize: Callable[[Any, Any], bool] | None = None,
    allow_anonymous: bool = False,
    trace_url: str | None = None,
    include_traceback: bool = False,
    cors_origins: Sequence[str] | None = None,
    include_result: bool = False,
    name: str = "otel_progress",
    history: object = None,
) -> Blueprint:
    """A blueprint with ``GET /tasks/<task_id>``, ``/tasks/<task_id>/view``, the widget,
    ``GET /tasks`` (history rows) and ``GET /tasks/<task_id>/log``."""
    reader = Reader(
        celery_app, policy=policy_of(authorize, allow_anonymous, default="deny"),
        trace_url=trace_url, include_traceback=include_traceback, include_result=include_result,
        cors_origins=cors_origins, history=history,
    )
    routes = Blueprint(name, __name__)

    def refusal(task_id: str | None, about: Facts) -> Answer | None:
        if task_id is not None:
            refused = reader.check(task_id, request.args, about)
            if refused is not None:
                return refused
        decision = None
        if authorize is not None:
            decision = reader.decide(authorize, request._get_current_object(),  # type: ignore[attr-defined]
                                     task_id)
        return reader.gate(about, decision)

    @routes.route("/tasks", methods=["GET"])
    def tasks() -> Response:
        about = _facts()
        query = reader.list_query(request.args, about)
        if isinstance(query, Answer):
            return _response(query)
        refused = refusal(None, about)
        return _response(refused if refused is not None else reader.list_lookup(query, about))

    @routes.route("/tasks/<task_id>/log", methods=["GET"])
    def log(task_id: str) -> Response:
        about = _facts()
        refused = refusal(task_id, about)
        return _response(refused if refused is not None else reader.log_lookup(task_id, about))

    @routes.route("/tasks/<task_id>", methods=["GET", "OPTIONS"], provide_automatic_options=False)
    def task(task_id: str) -> Response:
        about = _facts()
        if request.method == "OPTIONS":
            return _response(reader.preflight(about))
        refused = refusal(task_id, about)
        if refused is not None:
            return _response(refused)
        return _response(reader.lookup(task_id, request.args.to_dict(), about))

    @routes.route("/tasks/<task_id>/view", methods=["GET"])
    def view(task_id: str) -> Response:
        about = _facts()
        refused = refusal(task_id, about)
        return _response(refused if refused is not None else reader.view(task_id, about))

    @routes.route("/tasks/<task_id>/cancel", methods=["POST", "OPTIONS"],
                  provide_automatic_options=False)
    def cancel(task_id: str) -> Response:
        about = _facts()
        if request.method == "OPTIONS":
            return _response(reader.preflight(about, "POST, OPTIONS"))
        refused = reader.cancel_check(about) or refusal(task_id, about)
        if refused is not None:
            return _response(refused)
        return _response(reader.cancel(task_id, about))

    @routes.route("/static/otel-progress.js", methods=["GET"])
    def widget() -> Response:
        return _response(reader.widget(_facts()))

    return routes
