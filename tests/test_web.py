"""The status app over HTTP: uvicorn on 127.0.0.1, a real Redis and a real worker.

One test per Celery state, then ids, access, headers and CORS. Apps with different options are
mounted side by side on one server (``/anon``, ``/default``, ``/auth``, ...), which also checks
that the routes work under a prefix.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from celery import Celery
from starlette.requests import Request
from starlette.testclient import TestClient

from otel_progress._payload import parse_iso
from otel_progress.web import STALE_AFTER, create_app
from otel_progress.web._reader import Facts, Reader
from tests.support.celery_worker import CeleryWorker
from tests.support.web import Gates, Prefixes, Producer, UvicornServer, free_port, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120), pytest.mark.usefixtures("tracking")]

JAEGER = "http://localhost:16686/trace/{trace_id}"
TOKEN = "let-me-in"
ALLOWED_ORIGIN = "http://frontend.test:3000"
BASE_HEADERS = {"cache-control": "no-store", "x-content-type-options": "nosniff"}

calls: list[str] = []
"""Task ids the authorize hooks were called with (to prove the order of checks)."""


def _sync_hook(request: Request, task_id: str) -> bool:
    calls.append(task_id)
    return request.headers.get("x-test-token") == TOKEN


async def _async_hook(request: Request, task_id: str) -> bool:
    calls.append(task_id)
    return request.headers.get("x-test-token") == TOKEN


def _raising_hook(request: Request, task_id: str) -> bool:
    raise RuntimeError("the hook's own bug")


@pytest.fixture(scope="module")
def server(producer: Producer, web_worker: CeleryWorker) -> Iterator[UvicornServer]:
    """The status app in its configurations, one uvicorn server on a free loopback port."""
    app = producer.app
    down = Celery("down", broker="memory://", backend=f"redis://127.0.0.1:{free_port()}/0",
                  set_as_current=False)
    root = Prefixes({
        "/anon": create_app(app, allow_anonymous=True, trace_url=JAEGER),
        "/default": create_app(app),
        "/auth": create_app(app, authorize=_sync_hook),
        "/auth-async": create_app(app, authorize=_async_hook),
        "/auth-raises": create_app(app, authorize=_raising_hook),
        "/cors": create_app(app, allow_anonymous=True, cors_origins=[ALLOWED_ORIGIN]),
        "/result": create_app(app, allow_anonymous=True, include_result=True),
        "/tb": create_app(app, allow_anonymous=True, include_traceback=True),
        "/down": create_app(down, allow_anonymous=True),
    })
    with UvicornServer(root) as running:
        yield running


@pytest.fixture
def http(server: UvicornServer) -> Iterator[httpx.Client]:
    """An HTTP client on the server's base URL (bounded timeouts)."""
    with httpx.Client(base_url=server.url, timeout=10.0) as client:
        yield client


def _payload(http: httpx.Client, task_id: str, prefix: str = "/anon", **params: str) -> Any:
    response = http.get(f"{prefix}/tasks/{task_id}", params=params)
    assert 200 == response.status_code, response.text
    return response.json()


def _until(http: httpx.Client, task_id: str, what: str, check: Any, **params: str) -> Any:
    def probe() -> Any:
        response = http.get(f"/anon/tasks/{task_id}", params=params)
        if response.status_code != 200:
            return None
        body = response.json()
        return body if check(body) else None
    return wait_for(probe, what=what)


def _tracked_pending(producer: Producer) -> str:
    """A task published (so tracked ``queued``) to a queue no worker consumes."""
    return str(producer.hold.apply_async(("never",), queue=f"nobody-{uuid.uuid4().hex}").id)


# --- one test per Celery state ------------------------------------------------------------------
def test_pending_task_reads_queued(http: httpx.Client, producer: Producer) -> None:
    """PENDING (published, not started): 200 ``queued``, pending, Celery's name kept."""
    task_id = _tracked_pending(producer)
    body = _payload(http, task_id)
    assert ("queued", True, "PENDING", False) == (body["state"], body["pending"],
                                                   body["celery_state"], body["stale"])


