"""The FastAPI, Flask and Django adapters, each through its own framework's test client.

They answer exactly like the standalone app (one reader), deny unless ``authorize`` or
``allow_anonymous`` is given, and hand the hook the framework's own request object. A real worker
finishes the tasks they read; Django runs in a child process (``settings.configure`` is once per
process).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import run_python
from tests.support.celery_worker import CeleryWorker
from tests.support.redis_server import RedisServer
from tests.support.web import Producer, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120), pytest.mark.usefixtures("tracking")]

TOKEN = "let-me-in"
BASE = {"cache-control": "no-store", "x-content-type-options": "nosniff"}


@pytest.fixture(scope="module")
def finished(producer: Producer, web_worker: CeleryWorker) -> str:
    """The id of a task the worker finished (succeeded)."""
    from otel_progress.celery import get_progress

    task_id = str(producer.quick.delay(2, 0.01).id)
    wait_for(lambda: (p := get_progress(task_id, app=producer.app)) and p["state"] == "succeeded",
             what="the task to succeed")
    return task_id


def _headers(headers: Any) -> dict[str, str]:
    return {k.lower(): v for k, v in dict(headers).items()}


# --- FastAPI ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fastapi_client(producer: Producer) -> Iterator[Any]:
    """A FastAPI app with three routers: hook, anonymous, and neither (deny)."""
    from fastapi import FastAPI, Request
    from fastapi.testclient import TestClient

    from otel_progress.web.fastapi import router

    seen: list[tuple[str, str]] = []

    def can_see(request: Request, task_id: str) -> bool:
        seen.append((type(request).__name__, task_id))
        return request.headers.get("x-token") == TOKEN

    app = FastAPI()
    app.include_router(router(producer.app, authorize=can_see), prefix="/auth")
    app.include_router(router(producer.app, allow_anonymous=True), prefix="/anon")
    app.include_router(router(producer.app), prefix="/deny")
    app.state.seen = seen
    with TestClient(app) as client:
        yield client


def test_fastapi_router_serves_the_payload(fastapi_client: Any, finished: str) -> None:
    """FastAPI: 200 with the payload and the headers; the envelope with ?format."""
    response = fastapi_client.get(f"/anon/tasks/{finished}")
    envelope = fastapi_client.get(f"/anon/tasks/{finished}", params={"format": "celery-progress"})
    assert (200, "succeeded", True) == (response.status_code, response.json()["state"],
                                        envelope.json()["success"])
    assert (BASE | {"content-type": "application/json"}).items() <= _headers(
        response.headers).items()


def test_fastapi_router_authorize_allows_and_denies(fastapi_client: Any, finished: str) -> None:
    """FastAPI: the hook gets Starlette's Request and the id; False is 403 on every task route."""
    fastapi_client.app.state.seen.clear()
    ok = [fastapi_client.get(f"/auth/tasks/{finished}{r}", headers={"x-token": TOKEN}).status_code
          for r in ("", "/view")]
    no = [fastapi_client.get(f"/auth/tasks/{finished}{r}").status_code for r in ("", "/view")]
    assert ([200, 200], [403, 403]) == (ok, no)
    assert ("Request", finished) == fastapi_client.app.state.seen[0]


def test_fastapi_router_denies_without_hook_or_anonymous(fastapi_client: Any,
                                                         finished: str) -> None:
    """FastAPI: neither authorize nor allow_anonymous: 403 (the widget file stays public)."""
    statuses = [fastapi_client.get(f"/deny/tasks/{finished}{r}").status_code
                for r in ("", "/view")]
    widget = fastapi_client.get("/deny/static/otel-progress.js")
    assert ([403, 403], 200, "text/javascript; charset=utf-8") == (
        statuses, widget.status_code, widget.headers["content-type"])


def test_fastapi_router_malformed_and_unknown_ids(fastapi_client: Any) -> None:
    """FastAPI: a 256-character id is 400, an unknown one 404, both JSON."""
    long = fastapi_client.get("/anon/tasks/" + "x" * 256)
    unknown = fastapi_client.get(f"/anon/tasks/{uuid.uuid4()}")
    assert [(400, {"error": "malformed task id"}), (404, {"error": "not found"})] == [
        (r.status_code, r.json()) for r in (long, unknown)]


# --- Flask --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def flask_client(producer: Producer) -> Any:
    """A Flask app with three blueprints: hook, anonymous, and neither (deny)."""
    import flask

    from otel_progress.web.flask import blueprint

    seen: list[tuple[str, str]] = []

    def can_see(request: Any, task_id: str) -> bool:
        seen.append((type(request).__name__, task_id))
        return request.headers.get("X-Token") == TOKEN

    app = flask.Flask("adapter_test")
    app.register_blueprint(blueprint(producer.app, authorize=can_see, name="auth"),
                           url_prefix="/auth")
    app.register_blueprint(blueprint(producer.app, allow_anonymous=True, name="anon"),
                           url_prefix="/anon")
    app.register_blueprint(blueprint(producer.app, name="deny"), url_prefix="/deny")
    app.config["seen"] = seen
    return app.test_client()


