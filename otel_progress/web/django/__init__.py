"""The status routes as Django views: ``include("otel_progress.web.django.urls")``.

Settings (all optional but the access one; read when the first request comes, and again after
``override_settings``):

- ``OTEL_PROGRESS_AUTHORIZE``: ``authorize(request, task_id) -> bool``, a callable or its dotted
  path (``"myproject.progress.can_see_task"``); it gets Django's ``HttpRequest``, runs after the
  id's format check and before any lookup, and only ``True`` allows.
- ``OTEL_PROGRESS_ALLOW_ANONYMOUS``: ``True`` serves everyone. With neither setting every
  request is refused (403).
- ``OTEL_PROGRESS_CELERY_APP``: the Celery app or its dotted path (default: Celery's current
  app, the one ``celery.py`` of a Django project makes).
- ``OTEL_PROGRESS_TRACE_URL``: the "View trace" link template, e.g.
  ``"http://localhost:16686/trace/{trace_id}"``.
- ``OTEL_PROGRESS_INCLUDE_TRACEBACK``, ``OTEL_PROGRESS_INCLUDE_RESULT``: opt-ins (default off).
- ``OTEL_PROGRESS_CORS_ORIGINS``: origins a browser may read from (default: CORS off).
- ``OTEL_PROGRESS_HISTORY``: the task history ``tasks`` lists (a store, its dotted path, or a
  URL such as ``"sqlite:////var/lib/app/history.db"``; default: the one the workers write).

The widget is also a static file: add ``otel_progress.web.STATIC_DIR`` to ``STATICFILES_DIRS``
and use ``{% static "otel-progress.js" %}``.
"""

from __future__ import annotations

import threading
from typing import Any

from django.conf import settings
from django.core.signals import setting_changed
from django.http import HttpRequest, HttpResponse
from django.utils.module_loading import import_string

from otel_progress.web._reader import Answer, Facts, Reader, policy_of

__all__ = ["cancel", "log", "reset", "task", "tasks", "view", "widget"]

_lock = threading.Lock()
_state: dict[str, Any] = {}


def _setting(name: str, default: Any = None) -> Any:
    return getattr(settings, name, default)


def _resolve(value: Any) -> Any:
    return import_string(value) if isinstance(value, str) else value


def _configured() -> tuple[Reader, Any]:
    """The reader and the hook from settings (built once, rebuilt after a settings change)."""
    with _lock:
        if "reader" not in _state:
            hook = _resolve(_setting("OTEL_PROGRESS_AUTHORIZE"))
            app = _resolve(_setting("OTEL_PROGRESS_CELERY_APP"))
            if app is None:
                from celery import current_app

                app = current_app  # the proxy: whatever app is current when a request comes
            _state["hook"] = hook
            _state["reader"] = Reader(
                app,
                policy=policy_of(hook, bool(_setting("OTEL_PROGRESS_ALLOW_ANONYMOUS", False)),
                                 default="deny"),
                trace_url=_setting("OTEL_PROGRESS_TRACE_URL"),
                include_traceback=bool(_setting("OTEL_PROGRESS_INCLUDE_TRACEBACK", False)),
                include_result=bool(_setting("OTEL_PROGRESS_INCLUDE_RESULT", False)),
                cors_origins=_setting("OTEL_PROGRESS_CORS_ORIGINS"),
                history=_history_setting(),
            )
        return _state["reader"], _state["hook"]


def _history_setting() -> object:
    value = _setting("OTEL_PROGRESS_HISTORY")
    if isinstance(value, str) and "://" not in value:
        return import_string(value)
    return value


def reset(**_kwargs: Any) -> None:
    """Forget the reader built from settings (connected to Django's ``setting_changed``)."""
    with _lock:
        _state.clear()


setting_changed.connect(reset, dispatch_uid="otel_progress.web.django.reset")


def _response(answer: Answer) -> HttpResponse:
    result = HttpResponse(answer.body, status=answer.status, content_type=answer.content_type)
    for key, value in answer.headers:
        if key != "Content-Type":
            result[key] = value
    return result


def _facts(request: HttpRequest) -> Facts:
    return Facts.from_headers(request.META.get("REMOTE_ADDR"), request.headers)


def _refusal(request: HttpRequest, task_id: str | None, reader: Reader, hook: Any,
             about: Facts) -> Answer | None:
    if request.method not in ("GET", "HEAD", "OPTIONS"):
        return reader.error(405, "method not allowed", about)
    if task_id is not None:
        refused = reader.check(task_id, request.GET, about)
        if refused is not None:
            return refused
    return reader.gate(about, reader.decide(hook, request, task_id))


def tasks(request: HttpRequest) -> HttpResponse:
    """``GET tasks?state=&name=&since=&until=&limit=&cursor=``: history rows, newest first
    (the hook is called with ``task_id=None``)."""
    reader, hook = _configured()
    about = _facts(request)
    query = reader.list_query(request.GET, about)
    if isinstance(query, Answer):
        return _response(query)
    refused = _refusal(request, None, reader, hook, about)
    return _response(refused if refused is not None else reader.list_lookup(query, about))


def log(request: HttpRequest, task_id: str) -> HttpResponse:
    """``GET tasks/<task_id>/log``: the run's seed log as text/plain."""
    reader, hook = _configured()
    about = _facts(request)
    refused = _refusal(request, task_id, reader, hook, about)
    return _response(refused if refused is not None else reader.log_lookup(task_id, about))


def task(request: HttpRequest, task_id: str) -> HttpResponse:
    """``GET tasks/<task_id>``: the payload (``?format=celery-progress``: its envelope)."""
    reader, hook = _configured()
    about = _facts(request)
    if request.method == "OPTIONS":
        return _response(reader.preflight(about))
    refused = _refusal(request, task_id, reader, hook, about)
    if refused is not None:
        return _response(refused)
    return _response(reader.lookup(task_id, request.GET.dict(), about))


def view(request: HttpRequest, task_id: str) -> HttpResponse:
    """``GET tasks/<task_id>/view``: the task shown with the widget."""
    reader, hook = _configured()
    about = _facts(request)
    refused = _refusal(request, task_id, reader, hook, about)
    return _response(refused if refused is not None else reader.view(task_id, about))


def cancel(request: HttpRequest, task_id: str) -> HttpResponse:
    """``POST tasks/<task_id>/cancel``: ask the running task to stop at its next section."""
    reader, hook = _configured()
    about = _facts(request)
    if request.method == "OPTIONS":
        return _response(reader.preflight(about, "POST, OPTIONS"))
    if request.method != "POST":
        return _response(reader.error(405, "method not allowed", about))
    refused = reader.cancel_check(about) or reader.check(task_id, None, about) or reader.gate(
        about, reader.decide(hook, request, task_id))
    if refused is not None:
        return _response(refused)
    return _response(reader.cancel(task_id, about))


# What ``csrf_exempt`` sets (the decorator is untyped): CSRF-safe by design instead, since a JSON
# body or the X-OTel-Progress header is required and neither can come from a cross-site form.
cancel.csrf_exempt = True  # type: ignore[attr-defined]


def widget(request: HttpRequest) -> HttpResponse:
    """``GET static/otel-progress.js``: public, it holds no task data."""
    reader, _hook = _configured()
    return _response(reader.widget(_facts(request)))