def test_received_task_reads_queued(http: httpx.Client, producer: Producer) -> None:
    """RECEIVED (Celery sends it only as an event; stored here by hand): ``queued``."""
    task_id = _tracked_pending(producer)
    producer.app.backend.store_result(task_id, None, "RECEIVED")
    body = _payload(http, task_id)
    assert ("queued", "RECEIVED") == (body["state"], body["celery_state"])


def test_started_task_without_progress_reads_running(
        http: httpx.Client, producer: Producer, gates: Gates) -> None:
    """STARTED (task_track_started, no updater yet): ``running``, Celery's name kept."""
    gate = gates.new()
    task_id = producer.hold.delay(gate, with_updater=False).id
    body = _until(http, task_id, "STARTED", lambda b: b.get("celery_state") == "STARTED")
    assert ("running", False, False) == (body["state"], body["pending"], body["finished"])


def test_progress_reads_running_with_its_sections(
        http: httpx.Client, producer: Producer, gates: Gates) -> None:
    """PROGRESS: ``running``, the open section listed as running, no stale flag yet."""
    gate = gates.new()
    task_id = producer.hold.delay(gate).id
    body = _until(http, task_id, "PROGRESS", lambda b: b.get("celery_state") == "PROGRESS")
    assert ("running", "holding", "running", False, "holding") == (
        body["state"], body["sections"][0]["name"], body["sections"][0]["state"],
        body["stale"], body["description"])


def test_success_reads_succeeded_at_100(http: httpx.Client, producer: Producer) -> None:
    """SUCCESS: ``succeeded`` at 100 %, finished, the section succeeded."""
    task_id = producer.quick.delay(3, 0.01).id
    body = _until(http, task_id, "SUCCESS", lambda b: b.get("celery_state") == "SUCCESS")
    assert ("succeeded", 100.0, True, ["succeeded"]) == (
        body["state"], body["percent"], body["finished"], [s["state"] for s in body["sections"]])


def test_failure_reads_failed_with_the_exception_and_no_traceback(
        http: httpx.Client, producer: Producer) -> None:
    """FAILURE: ``failed`` with Celery's exception type and message; no traceback key."""
    task_id = producer.raises.delay().id
    body = _until(http, task_id, "FAILURE", lambda b: b.get("celery_state") == "FAILURE")
    assert ("failed", "ValueError", "task failed", False) == (
        body["state"], body["exc_type"], body["exc_message"], "traceback" in body)


def test_retry_reads_retrying_with_retry_at_from_the_message_eta(
        http: httpx.Client, producer: Producer) -> None:
    """RETRY: ``retrying``, ``retry_at`` = the retry message's ETA (countdown 120 s), in UTC."""
    before = time.time()
    task_id = producer.retry_later.delay(120).id
    body = _until(http, task_id, "RETRY", lambda b: b.get("celery_state") == "RETRY")
    after = time.time()
    due = parse_iso(body["retry_at"])
    assert due is not None, body
    assert ("retrying", True, True) == (body["state"], body["retry_at"].endswith("Z"),
                                        before + 119 <= due <= after + 121)
    producer.app.control.revoke(task_id)  # the second attempt need not run during the module


def test_revoked_task_reads_revoked(
        http: httpx.Client, producer: Producer, gates: Gates) -> None:
    """REVOKED (revoke with terminate while it runs): ``revoked``, finished, section failed."""
    gate = gates.new()
    task_id = producer.hold.delay(gate).id
    _until(http, task_id, "running", lambda b: b.get("celery_state") == "PROGRESS")
    producer.app.control.revoke(task_id, terminate=True)
    body = _until(http, task_id, "REVOKED", lambda b: b.get("celery_state") == "REVOKED")
    assert ("revoked", True, "failed") == (body["state"], body["finished"],
                                           body["sections"][0]["state"])


def test_ignored_task_reads_succeeded(http: httpx.Client, producer: Producer) -> None:
    """IGNORED (stored by hand, as a task that raises Ignore does): ``succeeded``, final."""
    task_id = _tracked_pending(producer)
    producer.app.backend.store_result(task_id, None, "IGNORED")
    body = _payload(http, task_id)
    envelope = _payload(http, task_id, format="celery-progress")
    assert ("succeeded", "IGNORED", True) == (body["state"], body["celery_state"],
                                              body["finished"])
    assert (True, None, "IGNORED") == (envelope["complete"], envelope["success"],
                                       envelope["state"])


