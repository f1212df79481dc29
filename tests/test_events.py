"""GET /tasks/<id>/events: server-sent events over uvicorn from a real worker's payloads, and
the widget on them (and falling back to polling) in Debian's chromium."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from celery import Celery

from otel_progress import web
from otel_progress.web import create_app
from tests.support.adoption import AdoptionGates, AdoptionProducer
from tests.support.web import Prefixes, UvicornServer, free_port, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


@dataclass
class Stream:
    """What one events request answered: status, headers, events, whether the server ended."""

    status: int
    headers: dict[str, str]
    events: list[dict[str, str]] = field(default_factory=list)
    ended: bool = False

    def progress(self) -> list[dict[str, Any]]:
        """The payloads of the ``progress`` events, in order."""
        return [json.loads(e["data"]) for e in self.events if e.get("event") == "progress"]


def _parse(block: str) -> dict[str, str]:
    event: dict[str, str] = {}
    for line in block.split("\n"):
        if line.startswith(":"):
            event["comment"] = line[1:].strip()
        elif ":" in line:
            key, _, value = line.partition(":")
            event[key] = value[1:] if value.startswith(" ") else value
    return event


def read_events(url: str, *, headers: dict[str, str] | None = None,
                until: Callable[[list[dict[str, str]]], bool] = lambda _: False,
                timeout: float = 20.0) -> Stream:
    """Read ``url``'s event stream until ``until(events)`` or the server ends it; fails after
    ``timeout`` seconds in all (heartbeats would keep a silent stream open forever)."""
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=httpx.Timeout(timeout)) as client, \
            client.stream("GET", url, headers=headers or {}) as answer:
        stream = Stream(answer.status_code, dict(answer.headers))
        if answer.status_code != 200:
            answer.read()
            stream.events.append({"body": answer.text})
            return stream
        buffer = ""
        for chunk in answer.iter_text():
            if time.monotonic() > deadline:
                raise AssertionError(f"stream not done in {timeout} s: {stream.events[-5:]}")
            buffer += chunk
            while "\n\n" in buffer:
                block, buffer = buffer.split("\n\n", 1)
                stream.events.append(_parse(block))
                if until(stream.events):
                    return stream
        stream.ended = True
        return stream


def _tracked(server: UvicornServer, task_id: str) -> str:
    """Wait (bounded) until the status route knows the task (this producer does not record
    published tasks as queued); return its events URL."""
    with httpx.Client(timeout=10) as client:
        wait_for(lambda: client.get(f"{server.url}/a/tasks/{task_id}").status_code == 200,
                 timeout=20, what=f"task {task_id} tracked")
    return f"{server.url}/a/tasks/{task_id}/events"


def _progress_events(count: int) -> Callable[[list[dict[str, str]]], bool]:
    return lambda events: count <= sum(1 for e in events if e.get("event") == "progress")


@pytest.fixture(scope="module")
def events_server(adoption: AdoptionProducer) -> Iterator[UvicornServer]:
    """The status app over the adoption producer (anonymous), one refusing everyone, and one
    on a dead result backend, on uvicorn (loopback)."""
    down = Celery("down", broker="memory://", backend=f"redis://127.0.0.1:{free_port()}/0",
                  set_as_current=False)
    from fastapi import FastAPI

    from otel_progress.web.fastapi import router

    fastapi_app = FastAPI()
    fastapi_app.include_router(router(adoption.app, allow_anonymous=True), prefix="/progress")
    root = Prefixes({
        "/a": create_app(adoption.app, allow_anonymous=True),
        "/f": fastapi_app,
        "/no": create_app(adoption.app, authorize=lambda request, task_id: False),
        "/down": create_app(down, allow_anonymous=True),
    })
    with UvicornServer(root) as running:
        yield running


def test_events_stream_every_change_and_end_after_the_final_state(
        events_server: UvicornServer, adoption: AdoptionProducer,
        adoption_gates: AdoptionGates) -> None:
    """A held task's stream sends its payload, then each change, and ends after 'succeeded'."""
    gate = adoption_gates.new()
    task_id = adoption.send("steps", 3, gate).id
    url = _tracked(events_server, task_id)
    first = read_events(url, until=lambda evs: any(
        e.get("event") == "progress" and json.loads(e["data"])["state"] == "running"
        for e in evs))
    assert ("text/event-stream; charset=utf-8", "no-store") == (
        first.headers["content-type"], first.headers["cache-control"])
    assert "1000" == first.events[0]["retry"]
    for step in range(3):
        adoption_gates.open(f"{gate}-{step}")
    stream = read_events(url)
    states = [p["state"] for p in stream.progress()]
    ids = [e["id"] for e in stream.events if e.get("event") == "progress"]
    assert (True, "succeeded", 100.0) == (stream.ended, states[-1],
                                          stream.progress()[-1]["percent"])
    assert len(ids) == len(set(ids))  # every event is news


