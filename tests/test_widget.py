"""The widget (otel-progress.js) and celery-progress's own script in Debian's chromium.

Playwright drives ``/usr/bin/chromium`` (never a downloaded browser) against the status app on
uvicorn, a real Redis and a real worker. Pages other than ``/tasks/<id>/view`` are served by
Playwright's routing at a path of the app's own origin, so their requests are same-origin. Only
the stale and backwards tests feed the widget made-up payloads; everything else is a real task.
"""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import httpx
import pytest
from celery import Celery

from otel_progress.web import create_app
from tests.support.celery_worker import CeleryWorker
from tests.support.web import Gates, Prefixes, Producer, UvicornServer, free_port, repo_file

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120), pytest.mark.usefixtures("tracking")]

JAEGER = "http://localhost:16686/trace/{trace_id}"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
INSTALL = "apt-get update && apt-get install -y chromium"
SCREENSHOT_ENV = "OTEL_PROGRESS_WRITE_SCREENSHOT"
"""``1`` makes the screenshot test write docs/widget.png too."""
WAIT_MS = 20_000
"""Upper bound of every wait in the browser."""


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's chromium under Playwright; fails (never skips) when it is not installed."""
    executable = shutil.which("chromium")
    if executable is None:
        pytest.fail(f"chromium missing: {INSTALL}", pytrace=False)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="module")
def server(producer: Producer, web_worker: CeleryWorker) -> Iterator[UvicornServer]:
    """The status app (anonymous, Jaeger link) and one on a dead backend, on uvicorn."""
    down = Celery("down", broker="memory://", backend=f"redis://127.0.0.1:{free_port()}/0",
                  set_as_current=False)
    root = Prefixes({
        "/w": create_app(producer.app, allow_anonymous=True, trace_url=JAEGER),
        "/down": create_app(down, allow_anonymous=True),
    })
    with UvicornServer(root) as running:
        yield running


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh page; uncaught page errors fail the test."""
    context = browser.new_context(viewport={"width": 900, "height": 700})
    context.set_default_timeout(WAIT_MS)
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    yield tab
    context.close()
    assert [] == errors


CALLBACKS_JS = """
window.calls = {progress: [], success: [], error: [], retry: [], ignored: [], result: []};
function record(kind) {
  return function (bar, message, value, extra) {
    window.calls[kind].push({bar: bar && bar.getAttribute && bar.getAttribute("aria-label"),
                             message: message && message.className, value: value === undefined ?
                             "undefined" : value, extra: extra === undefined ? "undefined" :
                             (extra && extra.status !== undefined ? extra.status : extra)});
  };
}
"""


def widget_page(page: Any, server: UvicornServer, status_url: str, **options: Any) -> None:
    """Open a page (no CSP) that mounts the widget on ``status_url`` with ``options``."""
    path = f"/w/test-page-{uuid.uuid4().hex}"
    settings = {"url": status_url, "pollInterval": 100, "traceUrl": JAEGER, **options}
    html = f"""<!doctype html><html><head><meta charset="utf-8">