def test_rejected_task_reads_failed(http: httpx.Client, producer: Producer) -> None:
    """REJECTED (stored by hand): ``failed``, final."""
    task_id = _tracked_pending(producer)
    producer.app.backend.store_result(task_id, None, "REJECTED")
    body = _payload(http, task_id)
    assert ("failed", "REJECTED", True) == (body["state"], body["celery_state"], body["finished"])


def test_custom_state_reads_running_with_the_raw_name(
        http: httpx.Client, producer: Producer, gates: Gates) -> None:
    """A task's own state (``update_state("CRUNCHING")``): ``running``, the raw name kept."""
    gate = gates.new()
    task_id = producer.custom_state.delay(gate).id
    body = _until(http, task_id, "CRUNCHING", lambda b: b.get("celery_state") == "CRUNCHING")
    envelope = _payload(http, task_id, format="celery-progress")
    assert "running" == body["state"]
    assert (False, None, "CRUNCHING") == (envelope["complete"], envelope["success"],
                                          envelope["state"])


def test_backend_down_answers_503_with_retry_after(http: httpx.Client) -> None:
    """A result backend that refuses connections: 503, ``Retry-After``, the usual headers."""
    response = http.get(f"/down/tasks/{uuid.uuid4()}")
    assert (503, "2", {"error": "result backend unavailable"}) == (
        response.status_code, response.headers.get("retry-after"), response.json())
    assert BASE_HEADERS.items() <= dict(response.headers).items()


def test_a_task_that_stopped_changing_reads_stale(
        producer: Producer, web_worker: CeleryWorker, gates: Gates) -> None:
    """A running payload older than ``stale_after`` reads ``stale: true`` (and its ``updated``)."""
    reader = Reader(producer.app, policy="anonymous", stale_after=0.5)
    gate = gates.new()
    task_id = producer.hold.delay(gate).id

    def body() -> Any:
        import json

        return json.loads(reader.lookup(task_id).body)
    wait_for(lambda: body().get("celery_state") == "PROGRESS", what="PROGRESS")
    stale = wait_for(lambda: (b := body())["stale"] and b, what="stale")
    assert ("running", True) == (stale["state"], parse_iso(stale["updated"]) is not None)
    gates.open(gate)
    done = wait_for(lambda: (b := body())["state"] == "succeeded" and b, what="succeeded")
    assert False is done["stale"]
    assert 30.0 == STALE_AFTER


# --- the celery-progress envelope ---------------------------------------------------------------
def test_celery_progress_envelope_while_running(
        http: httpx.Client, producer: Producer, gates: Gates) -> None:
    """``?format=celery-progress`` while running: not complete, success null, its five keys."""
    gate = gates.new()
    task_id = producer.hold.delay(gate).id
    _until(http, task_id, "PROGRESS", lambda b: b.get("celery_state") == "PROGRESS")
    envelope = _payload(http, task_id, format="celery-progress")
    assert (False, None, "PROGRESS", False) == (envelope["complete"], envelope["success"],
                                                envelope["state"], "result" in envelope)
    assert {"pending", "current", "total", "percent", "description"} == set(envelope["progress"])
    assert "holding" == envelope["progress"]["description"]


def test_celery_progress_envelope_final_states(http: httpx.Client, producer: Producer) -> None:
    """Succeeded: complete, success true, 100 %; failed: success false; no result unasked."""
    ok = producer.quick.delay(2, 0.01).id
    bad = producer.raises.delay().id
    _until(http, ok, "SUCCESS", lambda b: b.get("celery_state") == "SUCCESS")
    _until(http, bad, "FAILURE", lambda b: b.get("celery_state") == "FAILURE")
    good = _payload(http, ok, format="celery-progress")
    failed = _payload(http, bad, format="celery-progress")
    assert (True, True, 100.0, False) == (good["complete"], good["success"],
                                          good["progress"]["percent"], "result" in good)
    assert (True, False, "FAILURE", False) == (failed["complete"], failed["success"],
                                               failed["state"], "result" in failed)