def test_flask_blueprint_serves_the_payload(flask_client: Any, finished: str) -> None:
    """Flask: 200 with the payload and the headers; the envelope with ?format."""
    response = flask_client.get(f"/anon/tasks/{finished}")
    envelope = flask_client.get(f"/anon/tasks/{finished}?format=celery-progress")
    assert (200, "succeeded", True) == (response.status_code, response.get_json()["state"],
                                        envelope.get_json()["success"])
    assert (BASE | {"content-type": "application/json"}).items() <= _headers(
        response.headers).items()


def test_flask_blueprint_authorize_allows_and_denies(flask_client: Any, finished: str) -> None:
    """Flask: the hook gets Flask's Request and the id; False is 403 on every task route."""
    seen = flask_client.application.config["seen"]
    seen.clear()
    ok = [flask_client.get(f"/auth/tasks/{finished}{r}", headers={"X-Token": TOKEN}).status_code
          for r in ("", "/view")]
    no = [flask_client.get(f"/auth/tasks/{finished}{r}").status_code for r in ("", "/view")]
    assert ([200, 200], [403, 403]) == (ok, no)
    assert ("Request", finished) == seen[0]


def test_flask_blueprint_denies_without_hook_or_anonymous(flask_client: Any,
                                                          finished: str) -> None:
    """Flask: neither authorize nor allow_anonymous: 403 (the widget file stays public)."""
    statuses = [flask_client.get(f"/deny/tasks/{finished}{r}").status_code for r in ("", "/view")]
    assert ([403, 403], 200) == (statuses,
                                 flask_client.get("/deny/static/otel-progress.js").status_code)


def test_flask_blueprint_malformed_and_unknown_ids(flask_client: Any) -> None:
    """Flask: a 256-character id is 400, an unknown one 404, both JSON."""
    long = flask_client.get("/anon/tasks/" + "x" * 256)
    unknown = flask_client.get(f"/anon/tasks/{uuid.uuid4()}")
    assert [(400, {"error": "malformed task id"}), (404, {"error": "not found"})] == [
        (r.status_code, r.get_json()) for r in (long, unknown)]


# --- Django -------------------------------------------------------------------------------------
DJANGO_SCRIPT = """
    import json, os, sys
    import django
    from django.conf import settings

    def can_see(request, task_id):
        from django.http import HttpRequest
        assert isinstance(request, HttpRequest), type(request)
        return request.headers.get("X-Token") == "let-me-in"

    settings.configure(
        DEBUG=False, ALLOWED_HOSTS=["testserver"], ROOT_URLCONF=__name__, SECRET_KEY="test",
        MIDDLEWARE=[], INSTALLED_APPS=[],
        OTEL_PROGRESS_CELERY_APP="tests.apps.web_app.app",
    )
    django.setup()
    from django.urls import include, path
    urlpatterns = [path("progress/", include("otel_progress.web.django.urls"))]
    from django.test import Client, override_settings

    task_id = os.environ["TASK_ID"]
    client = Client()
    out = {}
    def get(key, url, **headers):
        r = client.get(url, headers=headers)
        body = r.content.decode()
        out[key] = [r.status_code, {k.lower(): v for k, v in r.headers.items()},
                    json.loads(body) if r["Content-Type"] == "application/json" else body[:4000]]

    get("deny", f"/progress/tasks/{task_id}")
    get("deny_view", f"/progress/tasks/{task_id}/view")
    get("widget", "/progress/static/otel-progress.js")
    with override_settings(OTEL_PROGRESS_ALLOW_ANONYMOUS=True):
        get("anon", f"/progress/tasks/{task_id}")
        get("envelope", f"/progress/tasks/{task_id}?format=celery-progress")
        get("long", "/progress/tasks/" + "x" * 256)
        get("unknown", "/progress/tasks/00000000-0000-0000-0000-000000000000")
        get("list", "/progress/tasks?since=1h&limit=500")
        get("list_bad", "/progress/tasks?limit=900")
        get("log", f"/progress/tasks/{task_id}/log")
    with override_settings(OTEL_PROGRESS_AUTHORIZE=__name__ + ".can_see"):
        get("list_no", "/progress/tasks")
        get("auth_ok", f"/progress/tasks/{task_id}", X_Token="let-me-in")
        get("auth_ok_view", f"/progress/tasks/{task_id}/view", X_Token="let-me-in")
        get("auth_no", f"/progress/tasks/{task_id}")
        get("auth_no_view", f"/progress/tasks/{task_id}/view")
    with override_settings(OTEL_PROGRESS_AUTHORIZE=can_see):
        get("callable", f"/progress/tasks/{task_id}", X_Token="let-me-in")
    print("RESULT " + json.dumps({k: [v[0], v[1], v[2]] for k, v in out.items()}))
"""


