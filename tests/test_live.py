"""Live placeholders (configure(live=True)): running runs and sections visible before they end.

In-process tests check the placeholders' shape on an in-memory capture; the worker test checks,
over a real OTLP/gRPC receiver on 127.0.0.1, that a running Celery task already shows each open
section in place while it runs, and that the final spans arrive as before.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace

from otel_progress import TaskUpdater, _live, set_min_interval
from otel_progress import _attributes as A
from otel_progress.testing import SpanCapture
from tests.support import run_python
from tests.support.celery_worker import CeleryWorker
from tests.support.otlp_receiver import OtlpGrpcReceiver, SpanRecord
from tests.support.redis_server import RedisServer
from tests.support.web import Gates

LIVE_APP = "tests.apps.live_app"


@pytest.fixture
def live() -> Iterator[None]:
    """Live placeholders on, every 0.2 s, with a fast flusher; off again afterwards."""
    _live.set_live(True, 0.2)
    set_min_interval(0.05)
    yield
    _live.reset()


def _hex(span_id: int) -> str:
    return trace.format_span_id(span_id)


def _wait_placeholders(spans: SpanCapture, check: Callable[[list[Any]], bool]) -> list[Any]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        found = spans.placeholders()
        if check(found):
            return found
        time.sleep(0.02)
    raise AssertionError(f"placeholders: {[(p.name, dict(p.attributes or {})) for p in found]}")


def test_section_start_sends_a_zero_duration_placeholder_in_place(
        live: None, spans: SpanCapture) -> None:
    """At a section's start: new id, the real span's parent and trace, zero duration, marked."""
    updater = TaskUpdater(task_name="job")
    with updater(task_name="download"):
        started = [p for p in spans.placeholders() if p.name == "download"]
    updater.insert_final_update()
    real, run = spans.by_name("download"), spans.by_name("job")
    assert 1 <= len(started)
    placeholder = started[0]
    assert real.parent is not None and placeholder.parent is not None
    assert (
        real.context.trace_id, real.parent.span_id, placeholder.start_time,
        {A.PLACEHOLDER: True, A.REAL_SPAN_ID: _hex(real.context.span_id),
         A.SECTION_NAME: "download", A.SECTION_DEPTH: 1, A.TASK_NAME: "job",
         A.SECTION_STATE: "running"},
    ) == (
        placeholder.context.trace_id, placeholder.parent.span_id, placeholder.end_time,
        dict(placeholder.attributes or {}),
    )
    assert run.context.span_id == placeholder.parent.span_id
    assert real.context.span_id != placeholder.context.span_id
    assert trace.SpanKind.INTERNAL == placeholder.kind


def test_the_run_placeholder_outside_celery_is_a_root_in_the_run_trace(
        live: None, spans: SpanCapture) -> None:
    """Outside Celery the run's placeholder has no parent and the run span's trace id."""
    updater = TaskUpdater(task_name="job", task_uuid="u-1")
    runs = [p for p in spans.placeholders() if p.name == "job"]
    updater.insert_final_update()
    run = spans.by_name("job")
    assert 1 == len(runs)
    assert (None, run.context.trace_id, _hex(run.context.span_id), "u-1") == (
        runs[0].parent, runs[0].context.trace_id, (runs[0].attributes or {})[A.REAL_SPAN_ID],
        (runs[0].attributes or {})[A.TASK_UUID])


def test_progress_placeholders_come_from_the_flusher_with_the_percent(
        live: None, spans: SpanCapture) -> None:
    """While a section runs, the flusher thread sends placeholders carrying its percent."""
    updater = TaskUpdater(task_name="job")
    with updater(task_name="count"):
        updater.progress(current=3, total=4)
        found = _wait_placeholders(spans, lambda ps: any(
            A.PERCENT in (p.attributes or {}) and p.name == "count" for p in ps))
    updater.insert_final_update()
    progress = next(p for p in found if p.name == "count" and A.PERCENT in (p.attributes or {}))
    real = spans.by_name("count")
    assert (75.0, 3, 4, _hex(real.context.span_id)) == tuple(
        (progress.attributes or {})[k]
        for k in (A.PERCENT, A.CURRENT, A.TOTAL, A.REAL_SPAN_ID))


def test_progress_placeholders_come_at_most_once_per_interval(
        live: None, spans: SpanCapture) -> None:
    """A section open ~1 s with a 0.2 s interval gets its start placeholder and at most one
    progress placeholder per interval after it."""
    updater = TaskUpdater(task_name="job")
    with updater(task_name="slow"):
        for _ in range(100):
            updater.advance()  # the hot path sends nothing
            time.sleep(0.01)
    updater.insert_final_update()
    sent = [p for p in spans.placeholders() if p.name == "slow"]
    times = sorted(p.start_time for p in sent)
    gaps = [(b - a) / 1e9 for a, b in itertools.pairwise(times)]
    real = spans.by_name("slow")
    lasted = (real.end_time - real.start_time) / 1e9
    assert 2 <= len(sent) <= 1 + lasted / 0.2 + 1  # the start one, then one per interval at most
    assert all(gap >= 0.2 * 0.9 for gap in gaps), gaps


def test_placeholder_ids_never_collide_with_real_spans(live: None, spans: SpanCapture) -> None:
    """Across many sections, every span id (real and placeholder) is distinct."""
    updater = TaskUpdater(task_name="job")
    for i in range(200):
        with updater(task_name=f"s{i % 5}"):
            pass
    updater.insert_final_update()
    ids = [s.context.span_id for s in spans.finished()]
    assert 201 == len(spans.real())
    assert len(spans.placeholders()) >= 201  # a start each, and progress ones on a slow machine
    assert len(ids) == len(set(ids))


def test_live_off_sends_no_placeholder(spans: SpanCapture) -> None:
    """Without live, a run and its sections send only their real spans."""
    updater = TaskUpdater(task_name="job")
    with updater(task_name="a"):
        pass
    updater.insert_final_update()
    assert ([], ["a", "job"]) == (spans.placeholders(), [s.name for s in spans.finished()])


def test_finished_spans_are_unchanged_by_live(live: None, spans: SpanCapture) -> None:
    """The real spans' tree with live on is the tree without it."""
    def work() -> str:
        updater = TaskUpdater(task_name="job")
        with updater(task_name="a"):
            updater.progress(percent=40)
            with updater(task_name="b"):
                updater.notify("note")
        updater.insert_final_update()
        tree = spans.tree()
        spans.clear()
        return tree

    with_live = work()
    _live.reset()
    assert work() == with_live