def test_fail_then_return_reads_success_false(http: httpx.Client, producer: Producer) -> None:
    """The seed (a job failed, Celery says SUCCESS): our ``failed`` verdict, success false."""
    task_id = producer.seed.delay(0.0).id
    _until(http, task_id, "SUCCESS", lambda b: b.get("celery_state") == "SUCCESS")
    envelope = _payload(http, task_id, format="celery-progress")
    assert (True, False) == (envelope["complete"], envelope["success"])


def test_celery_progress_envelope_of_a_retry(http: httpx.Client, producer: Producer) -> None:
    """A retry reads as celery-progress writes it: RETRY, next_retry_seconds, keep polling."""
    task_id = producer.retry_later.delay(120).id
    _until(http, task_id, "RETRY", lambda b: b.get("celery_state") == "RETRY")
    envelope = _payload(http, task_id, format="celery-progress")
    assert (True, False, "RETRY") == (envelope["complete"], envelope["success"],
                                      envelope["state"])
    assert 100 <= envelope["result"]["next_retry_seconds"] <= 120
    producer.app.control.revoke(task_id)


def test_result_only_when_opted_in(http: httpx.Client, producer: Producer) -> None:
    """``include_result=True``: the task's return value in both formats; never otherwise."""
    task_id = producer.quick.delay(4, 0.01).id
    _until(http, task_id, "SUCCESS", lambda b: b.get("celery_state") == "SUCCESS")
    assert 4 == _payload(http, task_id, "/result")["result"]
    assert 4 == _payload(http, task_id, "/result", format="celery-progress")["result"]
    assert "result" not in _payload(http, task_id)


def test_traceback_only_when_opted_in(http: httpx.Client, producer: Producer) -> None:
    """``include_traceback=True``: a failed task's traceback (Celery's); never otherwise."""
    task_id = producer.raises.delay().id
    _until(http, task_id, "FAILURE", lambda b: b.get("celery_state") == "FAILURE")
    traceback = _payload(http, task_id, "/tb")["traceback"]
    assert ("Traceback (most recent call last):", "ValueError: task failed") == (
        traceback.splitlines()[0], traceback.strip().splitlines()[-1])
    assert "traceback" not in _payload(http, task_id)


def test_unknown_format_is_400(http: httpx.Client) -> None:
    """``?format=`` other than ours or celery-progress: 400."""
    response = http.get(f"/anon/tasks/{uuid.uuid4()}", params={"format": "xml"})
    assert (400, {"error": "unknown format"}) == (response.status_code, response.json())


# --- ids ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("raw", ["x" * 256, "caf%C3%A9", "a%0Ab", "tab%09id", "%7F"])
@pytest.mark.parametrize("route", ["/anon/tasks/{}", "/anon/tasks/{}/view", "/auth/tasks/{}"])
def test_malformed_ids_are_400(http: httpx.Client, raw: str, route: str) -> None:
    """Over 255 characters or not printable ASCII: 400 on every route, before authorize."""
    calls.clear()
    response = http.get(route.format(raw))
    assert (400, {"error": "malformed task id"}, []) == (response.status_code, response.json(),
                                                         calls)


def test_an_id_of_255_printable_characters_is_looked_up(http: httpx.Client) -> None:
    """255 printable ASCII characters (space and punctuation included) pass the check: 404."""
    raw = ("a b~!*" * 50)[:255]
    response = http.get("/anon/tasks/" + httpx.URL("/" + raw).raw_path.decode()[1:])
    assert 404 == response.status_code


def test_untracked_and_unknown_ids_give_the_same_404(
        http: httpx.Client, producer: Producer) -> None:
    """An id Celery knows but otel_progress never tracked reads exactly like an unknown one."""
    untracked = str(uuid.uuid4())
    producer.app.backend.store_result(untracked, {"secret": 42}, "SUCCESS")
    known = http.get(f"/anon/tasks/{untracked}")
    unknown = http.get(f"/anon/tasks/{uuid.uuid4()}")
    assert (404, unknown.content, dict(unknown.headers) | {"content-length": "0"}) == (
        known.status_code, known.content, dict(known.headers) | {"content-length": "0"})
    assert {"error": "not found"} == known.json()