<script src="/w/static/otel-progress.js"></script></head>
<body><div id="target"></div><script>{CALLBACKS_JS}
var options = {json.dumps(settings)};
["progress", "success", "error", "retry", "ignored"].forEach(function (kind) {{
  options["on" + kind[0].toUpperCase() + kind.slice(1)] = record(kind);
}});
options.onResult = function (element, result) {{ window.calls.result.push(result); }};
window.handle = OtelProgress.mount(document.getElementById("target"), options);
</script></body></html>"""
    page.route(server.url + path, lambda route: route.fulfill(
        status=200, content_type="text/html", body=html))
    page.goto(server.url + path)


def wait_final(page: Any) -> None:
    """Until the widget stopped polling (a final state)."""
    page.wait_for_selector(".otp[data-polling=false]", state="attached")


def _texts(page: Any, selector: str) -> list[str]:
    return [str(t) for t in page.locator(selector).all_text_contents()]


RECORD_OVERALL_JS = """
window.__overall = [];
new MutationObserver(function (mutations) {
  mutations.forEach(function (m) {
    if (m.target.getAttribute("aria-label") === "overall") {
      window.__overall.push(Number(m.target.getAttribute("aria-valuenow")));
    }
  });
}).observe(document, {subtree: true, attributes: true, attributeFilter: ["aria-valuenow"]});
"""


def _wait_above(page: Any, selector: str, floor: float) -> float:
    """The ``aria-valuenow`` of ``selector`` once it exceeds ``floor`` (bounded)."""
    for _ in range(WAIT_MS // 50):
        value = page.get_attribute(selector, "aria-valuenow")
        if value is not None and float(value) > floor:
            return float(value)
        page.wait_for_timeout(50)
    raise AssertionError(f"{selector} stayed at or below {floor}")


def test_view_page_bar_moves_and_sections_appear_in_order(
        page: Any, server: UvicornServer, producer: Producer, gates: Gates) -> None:
    """/tasks/<id>/view: the overall bar rises step by step to 100 %, sections in order."""
    gate = gates.new()
    task_id = producer.steps.delay(3, gate).id
    page.add_init_script(RECORD_OVERALL_JS)
    page.goto(f"{server.url}/w/tasks/{task_id}/view")
    bar = "[data-otel-progress] [role=progressbar]"
    seen: list[float] = []
    for step in range(3):  # the page's CSP forbids eval, so wait_for_function cannot run here
        seen.append(_wait_above(page, bar, seen[-1] if seen else -1.0))
        gates.open(f"{gate}-{step}")
    wait_final(page)
    values = page.evaluate("window.__overall")
    assert values == sorted(values), values  # never backwards
    assert 100 == values[-1]
    assert len(set(values)) >= 3, values
    assert ("overall", "0", "100", "100%") == (
        page.get_attribute(bar, "aria-label"), page.get_attribute(bar, "aria-valuemin"),
        page.get_attribute(bar, "aria-valuemax"), page.text_content(".otp-percent"))
    assert ["prepare", "work"] == _texts(page, ".otp-sections > li .otp-section-name")
    assert ["succeeded", "succeeded"] == _texts(page, ".otp-sections > li .otp-section-state")
    assert "succeeded" == page.text_content(".otp-badge")


def test_failed_section_and_trace_link(page: Any, server: UvicornServer,
                                       producer: Producer) -> None:
    """The seed: subtask 2 shows failed with ZeroDivisionError; the link holds the trace id."""
    task_id = producer.seed.delay(0.0).id
    page.goto(f"{server.url}/w/tasks/{task_id}/view")
    wait_final(page)
    failed = page.locator(".otp-section[data-state=failed]")
    assert ["My subtask 2"] == [t.strip() for t in failed.locator(".otp-section-name")
                                .all_text_contents()]
    assert ["failed"] == failed.locator(".otp-section-state").all_text_contents()
    assert ["ZeroDivisionError"] == failed.locator(".otp-section-status .otp-error") \
        .all_text_contents()
    trace_id = httpx.get(f"{server.url}/w/tasks/{task_id}").json()["trace_id"]
    assert 32 == len(trace_id)
    assert (JAEGER.format(trace_id=trace_id), "View trace") == (
        page.get_attribute("a.otp-trace", "href"), page.text_content("a.otp-trace"))
    assert "failed" == page.text_content(".otp-badge")  # a job failed: the run failed


def test_hostile_text_is_shown_as_text_and_never_runs(
        page: Any, server: UvicornServer, producer: Producer, gates: Gates) -> None:
    """<script> and <img onerror> in a notification, a section name and an error: text only."""
    hostile = producer.module.HOSTILE
    gate = gates.new()
    task_id = producer.hostile.delay(gate).id
    widget_page(page, server, f"/w/tasks/{task_id}")
    page.wait_for_function("document.querySelector('.otp-note').textContent.length > 0")
    assert hostile == page.text_content(".otp-note")
    assert hostile == page.text_content(".otp-section-name")
    gates.open(gate)
    wait_final(page)
    assert any(hostile in t for t in _texts(page, ".otp-error-message"))
    assert (True, 0, 0) == (
        page.evaluate("window.__pwned === undefined"),
        page.locator("#target img").count(), page.locator("#target script").count())


def test_poll_stops_at_the_final_state(page: Any, server: UvicornServer,
                                       producer: Producer) -> None:
    """After a final state no request follows, and the handle says it stopped."""
    task_id = producer.quick.delay(3, 0.05).id
    status_path = f"/w/tasks/{task_id}"
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url) if r.url.endswith(
        (status_path, status_path + "/events")) else None)  # polling, or server-sent events
    widget_page(page, server, status_path)
    wait_final(page)
    made = len(requests)
    page.wait_for_timeout(1000)  # ten poll intervals: a poll that did not stop would show
    assert (made, False) == (len(requests), page.evaluate("window.handle.polling"))
    assert made >= 1


def test_callbacks_get_celery_progress_arguments(page: Any, server: UvicornServer,
                                                 producer: Producer) -> None:
    """onProgress(bar, message, progress) each poll; onSuccess(bar, message, result) once."""
    task_id = producer.quick.delay(3, 0.05).id
    widget_page(page, server, f"/w/tasks/{task_id}")
    wait_final(page)
    calls = page.evaluate("window.calls")
    progress = calls["progress"][-1]
    assert ("overall", "otp-note", {"pending", "current", "total", "percent", "description"}) == (
        progress["bar"], progress["message"], set(progress["value"]))
    assert 100 == progress["value"]["percent"]
    assert [{"bar": "overall", "message": "otp-note", "value": "undefined",
             "extra": "undefined"}] == calls["success"]
    assert ([], []) == (calls["error"], calls["result"])


def test_recovers_after_network_errors_and_503(page: Any, server: UvicornServer,
                                               producer: Producer) -> None:
    """Two refused connections and a 503 later, the widget still reaches the final state."""
    task_id = producer.quick.delay(2, 0.01).id
    status_url = f"{server.url}/w/tasks/{task_id}"
    faults = ["abort", "abort", "503"]

    def handle(route: Any) -> None:
        fault = faults.pop(0) if faults else None
        if fault == "abort":
            route.abort("connectionrefused")
        elif fault == "503":
            route.fulfill(status=503, headers={"Retry-After": "0"}, content_type="application/json",
                          body='{"error": "result backend unavailable"}')
        else:
            route.continue_()

    page.route(status_url, handle)
    widget_page(page, server, f"/w/tasks/{task_id}", events=False)  # the polling path
    wait_final(page)
    errors = page.evaluate("window.calls.error")
    assert [("Network Error", "undefined"), ("Network Error", "undefined"),
            ("HTTP Code 503", 503)] == [(e["value"], e["extra"]) for e in errors]
    assert ("succeeded", True) == (page.text_content(".otp-badge"),
                                   page.is_hidden(".otp-status"))


def test_keeps_polling_while_the_backend_is_down(page: Any, server: UvicornServer) -> None:
    """A real 503 (dead result backend): the widget says so and polls again."""
    widget_page(page, server, f"/down/tasks/{uuid.uuid4()}")
    page.wait_for_function("window.handle.polls >= 2")
    assert (True, True) == (page.evaluate("window.handle.polling"),
                            "not answering" in page.text_content(".otp-status"))


def _fake(state: str, percent: float, section: float, **extra: Any) -> dict[str, Any]:
    return {"schema": 1, "state": state, "percent": percent, "attempt": 1, "task_name": "fake",
            "description": f"at {percent}", "updated": "2026-01-01T00:00:00.000000Z",
            "trace_id": None, "sections": [{"name": "only", "state": "running", "percent": section,
                                            "children": []}], **extra}


def test_stale_is_visible_and_bars_never_move_backwards(page: Any,
                                                        server: UvicornServer) -> None:
    """A lower percent after a higher one keeps the higher bar; ``stale`` shows a notice."""
    payloads = [_fake("running", 30, 60, stale=False), _fake("running", 10, 20, stale=True)]
    path = f"/w/tasks/fake-{uuid.uuid4().hex}"
    served: list[int] = []

    def handle(route: Any) -> None:
        served.append(1)
        body = payloads[min(len(served), len(payloads)) - 1]
        route.fulfill(status=200, content_type="application/json", body=json.dumps(body))

    page.route(server.url + path, handle)
    widget_page(page, server, path)
    page.wait_for_selector(".otp-stale:not([hidden])")
    assert ("30", "60", "30%") == (
        page.get_attribute(".otp-overall [role=progressbar]", "aria-valuenow"),
        page.get_attribute(".otp-section [role=progressbar]", "aria-valuenow"),
        page.text_content(".otp-percent"))
    assert "No progress reported since" in page.text_content(".otp-stale")
    assert "true" == page.get_attribute(".otp", "data-stale")
    page.evaluate("window.handle.stop()")
    assert False is page.evaluate("window.handle.polling")


def test_celery_progress_script_drives_the_envelope(page: Any, server: UvicornServer,
                                                    producer: Producer) -> None:
    """celery-progress's own JS on ?format=celery-progress: its bar hits 100 %, onSuccess runs."""
    script = resources.files("celery_progress").joinpath(
        "static/celery_progress/celery_progress.js").read_text("utf-8")
    task_id = producer.quick.delay(4, 0.1).id
    status = f"/w/tasks/{task_id}?format=celery-progress"
    path = f"/w/celery-progress-page-{uuid.uuid4().hex}"
    html = f"""<!doctype html><html><head><meta charset="utf-8"></head><body>
<div class="progress-wrapper"><div id="progress-bar" style="width: 0%">&nbsp;</div></div>
<div id="progress-bar-message">Waiting for progress to start...</div>
<script>{script}</script>
<script>
window.widths = [];
CeleryProgressBar.initProgressBar({json.dumps(status)}, {{
  pollInterval: 100,
  onProgress: function (bar, message, progress) {{
    this.onProgressDefault(bar, message, progress); window.widths.push(bar.style.width);
  }},
  onSuccess: function (bar, message, result) {{
    this.onSuccessDefault(bar, message, result); window.cpSuccess = true;
  }}
}});
</script></body></html>"""
    page.route(server.url + path, lambda route: route.fulfill(
        status=200, content_type="text/html", body=html))
    page.goto(server.url + path)
    page.wait_for_function("window.cpSuccess === true")
    assert ("100%", "Success! ") == (page.evaluate("document.getElementById('progress-bar')"
                                                   ".style.width"),
                                     page.text_content("#progress-bar-message"))
    assert "100%" == page.evaluate("window.widths[window.widths.length - 1]")


def test_screenshot_of_a_finished_seed_run(page: Any, server: UvicornServer,
                                           producer: Producer, tmp_path: Path) -> None:
    """/tasks/<id>/view of a finished seed run renders to a PNG (docs/widget.png on request)."""
    import os

    task_id = producer.seed.delay(0.02).id
    page.goto(f"{server.url}/w/tasks/{task_id}/view")
    wait_final(page)
    page.set_viewport_size({"width": 820, "height": 480})
    shot = tmp_path / "widget.png"
    page.locator("main").screenshot(path=str(shot))
    assert b"\x89PNG" == shot.read_bytes()[:4]
    if os.environ.get(SCREENSHOT_ENV) == "1":
        shutil.copyfile(shot, repo_file("docs", "widget.png"))