# --- configure() ---------------------------------------------------------------------------------
SCRIPT = """
import json, os
from otel_progress import configure, _live
from otel_progress._config import _SWITCH
{call}
batch = _SWITCH.current.batch if _SWITCH.current else None
print("RESULT " + json.dumps({{"live": _live.enabled, "interval": _live.interval,
      "delay": getattr(getattr(batch, "_batch_processor", batch), "_schedule_delay_millis", None)
                 if batch else None}}))
"""


def _configured(tmp_path: Path, call: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    result = run_python(SCRIPT.format(call=call), tmp_path, env=env)
    assert 0 == result.returncode, result.describe()
    return result.result


def _delay_of(result: dict[str, Any]) -> float:
    delay = result["delay"]
    assert delay is not None
    return float(delay) / (1000 if delay >= 100 else 1)


def test_configure_live_sets_the_interval_and_a_one_second_batch_delay(tmp_path: Path) -> None:
    """configure(live=True, live_interval=3): placeholders on, 3 s, the batch exports every 1 s."""
    result = _configured(tmp_path, 'configure(live=True, live_interval=3, '
                                   'endpoint="http://127.0.0.1:1", metrics=False)')
    assert (True, 3.0, 1.0) == (result["live"], result["interval"], _delay_of(result))


def test_live_environment_variables_configure_it(tmp_path: Path) -> None:
    """OTEL_PROGRESS_LIVE=true and OTEL_PROGRESS_LIVE_INTERVAL=2.5 do what the arguments do."""
    result = _configured(tmp_path, 'configure(endpoint="http://127.0.0.1:1", metrics=False)',
                         env={"OTEL_PROGRESS_LIVE": "true", "OTEL_PROGRESS_LIVE_INTERVAL": "2.5"})
    assert (True, 2.5, 1.0) == (result["live"], result["interval"], _delay_of(result))


def test_live_defaults_to_off_with_a_ten_second_interval(tmp_path: Path) -> None:
    """Without live, no placeholders, interval 10 s, and the SDK's own batch delay (5 s)."""
    result = _configured(tmp_path, 'configure(endpoint="http://127.0.0.1:1", metrics=False)')
    assert (False, 10.0, 5.0) == (result["live"], result["interval"], _delay_of(result))


def test_schedule_delay_variable_wins_over_the_live_default(tmp_path: Path) -> None:
    """OTEL_BSP_SCHEDULE_DELAY is the SDK's: live does not override it."""
    result = _configured(tmp_path, 'configure(live=True, endpoint="http://127.0.0.1:1", '
                                   'metrics=False)', env={"OTEL_BSP_SCHEDULE_DELAY": "250"})
    assert 0.25 == _delay_of(result)


@pytest.mark.parametrize(("kwargs", "error"), [
    ({"live": "yes"}, TypeError), ({"live_interval": "10"}, TypeError),
    ({"live_interval": True}, TypeError), ({"live_interval": 0}, ValueError),
    ({"live_interval": float("nan")}, ValueError), ({"live_interval": -1.0}, ValueError),
])
def test_bad_live_arguments_raise_naming_them(kwargs: dict[str, Any],
                                              error: type[Exception]) -> None:
    """A wrong type or a non-positive interval raises at configure(), naming the argument."""
    from otel_progress import configure

    with pytest.raises(error, match=next(iter(kwargs))):
        configure(**kwargs)


@pytest.mark.parametrize(("variable", "value"), [
    ("OTEL_PROGRESS_LIVE", "maybe"), ("OTEL_PROGRESS_LIVE_INTERVAL", "soon"),
    ("OTEL_PROGRESS_LIVE_INTERVAL", "0"),
])
def test_bad_live_variables_raise_naming_them(variable: str, value: str,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A bad OTEL_PROGRESS_LIVE[_INTERVAL] raises ValueError naming the variable."""
    from otel_progress import configure

    monkeypatch.setenv(variable, value)
    with pytest.raises(ValueError, match=variable):
        configure(traces_exporter="none", metrics=False)


# --- a real worker, a real OTLP receiver ---------------------------------------------------------
@pytest.fixture
def live_worker(celery_worker_factory: Callable[..., CeleryWorker],
                otlp_receiver: OtlpGrpcReceiver) -> CeleryWorker:
    """A prefork worker of tests.apps.live_app with live placeholders every 0.3 s."""
    return celery_worker_factory(LIVE_APP, concurrency=1, queues=("live",), env={
        "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_receiver.endpoint,
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
        "OTEL_PROGRESS_LIVE": "true",
        "OTEL_PROGRESS_LIVE_INTERVAL": "0.3",
    })


@pytest.fixture
def live_app(redis_server: RedisServer) -> Any:
    """tests.apps.live_app as the producer sees it, on this session's Redis."""
    from tests.apps import live_app

    live_app.app.conf.update(broker_url=redis_server.url, result_backend=redis_server.url)
    return live_app


def _placeholders(spans: list[SpanRecord]) -> list[SpanRecord]:
    return [s for s in spans if s.attributes.get(A.PLACEHOLDER) is True]


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_running_task_shows_each_open_section_in_the_receiver(
        live_app: Any, live_worker: CeleryWorker, otlp_receiver: OtlpGrpcReceiver,
        gates: Gates) -> None:
    """While the task waits inside outer > inner, the receiver holds their placeholders in place;
    after it ends the real spans arrive as before and no id repeats."""
    gate = gates.new()
    result = live_app.nested.delay(gate)

    def open_sections_shown(spans: list[SpanRecord]) -> bool:
        names = {s.name for s in _placeholders(spans)}
        progress = [s for s in _placeholders(spans)
                    if s.name == "inner" and s.attributes.get(A.PERCENT) == 25.0]
        return {"run/live_app.nested", "outer", "inner"} <= names and bool(progress)

    running = otlp_receiver.wait_for_spans(open_sections_shown, timeout=20)
    assert "STARTED" == result.state or "PROGRESS" == result.state
    assert [] == [s.name for s in running if not s.attributes.get(A.PLACEHOLDER)
                  and s.name in ("outer", "inner", "run/live_app.nested")]
    gates.open(gate)
    assert "done" == result.get(timeout=30)
    spans = otlp_receiver.wait_for_spans(
        lambda ss: {"run/live_app.nested", "outer", "inner", "after"} <= {
            s.name for s in ss if not s.attributes.get(A.PLACEHOLDER)}, timeout=20)
    real = {s.name: s for s in spans if not s.attributes.get(A.PLACEHOLDER)
            and s.name in ("run/live_app.nested", "outer", "inner", "after")}
    for placeholder in _placeholders(spans):
        stands_for = real[placeholder.name]
        assert (stands_for.trace_id, stands_for.parent_span_id, stands_for.span_id,
                placeholder.start_time_unix_nano) == (
            placeholder.trace_id, placeholder.parent_span_id,
            placeholder.attributes[A.REAL_SPAN_ID], placeholder.end_time_unix_nano)
    ids = [s.span_id for s in spans]
    assert len(ids) == len(set(ids))
    assert real["outer"].span_id == real["inner"].parent_span_id
    assert real["run/live_app.nested"].span_id == real["outer"].parent_span_id
    assert "succeeded" == real["inner"].attributes[A.SECTION_STATE]
