"""Cooperative cancel: ``request_cancel()``, ``POST /tasks/<id>/cancel`` and the widget's button.

A real prefork worker of tests.apps.live_app (Redis broker and backend, spans to a real OTLP/gRPC
receiver on 127.0.0.1), the status app on uvicorn, and Debian's chromium under Playwright.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from typing import Any

import httpx
import jsonschema
import pytest
from celery.result import AsyncResult

from otel_progress import _attributes as A
from otel_progress._payload import schema
from otel_progress.celery import get_progress, request_cancel
from otel_progress.web import create_app
from tests.support.celery_worker import CeleryWorker
from tests.support.otlp_receiver import OtlpGrpcReceiver, SpanRecord
from tests.support.redis_server import RedisServer
from tests.support.web import Gates, UvicornServer, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

MIN_INTERVAL = 0.1
"""The worker's flusher interval: a cancel is seen within this plus one section."""
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpGrpcReceiver]:
    """One OTLP/gRPC receiver on 127.0.0.1 for the module's worker."""
    with OtlpGrpcReceiver() as running:
        yield running


@pytest.fixture(scope="module")
def app(redis_server: RedisServer) -> Any:
    """tests.apps.live_app as the producer sees it, on this session's Redis."""
    from tests.apps import live_app

    live_app.app.conf.update(broker_url=redis_server.url, result_backend=redis_server.url)
    return live_app