def test_last_event_id_resumes_and_heartbeats_keep_a_quiet_stream_open(
        events_server: UvicornServer, adoption: AdoptionProducer,
        adoption_gates: AdoptionGates, monkeypatch: pytest.MonkeyPatch) -> None:
    """Reconnecting with the id of the payload it has, a client gets no repeat, only
    heartbeats while nothing changes, then the next change."""
    monkeypatch.setattr(web, "EVENTS_HEARTBEAT", 0.3)
    gate = adoption_gates.new()
    task_id = adoption.send("steps", 3, gate).id
    url = _tracked(events_server, task_id)
    adoption_gates.open(f"{gate}-0")
    held = read_events(url, until=lambda evs: any(
        e.get("event") == "progress" and json.loads(e["data"])["description"] == "step 1 of 3"
        for e in evs))
    seen = [e for e in held.events if e.get("event") == "progress"][-1]
    quiet = read_events(url, headers={"Last-Event-ID": seen["id"]},
                        until=lambda evs: sum(1 for e in evs if "comment" in e) >= 2)
    assert (["heartbeat", "heartbeat"], []) == (
        [e["comment"] for e in quiet.events if "comment" in e], quiet.progress())
    adoption_gates.open(f"{gate}-1")
    resumed = read_events(url, headers={"Last-Event-ID": seen["id"]}, until=_progress_events(1))
    assert seen["id"] != resumed.events[-1]["id"]
    assert resumed.progress()[0]["description"] in ("step 2 of 3", "step 3 of 3")
    adoption_gates.open(f"{gate}-2")


def test_a_final_payload_the_client_has_answers_204(
        events_server: UvicornServer, adoption: AdoptionProducer) -> None:
    """After the end, reconnecting with the final event's id gets 204 (EventSource stops)."""
    result = adoption.send("steps", 1)
    assert 1 == result.get(timeout=30)
    url = f"{events_server.url}/a/tasks/{result.id}/events"
    stream = read_events(url)
    final = [e for e in stream.events if e.get("event") == "progress"]
    assert (True, 1) == (stream.ended, len(final))
    again = read_events(url, headers={"Last-Event-ID": final[0]["id"]})
    assert 204 == again.status


def test_the_celery_progress_format_streams_its_envelope(
        events_server: UvicornServer, adoption: AdoptionProducer) -> None:
    """?format=celery-progress on the stream: events carry celery-progress's envelope."""
    result = adoption.send("steps", 1)
    assert 1 == result.get(timeout=30)
    stream = read_events(f"{events_server.url}/a/tasks/{result.id}/events"
                         "?format=celery-progress")
    assert [{"complete": True, "success": True, "state": "SUCCESS"}] == [
        {k: p[k] for k in ("complete", "success", "state")} for p in stream.progress()]


def test_the_fastapi_router_streams_events_too(
        events_server: UvicornServer, adoption: AdoptionProducer) -> None:
    """FastAPI's router serves the same stream: one final event for a finished task, then end."""
    result = adoption.send("steps", 1)
    assert 1 == result.get(timeout=30)
    stream = read_events(f"{events_server.url}/f/progress/tasks/{result.id}/events")
    assert (True, ["succeeded"]) == (stream.ended, [p["state"] for p in stream.progress()])


@pytest.mark.parametrize(("prefix", "task_id", "status"), [
    ("/a", "x" * 256, 400), ("/no", "any-id", 403), ("/a", "never-tracked", 404),
    ("/down", "any-id", 503)])