# --- access -------------------------------------------------------------------------------------
@pytest.mark.parametrize("prefix", ["/auth", "/auth-async"])
def test_authorize_allows_and_denies_every_task_route(
        http: httpx.Client, producer: Producer, prefix: str) -> None:
    """The hook's True opens /tasks/{id} and /view; False gives the same 403 for any id."""
    task_id = producer.quick.delay(1, 0.0).id
    _until(http, task_id, "SUCCESS", lambda b: b.get("celery_state") == "SUCCESS")
    ok = {"x-test-token": TOKEN}
    assert 200 == http.get(f"{prefix}/tasks/{task_id}", headers=ok).status_code
    assert 200 == http.get(f"{prefix}/tasks/{task_id}/view", headers=ok).status_code
    denied = [http.get(f"{prefix}/tasks/{tid}{route}", headers={"x-test-token": "nope"})
              for tid in (task_id, uuid.uuid4()) for route in ("", "/view")]
    assert [(403, {"error": "forbidden"})] * 4 == [(r.status_code, r.json()) for r in denied]


def test_authorize_gets_the_request_and_the_task_id(http: httpx.Client) -> None:
    """The hook is called with the checked id, once per request."""
    calls.clear()
    task_id = str(uuid.uuid4())
    http.get(f"/auth/tasks/{task_id}")
    assert [task_id] == calls


def test_a_raising_hook_refuses(http: httpx.Client) -> None:
    """A hook that raises is a 403, never a 500."""
    response = http.get(f"/auth-raises/tasks/{uuid.uuid4()}")
    assert (403, {"error": "forbidden"}) == (response.status_code, response.json())


def test_the_widget_file_is_public_on_every_app(http: httpx.Client) -> None:
    """/static/otel-progress.js holds no task data: served under every policy."""
    statuses = {p: http.get(f"{p}/static/otel-progress.js").status_code
                for p in ("/anon", "/default", "/auth")}
    assert {"/anon": 200, "/default": 200, "/auth": 200} == statuses


def test_default_app_serves_loopback_clients(http: httpx.Client, producer: Producer) -> None:
    """No authorize, no allow_anonymous: a client on 127.0.0.1 reads every route."""
    task_id = _tracked_pending(producer)
    assert [200, 200] == [http.get(f"/default/tasks/{task_id}{r}").status_code
                          for r in ("", "/view")]


def test_default_app_refuses_proxied_requests(http: httpx.Client, producer: Producer) -> None:
    """A loopback peer relaying for someone (X-Forwarded-For, Forwarded) is refused."""
    task_id = _tracked_pending(producer)
    relayed = [http.get(f"/default/tasks/{task_id}{r}", headers={h: "203.0.113.9"}).status_code
               for r in ("", "/view") for h in ("x-forwarded-for", "forwarded")]
    assert [403] * 4 == relayed


def test_default_app_refuses_clients_off_loopback(producer: Producer) -> None:
    """A client whose address is not loopback (the test client's ``testclient``): 403."""
    with TestClient(create_app(producer.app)) as client:
        statuses = [client.get(f"/tasks/{uuid.uuid4()}{r}").status_code for r in ("", "/view")]
    assert [403, 403] == statuses


def test_create_app_checks_its_options() -> None:
    """A non-callable authorize or a single string for cors_origins is a TypeError."""
    app = Celery("opts", set_as_current=False)
    with pytest.raises(TypeError):
        create_app(app, authorize="not callable")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        create_app(app, cors_origins="http://one.test")


# --- headers and CORS ---------------------------------------------------------------------------
def test_every_answer_carries_the_headers(http: httpx.Client, producer: Producer) -> None:
    """200, 400, 403, 404, 503 and an unknown route: no-store, nosniff, JSON."""
    task_id = _tracked_pending(producer)
    answers = [
        http.get(f"/anon/tasks/{task_id}"), http.get("/anon/tasks/" + "x" * 300),
        http.get(f"/auth/tasks/{task_id}"), http.get(f"/anon/tasks/{uuid.uuid4()}"),
        http.get(f"/down/tasks/{task_id}"), http.get("/anon/nothing-here"),
    ]
    assert [200, 400, 403, 404, 503, 404] == [a.status_code for a in answers]
    for answer in answers:
        assert (BASE_HEADERS | {"content-type": "application/json"}).items() <= dict(
            answer.headers).items()