@pytest.fixture(scope="module")
def worker(redis_server: RedisServer, receiver: OtlpGrpcReceiver,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[CeleryWorker]:
    """One prefork worker (-c 2) of tests.apps.live_app for the module; stopped by PID."""
    from tests.support.celery_worker import internal_errors

    started = CeleryWorker(
        "tests.apps.live_app", log_dir=tmp_path_factory.mktemp("cancel-worker"),
        redis_url=redis_server.url, concurrency=2, queues=("live",),
        env={"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
             "OTEL_EXPORTER_OTLP_INSECURE": "true", "OTEL_BSP_SCHEDULE_DELAY": "100",
             "OTEL_PROGRESS_TEST_MIN_INTERVAL": str(MIN_INTERVAL)})
    started.start()
    try:
        yield started
    finally:
        started.stop(timeout=15.0)
        bad = internal_errors(started.log_text())
        print(f"\n=== cancel worker log: {started.log_path}\n{started.log_tail()}")
    if bad:
        pytest.fail("the worker hit an otel_progress internal error:\n" + "\n".join(bad[:20]))


@pytest.fixture(scope="module")
def server(app: Any, worker: CeleryWorker) -> Iterator[UvicornServer]:
    """The status app with the cancel button, for anonymous loopback clients."""
    with UvicornServer(create_app(app.app, allow_anonymous=True, cancellable=True)) as running:
        yield running


def _running_with(app: Any, task_id: str, jobs: int) -> dict[str, Any]:
    def check() -> Any:
        payload = get_progress(task_id, app=app.app)
        return payload if payload and payload["state"] == "running" \
            and payload["jobs"]["finished"] >= jobs else None
    found: dict[str, Any] = wait_for(check, timeout=30, what=f"{jobs} jobs of {task_id}")
    return found


def _final(app: Any, task_id: str) -> dict[str, Any]:
    def check() -> Any:
        payload = get_progress(task_id, app=app.app)
        return payload if payload and payload["finished"] else None
    found: dict[str, Any] = wait_for(check, timeout=30, what=f"{task_id} finished")
    return found


def _spans_of(receiver: OtlpGrpcReceiver, trace_id: str, run_name: str) -> list[SpanRecord]:
    spans: list[SpanRecord] = receiver.wait_for_spans(lambda ss: any(
        s.trace_id == trace_id and s.name == run_name for s in ss), timeout=20)
    return [s for s in spans if s.trace_id == trace_id]


def test_request_cancel_stops_the_task_at_its_next_section(
        app: Any, worker: CeleryWorker, receiver: OtlpGrpcReceiver) -> None:
    """A cancel from Python stops a task that never checks within one flusher interval plus one
    section: Celery REVOKED, payload revoked (TaskCancelled), the spans end where it stopped."""
    result = app.stepwise.delay(steps=400, pause=0.05)
    before = _running_with(app, result.id, 3)
    asked = time.monotonic()
    assert request_cancel(result.id, app=app.app) is True
    wait_for(lambda: AsyncResult(result.id, app=app.app).state == "REVOKED", timeout=30,
             what="REVOKED")
    payload = _final(app, result.id)
    seen_after = time.monotonic() - asked
    assert ("revoked", 0, "TaskCancelled") == (
        payload["state"], payload["status"], payload["exc_type"])
    jsonschema.validate(payload, schema())
    done = payload["jobs"]["finished"]
    # within one flusher interval (and the staleness of what we read) plus one section
    assert before["jobs"]["finished"] <= done <= before["jobs"]["finished"] + 10, seen_after
    assert done < 400
    spans = _spans_of(receiver, payload["trace_id"], "run/live_app.stepwise")
    run = next(s for s in spans if s.name == "run/live_app.stepwise")
    steps = [s for s in spans if s.name.startswith("step ")]
    assert ("revoked", True) == (
        run.attributes[A.SECTION_STATE], run.attributes[A.CANCEL_REQUESTED])
    assert "STATUS_CODE_ERROR" != run.status_code
    assert done == len(steps)
    assert {"succeeded"} == {s.attributes[A.SECTION_STATE] for s in steps}
    assert [f"step {i}" for i in range(done)] == sorted(
        (s.name for s in steps), key=lambda n: int(n.split()[1]))


def test_updater_cancelled_lets_a_loop_stop_cleanly(
        app: Any, worker: CeleryWorker, gates: Gates) -> None:
    """A loop that reads updater.cancelled stops without an exception; the run reads revoked."""
    gate = gates.new()
    result = app.polling.delay(gate)
    wait_for(lambda: (get_progress(result.id, app=app.app) or {}).get("sections"), timeout=30,
             what="inside the section")
    assert request_cancel(result.id, app=app.app) is True
    time.sleep(MIN_INTERVAL * 5)  # the flusher has read the request before the loop starts
    gates.open(gate)
    answer = result.get(timeout=30)
    payload = _final(app, result.id)
    assert ("stopped at 0", "revoked", "SUCCESS") == (
        answer, payload["state"], AsyncResult(result.id, app=app.app).state)


def test_raise_if_cancelled_raises_task_cancelled_and_celery_stores_revoked(
        app: Any, worker: CeleryWorker) -> None:
    """raise_if_cancelled() ends the task: REVOKED in Celery, revoked in the payload."""
    result = app.explicit.delay()
    wait_for(lambda: (get_progress(result.id, app=app.app) or {}).get("state") == "running",
             timeout=30, what="running")
    request_cancel(result.id, app=app.app)
    wait_for(lambda: AsyncResult(result.id, app=app.app).state == "REVOKED", timeout=30,
             what="REVOKED")
    payload = _final(app, result.id)
    assert ("revoked", "revoked") == (payload["state"], payload["sections"][0]["state"])
    jsonschema.validate(payload, schema())


def test_a_task_that_catches_task_cancelled_still_reads_revoked(
        app: Any, worker: CeleryWorker) -> None:
    """notify() raises TaskCancelled; a task catching it returns, and its run reads revoked."""
    result = app.catches.delay()
    wait_for(lambda: (get_progress(result.id, app=app.app) or {}).get("state") == "running",
             timeout=30, what="running")
    request_cancel(result.id, app=app.app)
    assert "caught" == result.get(timeout=30)
    assert "revoked" == _final(app, result.id)["state"]


# --- the route ------------------------------------------------------------------------------
def test_cancel_route_needs_a_json_body_or_the_custom_header(
        app: Any, server: UvicornServer, gates: Gates) -> None:
    """A plain form post is refused (400, nothing stored); JSON or X-OTel-Progress answer 202."""
    gate = gates.new()
    result = app.nested.delay(gate)
    wait_for(lambda: (get_progress(result.id, app=app.app) or {}).get("state") == "running",
             timeout=30, what="running")
    url = f"{server.url}/tasks/{result.id}/cancel"
    with httpx.Client(timeout=10) as client:
        form = client.post(url, data={"x": "1"})
        assert 400 == form.status_code
        assert get_progress(result.id, app=app.app)["state"] == "running"
        header = client.post(url, headers={"X-OTel-Progress": "cancel"})
        json_body = client.post(url, json={})
    assert (202, 202) == (header.status_code, json_body.status_code)
    assert {"task_id": result.id, "cancel_requested": True, "state": "running"} == header.json()
    time.sleep(MIN_INTERVAL * 5)  # the flusher has read the request before the task goes on
    gates.open(gate)
    wait_for(lambda: AsyncResult(result.id, app=app.app).state == "REVOKED", timeout=30,
             what="REVOKED")


def test_cancel_route_answers_404_for_unknown_and_409_for_finished_tasks(
        app: Any, server: UvicornServer) -> None:
    """An id never tracked reads 404; a finished task 409 with its state; nothing is stored."""
    done = app.stepwise.delay(steps=1, pause=0.0)
    assert "all steps" == done.get(timeout=30)
    _final(app, done.id)
    with httpx.Client(timeout=10) as client:
        unknown = client.post(f"{server.url}/tasks/never-seen/cancel", json={})
        finished = client.post(f"{server.url}/tasks/{done.id}/cancel", json={})
        malformed = client.post(f"{server.url}/tasks/{'x' * 300}/cancel", json={})
        get = client.get(f"{server.url}/tasks/{done.id}/cancel")
    assert (404, 409, {"error": "the task has finished", "state": "succeeded"}, 400, 405) == (
        unknown.status_code, finished.status_code, finished.json(), malformed.status_code,
        get.status_code)


def test_cancel_route_is_behind_authorize(app: Any, worker: CeleryWorker) -> None:
    """authorize runs before any lookup: a refused cancel is a 403 and stores nothing."""
    asked: list[str] = []

    def refuse(request: Any, task_id: str) -> bool:
        asked.append(task_id)
        return False

    with UvicornServer(create_app(app.app, authorize=refuse)) as running, \
            httpx.Client(timeout=10) as client:
        answer = client.post(f"{running.url}/tasks/some-task/cancel", json={})
    assert (403, ["some-task"]) == (answer.status_code, asked)


# --- the browser ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's chromium under Playwright; fails (never skips) when it is not installed."""
    executable = shutil.which("chromium")
    if executable is None:
        pytest.fail("chromium missing: apt-get update && apt-get install -y chromium",
                    pytrace=False)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def test_clicking_cancel_stops_the_task_and_the_page_shows_revoked(
        app: Any, server: UvicornServer, receiver: OtlpGrpcReceiver, browser: Any) -> None:
    """Click Cancel on /tasks/<id>/view: the task stops at its next section, the page reads
    revoked, and the span tree ends at the last section that ran."""
    result = app.stepwise.delay(steps=400, pause=0.05)
    _running_with(app, result.id, 2)
    context = browser.new_context(viewport={"width": 900, "height": 700})
    context.set_default_timeout(20_000)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        page.goto(f"{server.url}/tasks/{result.id}/view")
        page.wait_for_selector(".otp[data-state=running] .otp-cancel:not([hidden])")
        page.click(".otp-cancel")
        page.wait_for_selector(".otp[data-state=revoked][data-polling=false]", state="attached")
        badge = page.locator(".otp-badge").text_content()
        cancel_hidden = page.locator(".otp-cancel").is_hidden()
    finally:
        context.close()
    assert ([], "revoked", True) == (errors, badge, cancel_hidden)
    assert "REVOKED" == AsyncResult(result.id, app=app.app).state
    payload = _final(app, result.id)
    spans = _spans_of(receiver, payload["trace_id"], "run/live_app.stepwise")
    steps = sorted(int(s.name.split()[1]) for s in spans if s.name.startswith("step "))
    assert steps == list(range(payload["jobs"]["finished"]))
    assert 2 <= len(steps) < 400


# --- the framework adapters ------------------------------------------------------------------
def _held(app: Any, gates: Gates) -> tuple[str, str]:
    """A running task waiting on a gate inside its sections: (task id, gate)."""
    gate = gates.new()
    task_id = str(app.nested.delay(gate).id)
    wait_for(lambda: (get_progress(task_id, app=app.app) or {}).get("state") == "running",
             timeout=30, what="running")
    return task_id, gate


def test_fastapi_and_flask_adapters_serve_the_cancel_route(
        app: Any, worker: CeleryWorker, gates: Gates) -> None:
    """FastAPI and Flask: 400 without JSON or header, 202 with them (stored), 403 when denied."""
    import flask
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from otel_progress import _backend
    from otel_progress.web.fastapi import router
    from otel_progress.web.flask import blueprint

    fast = FastAPI()
    fast.include_router(router(app.app, allow_anonymous=True), prefix="/anon")
    fast.include_router(router(app.app), prefix="/deny")
    flask_app = flask.Flask("cancel_test")
    flask_app.register_blueprint(blueprint(app.app, allow_anonymous=True, name="anon"),
                                 url_prefix="/anon")
    flask_app.register_blueprint(blueprint(app.app, name="deny"), url_prefix="/deny")
    answers = []
    with TestClient(fast) as fast_client:
        for client in (fast_client, flask_app.test_client()):
            task_id, gate = _held(app, gates)
            url = f"/anon/tasks/{task_id}/cancel"
            plain = client.post(url, data={"x": "1"}).status_code
            stored_early = _backend.cancel_requested(app.app.backend, task_id)
            denied = client.post(f"/deny/tasks/{task_id}/cancel", json={}).status_code
            accepted = client.post(url, json={}).status_code
            answers.append((plain, stored_early, denied, accepted,
                            _backend.cancel_requested(app.app.backend, task_id)))
            gates.open(gate)
    assert [(400, False, 403, 202, True)] * 2 == answers


DJANGO_SCRIPT = """
    import json, os
    import django
    from django.conf import settings

    settings.configure(
        DEBUG=False, ALLOWED_HOSTS=["testserver"], ROOT_URLCONF=__name__, SECRET_KEY="test",
        MIDDLEWARE=["django.middleware.csrf.CsrfViewMiddleware"], INSTALLED_APPS=[],
        OTEL_PROGRESS_CELERY_APP="tests.apps.live_app.app", OTEL_PROGRESS_ALLOW_ANONYMOUS=True,
    )
    django.setup()
    from django.urls import include, path
    urlpatterns = [path("progress/", include("otel_progress.web.django.urls"))]
    from django.test import Client

    client = Client(enforce_csrf_checks=True)  # Django's CSRF check is on
    url = "/progress/tasks/" + os.environ["TASK_ID"] + "/cancel"
    out = {
        "form": client.post(url, {"x": "1"}).status_code,
        "json": client.post(url, "{}", content_type="application/json").status_code,
        "header": client.post(url, headers={"X-OTel-Progress": "cancel"}).status_code,
        "get": client.get(url).status_code,
    }
    print("RESULT " + json.dumps(out))
"""


def test_django_cancel_view_is_csrf_safe_by_its_own_design(
        app: Any, worker: CeleryWorker, gates: Gates, redis_server: RedisServer,
        tmp_path: Any) -> None:
    """Django (CSRF middleware on): a form post is 400, JSON or the header 202, GET 405."""
    from tests.support import run_python

    task_id, gate = _held(app, gates)
    result = run_python(DJANGO_SCRIPT, tmp_path, env={
        "TASK_ID": task_id, "OTEL_PROGRESS_TEST_REDIS_URL": redis_server.url})
    gates.open(gate)
    assert 0 == result.returncode, result.describe()
    assert {"form": 400, "json": 202, "header": 202, "get": 405} == result.result


def test_the_cancel_button_is_opt_in(app: Any, worker: CeleryWorker, gates: Gates,
                                     browser: Any) -> None:
    """Without cancellable the view page of a running task shows no cancel button."""
    task_id, gate = _held(app, gates)
    with UvicornServer(create_app(app.app, allow_anonymous=True)) as running:
        context = browser.new_context()
        try:
            page = context.new_page()
            page.goto(f"{running.url}/tasks/{task_id}/view")
            page.wait_for_selector(".otp[data-state=running]", state="attached", timeout=20_000)
            hidden = page.locator(".otp-cancel").is_hidden()
        finally:
            context.close()
    gates.open(gate)
    assert hidden is True