def test_events_refuse_exactly_as_the_status_route(
        events_server: UvicornServer, adoption: AdoptionProducer, prefix: str, task_id: str,
        status: int) -> None:
    """400, 403, 404 and 503 answer as GET /tasks/<id> does: the same status and JSON body."""
    with httpx.Client(timeout=10) as client:
        plain = client.get(f"{events_server.url}{prefix}/tasks/{task_id}")
    stream = read_events(f"{events_server.url}{prefix}/tasks/{task_id}/events")
    assert (status, status) == (plain.status_code, stream.status)
    assert plain.json() == json.loads(stream.events[0]["body"])


# --- the widget on events, and its fallback to polling -------------------------------------
WIDGET_PAGE = """<!doctype html><html><head><meta charset="utf-8">
<script>BEFORE</script><script src="/a/static/otel-progress.js"></script></head>
<body><div id="target"></div><script>
window.handle = OtelProgress.mount(document.getElementById("target"),
                                   {url: STATUS, pollInterval: 100});
</script></body></html>"""


def _open_widget(tab: Any, server: UvicornServer, task_id: str, before: str = "") -> list[str]:
    """A page mounting the widget on the task's status URL; returns the URLs it requests."""
    requests: list[str] = []
    tab.on("request", lambda r: requests.append(r.url) if "/tasks/" in r.url else None)
    html = WIDGET_PAGE.replace("BEFORE", before).replace(
        "STATUS", json.dumps(f"/a/tasks/{task_id}"))
    path = f"{server.url}/a/page-{uuid.uuid4().hex}"
    tab.route(path, lambda route: route.fulfill(status=200, content_type="text/html",
                                                 body=html))
    tab.goto(path)
    return requests


def test_widget_uses_server_sent_events_when_available(
        tab: Any, events_server: UvicornServer, adoption: AdoptionProducer,
        adoption_gates: AdoptionGates) -> None:
    """The widget listens to /events (no polling request), shows the held step with elapsed
    time and ETA, and reaches the final state from the stream."""
    gate = adoption_gates.new()
    task_id = adoption.send("steps", 2, gate).id
    adoption_gates.open(f"{gate}-0")
    _tracked(events_server, task_id)
    requests = _open_widget(tab, events_server, task_id)
    tab.wait_for_function("document.querySelector('.otp-note') && "
                          "document.querySelector('.otp-note').textContent === 'step 1 of 2'")
    assert "events" == tab.get_attribute(".otp", "data-transport")
    assert "elapsed" in tab.text_content(".otp-eta")
    adoption_gates.open(f"{gate}-1")
    tab.wait_for_selector(".otp[data-polling=false]", state="attached")
    assert "succeeded" == tab.text_content(".otp-badge")
    assert [f"{events_server.url}/a/tasks/{task_id}/events"] == [
        u for u in requests if u.split("?")[0].endswith((task_id, task_id + "/events"))]


def test_widget_falls_back_to_polling_without_event_source(
        tab: Any, events_server: UvicornServer, adoption: AdoptionProducer) -> None:
    """A browser without EventSource polls GET /tasks/<id> and reaches the final state."""
    task_id = adoption.send("steps", 1).id
    _tracked(events_server, task_id)
    requests = _open_widget(tab, events_server, task_id, before="window.EventSource = undefined;")
    tab.wait_for_selector(".otp[data-polling=false]", state="attached")
    assert ("polling", "succeeded") == (tab.get_attribute(".otp", "data-transport"),
                                        tab.text_content(".otp-badge"))
    assert [] == [u for u in requests if u.endswith("/events")]


def test_widget_falls_back_to_polling_when_the_stream_is_refused(
        tab: Any, events_server: UvicornServer, adoption: AdoptionProducer) -> None:
    """An /events route that answers 404 (an adapter without it) makes the widget poll."""
    task_id = adoption.send("steps", 1).id
    _tracked(events_server, task_id)
    tab.route(f"{events_server.url}/a/tasks/{task_id}/events", lambda route: route.fulfill(
        status=404, content_type="application/json", body='{"error": "not found"}'))
    _open_widget(tab, events_server, task_id)
    tab.wait_for_selector(".otp[data-polling=false]", state="attached")
    assert ("polling", "succeeded") == (tab.get_attribute(".otp", "data-transport"),
                                        tab.text_content(".otp-badge"))
