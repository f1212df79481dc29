"""otel_progress.compat.celery_progress against celery-progress itself: the same calls give the
same meta and get_info() shapes, while spans are recorded and writes coalesced; celery-progress's
own JavaScript drives a page against the status app in Debian's chromium."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from importlib import resources
from typing import Any

import pytest
from celery.result import GroupResult
from celery_progress import backend as theirs

from otel_progress import _publish
from otel_progress.compat import celery_progress as ours
from otel_progress.testing import SpanCapture
from otel_progress.web import create_app
from tests.support.adoption import AdoptionGates, AdoptionProducer
from tests.support.web import UvicornServer, wait_for

CP_KEYS = ("pending", "current", "total", "percent", "description")


class FakeTask:
    """A task stand-in that records every update_state (what celery-progress writes)."""

    name = "fake"

    def __init__(self) -> None:
        self.metas: list[dict[str, Any]] = []

    def update_state(self, state: str, meta: dict[str, Any]) -> None:
        self.metas.append(dict(meta, _state=state))


# --- in-process: the recorder's return values, spans, coalescing -----------------------------
CALLS = [(0, 10, ""), (1, 3, "a third"), (2, 3, ""), (1, 800, "decimal rounding"),
         (7, 9, "seven"), (5, 0, "no total"), (3, 7, "three of seven")]


@pytest.mark.parametrize(("current", "total", "description"), CALLS)
def test_set_progress_returns_celery_progress_meta(current: int, total: int,
                                                   description: str) -> None:
    """set_progress returns celery-progress's (state, meta) for the same call, Decimal rounding
    included (1 of 800 reads 0.12, where round(float) reads 0.13)."""
    expected = theirs.ProgressRecorder(FakeTask()).set_progress(current, total, description)
    assert expected == ours.ProgressRecorder(None).set_progress(current, total, description)


def test_percent_reads_below_100_until_the_task_ends() -> None:
    """10 of 10 reads 99.99 while running (celery-progress says 100), 100 once finished."""
    recorder = ours.ProgressRecorder(None)
    _, meta = recorder.set_progress(10, 10)
    payload = _payload_of(recorder)
    recorder.run.finish()
    assert (99.99, 99.99, 100.0) == (meta["percent"], payload["percent"],
                                     _payload_of(recorder)["percent"])


def _payload_of(recorder: ours.ProgressRecorder) -> dict[str, Any]:
    from otel_progress._payload import build

    return dict(build(recorder.run))


def test_payload_has_the_last_calls_current_total_and_description() -> None:
    """While running the payload's current/total/description are the last set_progress call's."""
    recorder = ours.ProgressRecorder(None)
    recorder.set_progress(8, 10, "eight")
    recorder.set_progress(3, 12, "")
    payload = _payload_of(recorder)
    assert (3, 12, "") == (payload["current"], payload["total"], payload["description"])
    assert ("eight", 3, 12) == (recorder.description, recorder.current, recorder.total)


def test_increment_progress_adds_to_current_as_celery_progress() -> None:
    """increment_progress(by) writes what celery-progress writes (its own returns None; the
    drop-in returns set_progress's (state, meta))."""
    task = FakeTask()
    mine, reference = ours.ProgressRecorder(None), theirs.ProgressRecorder(task)
    mine.set_progress(0, 5)
    reference.set_progress(0, 5)
    for by in (1, 2, 1):
        reference.increment_progress(by, "step")
    expected = [("PROGRESS", {k: v for k, v in meta.items() if k != "_state"})
                for meta in task.metas[1:]]
    assert expected == [mine.increment_progress(by, "step") for by in (1, 2, 1)]


def test_new_descriptions_become_span_events_once(spans: SpanCapture) -> None:
    """Each new description is one event on the run span; repeating it adds none."""
    recorder = ours.ProgressRecorder(None)
    for i, text in enumerate(["fetch", "fetch", "fetch", "parse", "", "store"]):
        recorder.set_progress(i + 1, 6, text)
    recorder.run.finish()
    from otel_progress import _spans

    _spans.end_run(recorder.run)
    run = spans.by_name("Task")
    assert ["fetch", "parse", "store"] == [event.name for event in run.events]


def test_bad_values_are_ignored_not_raised() -> None:
    """Non-numbers keep the previous values (logged once): the task never sees an error."""
    recorder = ours.ProgressRecorder(None)
    recorder.set_progress(2, 4)
    state, meta = recorder.set_progress("x", float("nan"))  # type: ignore[arg-type]
    assert ("PROGRESS", 2, 4, 50.0) == (state, meta["current"], meta["total"], meta["percent"])


def test_writes_are_coalesced_through_the_flusher() -> None:
    """1,000 set_progress calls in 0.3 s write a handful of times, not 1,000 (celery-progress
    writes on every call)."""
    _publish.set_min_interval(0.1)
    task = FakeTask()
    recorder = ours.ProgressRecorder(task)
    deadline = time.monotonic() + 0.3
    for i in range(1000):
        recorder.set_progress(i + 1, 1000, f"row {i // 100}")
        if i % 100 == 0:
            time.sleep(0.03)
    time.sleep(max(deadline - time.monotonic(), 0) + 0.25)
    assert 1 <= len(task.metas) <= 10, len(task.metas)
    assert set(CP_KEYS) <= set(task.metas[-1])


# --- a real worker: the same task code on celery-progress and on the drop-in ------------------
def _info_when(result: Any, reader: Any, check: Any, what: str) -> dict[str, Any]:
    return dict(wait_for(lambda: (lambda info: info if check(info) else None)(
        reader(result).get_info()), timeout=20, what=what))


@pytest.mark.slow
def test_get_info_matches_celery_progress_while_running_and_at_the_end(
        adoption: AdoptionProducer, adoption_gates: AdoptionGates) -> None:
    """Held at 3 of 10 and after success, get_info() of the drop-in's task equals
    celery-progress's get_info() of the same loop on celery-progress."""
    gate_a, gate_b = adoption_gates.new(), adoption_gates.new()
    mine = adoption.send("cp_ours", 10, gate_a, 3)
    reference = adoption.send("cp_theirs", 10, gate_b, 3)
    at_three = lambda info: info.get("progress", {}).get("current") == 3  # noqa: E731
    expected = _info_when(reference, theirs.Progress, at_three, "celery-progress at 3")
    actual = _info_when(mine, ours.Progress, at_three, "drop-in at 3")
    assert {"state": "PROGRESS", "complete": False, "success": None,
            "progress": {"pending": False, "current": 3, "total": 10, "percent": 30.0,
                         "description": "item 3"}} == expected
    assert expected == actual
    # celery-progress's own reader on our task: its keys hold its values (a superset payload)
    raw = theirs.Progress(mine).get_info()
    assert expected["progress"] == {k: raw["progress"][k] for k in CP_KEYS}
    adoption_gates.open(gate_a)
    adoption_gates.open(gate_b)
    assert (10, 10) == (mine.get(timeout=30), reference.get(timeout=30))
    assert theirs.Progress(reference).get_info() == ours.Progress(mine).get_info()


@pytest.mark.slow
def test_failure_reads_as_celery_progress_reads_it(adoption: AdoptionProducer) -> None:
    """A task that raised: the drop-in's get_info() equals celery-progress's on the same task."""
    result = adoption.send("cp_fails")
    with pytest.raises(ValueError, match="broken row"):
        result.get(timeout=30, propagate=True)
    expected = theirs.Progress(result).get_info()
    assert {"state": "FAILURE", "complete": True, "success": False,
            "progress": {"pending": False, "current": 100, "total": 100, "percent": 100},
            "result": "broken row"} == expected
    assert expected == ours.Progress(result).get_info()


@pytest.mark.slow
def test_percent_stays_below_100_until_the_task_ends_in_a_worker(
        adoption: AdoptionProducer, adoption_gates: AdoptionGates) -> None:
    """increment_progress() up to the total reads 99.99 while the task still runs."""
    gate = adoption_gates.new()
    result = adoption.send("cp_increment", 4, gate)
    running = _info_when(result, ours.Progress,
                         lambda info: info.get("progress", {}).get("current") == 4, "4 of 4")
    assert ("PROGRESS", 99.99, "one more") == (running["state"], running["progress"]["percent"],
                                               running["progress"]["description"])
    adoption_gates.open(gate)
    assert 4 == result.get(timeout=30)
    assert 100 == ours.Progress(result).get_info()["progress"]["percent"]


@pytest.mark.slow
def test_group_progress_matches_celery_progress_for_a_group_id(
        adoption: AdoptionProducer) -> None:
    """GroupProgress(group_id, app=) answers as celery-progress's GroupProgress(GroupResult)."""
    from celery import group

    job = group(adoption.signature("cp_ours", 3), adoption.signature("cp_ours", 5))
    saved = job.apply_async()
    saved.save()
    assert [3, 5] == saved.get(timeout=30)
    expected = theirs.GroupProgress(GroupResult.restore(saved.id, app=adoption.app)).get_info()
    assert {"complete": True, "success": True,
            "progress": {"total": 200, "current": 200, "percent": 100.0}} == expected
    assert expected == ours.GroupProgress(saved.id, app=adoption.app).get_info()


def test_group_progress_of_an_unknown_id_raises_lookup_error(redis_server: Any) -> None:
    """A group id the backend never saved is a clear LookupError, not an AttributeError."""
    from celery import Celery

    app = Celery("cp_unknown", broker="memory://", backend=redis_server.url,
                 set_as_current=False)
    with pytest.raises(LookupError):
        ours.GroupProgress(f"missing-{uuid.uuid4().hex}", app=app)
    app.close()


# --- celery-progress's own JavaScript in a real browser ----------------------------------------
@pytest.fixture(scope="module")
def cp_server(adoption: AdoptionProducer) -> Iterator[UvicornServer]:
    """The status app over the adoption producer, anonymous, on uvicorn (loopback)."""
    with UvicornServer(create_app(adoption.app, allow_anonymous=True)) as running:
        yield running


CELERY_PROGRESS_PAGE = """<!doctype html><html><head><meta charset="utf-8"></head><body>
<div class='progress-wrapper'>
  <div id='progress-bar' class='progress-bar'
       style="background-color: #68a9ef; width: 0%;">&nbsp;</div>
</div>
<div id="progress-bar-message">Waiting for progress to start...</div>
<div id="celery-result"></div>
<script src="/static/celery_progress/celery_progress.js"></script>
<script>
// celery-progress's README example; only the URL is otel_progress's status route
document.addEventListener("DOMContentLoaded", function () {
  var progressUrl = PROGRESS_URL;
  CeleryProgressBar.initProgressBar(progressUrl, {pollInterval: 100});
});
</script></body></html>"""


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_celery_progress_javascript_works_after_changing_the_import_and_the_url(
        tab: Any, cp_server: UvicornServer, adoption: AdoptionProducer,
        adoption_gates: AdoptionGates) -> None:
    """celery-progress's own celery_progress.js (from PyPI) on a page of its README: held at
    5 of 10 it shows "5 of 10 processed. item 5" at 50 %; at the end "Success!" at 100 %."""
    script = resources.files("celery_progress").joinpath(
        "static/celery_progress/celery_progress.js").read_bytes()
    gate = adoption_gates.new()
    task_id = adoption.send("cp_ours", 10, gate, 5).id
    html = CELERY_PROGRESS_PAGE.replace(
        "PROGRESS_URL", json.dumps(f"/tasks/{task_id}?format=celery-progress"))
    page_url = f"{cp_server.url}/page-{uuid.uuid4().hex}"
    tab.route(page_url, lambda route: route.fulfill(status=200, content_type="text/html",
                                                     body=html))
    tab.route(f"{cp_server.url}/static/celery_progress/celery_progress.js",
              lambda route: route.fulfill(status=200, content_type="text/javascript",
                                          body=script))
    tab.goto(page_url)
    tab.wait_for_function("document.getElementById('progress-bar-message').textContent"
                          ".indexOf('5 of 10 processed.') === 0")
    held = (tab.evaluate("document.getElementById('progress-bar').style.width"),
            tab.text_content("#progress-bar-message"))
    assert ("50%", "5 of 10 processed. item 5") == held
    adoption_gates.open(gate)
    tab.wait_for_function("document.getElementById('progress-bar-message').textContent"
                          ".indexOf('Success!') === 0")
    done = (tab.evaluate("document.getElementById('progress-bar').style.width"),
            tab.evaluate("document.getElementById('progress-bar').style.backgroundColor"),
            tab.text_content("#progress-bar-message"))
    assert ("100%", "rgb(118, 206, 96)", "Success! ") == done