@pytest.fixture(scope="module")
def django_answers(finished: str, redis_server: RedisServer,
                   tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """What Django's test client got for each request of DJANGO_SCRIPT (a child process)."""
    tmp: Path = tmp_path_factory.mktemp("django")
    result = run_python(DJANGO_SCRIPT, tmp, env={"TASK_ID": finished,
                                                 "OTEL_PROGRESS_TEST_REDIS_URL": redis_server.url})
    assert 0 == result.returncode, result.describe()
    answers: dict[str, Any] = result.result
    return answers


def test_django_views_deny_without_a_setting(django_answers: dict[str, Any]) -> None:
    """Django: neither OTEL_PROGRESS_AUTHORIZE nor ..._ALLOW_ANONYMOUS: 403, widget public."""
    assert [403, 403, 200] == [django_answers[k][0] for k in ("deny", "deny_view", "widget")]
    assert {"error": "forbidden"} == django_answers["deny"][2]


def test_django_views_serve_the_payload(django_answers: dict[str, Any]) -> None:
    """Django: 200 with the payload and the headers; the envelope; 400 and 404 as JSON."""
    status, headers, body = django_answers["anon"]
    assert (200, "succeeded") == (status, body["state"])
    assert (BASE | {"content-type": "application/json"}).items() <= headers.items()
    assert True is django_answers["envelope"][2]["success"]
    assert [400, 404] == [django_answers[k][0] for k in ("long", "unknown")]


def test_django_authorize_setting_dotted_path_and_callable(
        django_answers: dict[str, Any]) -> None:
    """Django: OTEL_PROGRESS_AUTHORIZE (dotted path or callable) gets HttpRequest; False is 403."""
    assert [200, 200, 403, 403, 200] == [django_answers[k][0] for k in (
        "auth_ok", "auth_ok_view", "auth_no", "auth_no_view", "callable")]
    assert "data-otel-progress" in django_answers["auth_ok_view"][2]


def test_django_views_list_the_history_and_serve_the_log(django_answers: dict[str, Any],
                                                         finished: str) -> None:
    """Django: tasks lists history rows (400 for a bad limit, 403 refused), log is text."""
    status, _, body = django_answers["list"]
    assert (200, True) == (status, finished in [r["task_id"] for r in body["tasks"]])
    assert [400, 403] == [django_answers[k][0] for k in ("list_bad", "list_no")]
    status, headers, text = django_answers["log"]
    assert (200, "text/plain; charset=utf-8", True) == (
        status, headers["content-type"], "Task Finished" in text)


@pytest.mark.parametrize("framework", ["fastapi", "flask"])
def test_fastapi_and_flask_list_the_history_and_serve_the_log(
        framework: str, fastapi_client: Any, flask_client: Any, finished: str) -> None:
    """FastAPI and Flask: /tasks lists history rows, /tasks/<id>/log is text, deny is 403."""
    client = fastapi_client if framework == "fastapi" else flask_client
    listed = client.get("/anon/tasks?since=1h&limit=500")
    body = listed.json() if framework == "fastapi" else listed.get_json()
    log = client.get(f"/anon/tasks/{finished}/log")
    text = log.text if framework == "fastapi" else log.get_data(as_text=True)
    assert (200, True) == (listed.status_code,
                           finished in [r["task_id"] for r in body["tasks"]])
    assert (200, "text/plain; charset=utf-8", True) == (
        log.status_code, log.headers["content-type"], "Task Finished" in text)
    assert [403, 403, 400] == [client.get(u).status_code for u in (
        "/deny/tasks", f"/deny/tasks/{finished}/log", "/anon/tasks?state=done")]


def test_adapters_answer_alike(fastapi_client: Any, flask_client: Any, finished: str,
                               django_answers: dict[str, Any]) -> None:
    """One reader: the three adapters give the same body for the same task."""
    fast = fastapi_client.get(f"/anon/tasks/{finished}").json()
    flask_body = flask_client.get(f"/anon/tasks/{finished}").get_json()
    ignore = {"stale"}
    assert {k: v for k, v in fast.items() if k not in ignore} == {
        k: v for k, v in flask_body.items() if k not in ignore}
    assert json.dumps(fast["sections"]) == json.dumps(django_answers["anon"][2]["sections"])