def test_view_page_headers_and_widget_mount(http: httpx.Client) -> None:
    """The view is HTML with a CSP forbidding inline script, and mounts the widget by data-*."""
    response = http.get(f"/anon/tasks/{uuid.uuid4()}/view")
    assert ("text/html; charset=utf-8", "no-store", "nosniff") == (
        response.headers["content-type"], response.headers["cache-control"],
        response.headers["x-content-type-options"])
    assert "script-src 'self';" in response.headers["content-security-policy"]
    assert 'data-trace-url="http://localhost:16686/trace/{trace_id}"' in response.text
    assert '<script src="../../static/otel-progress.js" defer></script>' in response.text


def test_cors_is_off_unless_origins_are_given(http: httpx.Client, producer: Producer) -> None:
    """No Access-Control-Allow-Origin without cors_origins, whatever the Origin header says."""
    task_id = _tracked_pending(producer)
    response = http.get(f"/anon/tasks/{task_id}", headers={"origin": ALLOWED_ORIGIN})
    assert (200, None) == (response.status_code,
                           response.headers.get("access-control-allow-origin"))


def test_cors_allows_only_the_listed_origins(http: httpx.Client, producer: Producer) -> None:
    """A listed origin gets its own name back (with credentials); another gets nothing."""
    task_id = _tracked_pending(producer)
    listed = http.get(f"/cors/tasks/{task_id}", headers={"origin": ALLOWED_ORIGIN})
    other = http.get(f"/cors/tasks/{task_id}", headers={"origin": "http://evil.test"})
    missing = http.get(f"/cors/tasks/{uuid.uuid4()}", headers={"origin": ALLOWED_ORIGIN})
    assert (ALLOWED_ORIGIN, "true", "Origin") == (
        listed.headers.get("access-control-allow-origin"),
        listed.headers.get("access-control-allow-credentials"), listed.headers.get("vary"))
    assert None is other.headers.get("access-control-allow-origin")
    assert (404, ALLOWED_ORIGIN) == (missing.status_code,
                                     missing.headers.get("access-control-allow-origin"))


def test_cors_preflight(http: httpx.Client) -> None:
    """OPTIONS from a listed origin: 204 with the methods; unlisted or CORS off: 403."""
    task_id = uuid.uuid4()
    headers = {"origin": ALLOWED_ORIGIN, "access-control-request-method": "GET",
               "access-control-request-headers": "authorization"}
    listed = http.options(f"/cors/tasks/{task_id}", headers=headers)
    off = http.options(f"/anon/tasks/{task_id}", headers=headers)
    assert (204, "GET, HEAD, OPTIONS", "authorization") == (
        listed.status_code, listed.headers.get("access-control-allow-methods"),
        listed.headers.get("access-control-allow-headers"))
    assert 403 == off.status_code


# --- the reader alone ---------------------------------------------------------------------------
def test_reader_checks_the_id_before_the_hook_and_the_hook_before_the_lookup() -> None:
    """answer(): a bad id never reaches the hook; a refusal never reaches the backend."""
    seen: list[str] = []

    class Backendless:
        @property
        def backend(self) -> Any:
            seen.append("lookup")
            raise AssertionError("no lookup expected")

    reader = Reader(Backendless(), policy="authorize")
    bad = reader.answer("é", {}, Facts(), lambda: seen.append("hook") or True)
    refused = reader.answer("ok", {}, Facts(), lambda: seen.append("hook") and False)
    assert ([400, 403], ["hook"]) == ([bad.status, refused.status], seen)


def test_reader_refuses_truthy_non_true_decisions() -> None:
    """Only ``True`` allows: 1, "yes" or a coroutine nobody awaited are refusals."""
    reader = Reader(Celery("x", set_as_current=False), policy="authorize")

    async def later() -> bool:
        return True

    coroutine_hook = reader.decide(lambda _r, _t: later(), None, "t")
    statuses = [reader.gate(Facts(), d) for d in (1, "yes", coroutine_hook)]
    assert [403, 403, 403] == [s.status if s else 200 for s in statuses]
