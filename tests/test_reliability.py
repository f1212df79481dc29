"""Reliability and security (issue 11): redaction, post-mortem span closure, limits, workers.

Real parts: a Redis, ``tests.apps.reliability_app`` workers on their own queue, the loopback
OTLP/gRPC receiver and a uvicorn server. ``docs/reliability.md`` quotes these tests by name.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import httpx
import pytest
from billiard.exceptions import WorkerLostError
from celery import Celery

from otel_progress import Observer, TaskUpdater, configure, reset
from otel_progress import _attributes as A
from otel_progress._backend import KEY_PREFIX, claim_post_mortem
from otel_progress._payload import PRIVATE_KEY, dumps
from otel_progress._safety import REDACTED, default_redact, logger
from otel_progress.celery import get_progress
from otel_progress.history import store_for
from otel_progress.testing import SpanCapture
from otel_progress.web import create_app
from tests.support import run_python
from tests.support.celery_worker import CeleryWorker
from tests.support.otlp_receiver import OtlpGrpcReceiver, SpanRecord
from tests.support.redis_server import RedisServer
from tests.support.web import UvicornServer

APP = "tests.apps.reliability_app"
QUEUE = "reliability"
WorkerFactory = Callable[..., CeleryWorker]
_T = TypeVar("_T")

pytestmark = pytest.mark.timeout(120)


def _poll(read: Callable[[], _T], done: Callable[[_T], bool], timeout: float, what: str) -> _T:
    """Read until ``done(value)``; fail naming ``what`` after ``timeout`` (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        value = read()
        if done(value):
            return value
        if time.monotonic() >= deadline:
            pytest.fail(f"{what}: not within {timeout} s; last read: {value!r}")
        time.sleep(0.05)


@contextlib.contextmanager
def _current(celery_app: Celery) -> Iterator[None]:
    """``celery_app`` is Celery's current app inside the block (the publish hook writes there)."""
    from celery import current_app

    previous = current_app._get_current_object()
    celery_app.set_current()
    try:
        yield
    finally:
        previous.set_current()


@pytest.fixture
def app(redis_server: RedisServer) -> Iterator[Any]:
    """The reliability app as this process (the producer) sees it, on the session's Redis."""
    from tests.apps import reliability_app

    reliability_app.app.conf.update(broker_url=redis_server.url, result_backend=redis_server.url)
    with _current(reliability_app.app):
        yield reliability_app


def _otel_env(receiver: OtlpGrpcReceiver, **extra: str) -> dict[str, str]:
    """Worker env: spans to ``receiver``, exported within 0.2 s."""
    return {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_EXPORTER_OTLP_INSECURE": "true", "OTEL_BSP_SCHEDULE_DELAY": "200",
            "OTEL_METRICS_EXPORTER": "none", **extra}


def _span_text(spans: list[SpanRecord]) -> str:
    """Everything a collector received, as one text: names, attributes, events, statuses."""
    return "\n".join(repr(span) for span in spans)


# --- redaction ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_planted_secret_never_reaches_the_receiver_the_backend_or_the_http_answer(
        app: Any, celery_worker_factory: WorkerFactory, otlp_receiver: OtlpGrpcReceiver,
        redis_server: RedisServer) -> None:
    """Secret in a message, section name, attributes, exception, traceback, log, meta: redacted
    in spans, our keys, every HTTP answer (payload, log, history list) and the history rows."""
    secret = app.SECRET
    worker = celery_worker_factory(APP, concurrency=1, queues=(QUEUE,),
                                   env=_otel_env(otlp_receiver))
    ok = app.secrets.delay(secret)
    bad = app.raises_secret.delay(secret)
    assert "done" == ok.get(timeout=30)
    with pytest.raises(ValueError):
        bad.get(timeout=30, propagate=True)
    worker.stop()
    names = {"run/reliability.secrets", "run/reliability.raises_secret", "fail", "work"}
    spans = otlp_receiver.wait_for_spans(lambda s: names <= {x.name for x in s}, timeout=15)
    client = redis_server.client()
    try:
        stored = [client.get(KEY_PREFIX + task_id) or b"" for task_id in (ok.id, bad.id)]
    finally:
        client.close()
    with UvicornServer(create_app(app.app, allow_anonymous=True)) as server:
        answers = [httpx.get(f"{server.url}/tasks/{task_id}{query}", timeout=10).text
                   for task_id in (ok.id, bad.id) for query in ("", "?format=celery-progress")]
        answers += [httpx.get(f"{server.url}/tasks/{task_id}/log", timeout=10).text
                    for task_id in (ok.id, bad.id)]
        answers.append(httpx.get(f"{server.url}/tasks", timeout=10).text)
    store = store_for(app.app)
    assert store is not None
    rows = [store.get(task_id) for task_id in (ok.id, bad.id)]
    places = {
        "spans": _span_text(spans),
        "own keys": b"\n".join(stored).decode("utf-8"),
        "http answers": "\n".join(answers),
        "get_progress": json.dumps([get_progress(i, app=app.app) for i in (ok.id, bad.id)]),
        "history rows": json.dumps(rows),
    }
    assert [] == [where for where, text in places.items() if secret in text]
    assert {where: True for where in places} == {w: REDACTED in t for w, t in places.items()}
    exception = next(e for s in spans if s.name == "fail" for e in s.events
                     if e.name == "exception")
    assert ("RuntimeError", True) == (exception.attributes["exception.type"],
                                      REDACTED in exception.attributes["exception.stacktrace"])


def test_configure_redact_callable_replaces_the_default_in_spans_payload_and_log(
        spans: SpanCapture) -> None:
    """configure(redact=callable): it alone decides, for every place text leaves the task."""
    configure(redact=lambda text: text.replace("PLAIN-SECRET", "***"))
    try:
        updater = TaskUpdater(task_name="redacting")
        with updater(task_name="open PLAIN-SECRET"):
            updater.notify("saw PLAIN-SECRET", detail="PLAIN-SECRET here", password="p4ss")
            updater.notify("token=abc")
        with updater(task_name="boom"):
            raise KeyError("PLAIN-SECRET")
        observer = Observer(None)
        observer.update("observer PLAIN-SECRET", meta={"note": "PLAIN-SECRET"})
        payload = dumps(updater.to_dict())
        updater.insert_final_update()
        exported = "\n".join(s.to_json() for s in spans.finished())
        assert (False, False, True, True) == (
            "PLAIN-SECRET" in exported, "PLAIN-SECRET" in payload, "***" in exported,
            "***" in payload)
        events = spans.by_name("open ***").events
        assert (REDACTED, "token=abc") == (events[0].attributes["password"], events[1].name)
    finally:
        reset()


def test_a_redact_callable_that_raises_withholds_the_whole_text(spans: SpanCapture) -> None:
    """A broken redactor must not leak: the text becomes [REDACTED], the task goes on."""

    def broken(text: str) -> str:
        raise RuntimeError("bug in the user's redactor")

    configure(redact=broken)
    try:
        updater = TaskUpdater(task_name="broken")
        with updater(task_name="section"):
            updater.notify("password-free but still withheld")
        updater.insert_final_update()
        assert [REDACTED, REDACTED] == [spans.finished()[0].name,
                                        spans.finished()[0].events[0].name]
    finally:
        reset()


def test_configure_redact_refuses_what_is_not_a_callable_or_bool() -> None:
    """configure(redact="x") is a mistake at construction: TypeError naming the argument."""
    with pytest.raises(TypeError, match="redact"):
        configure(redact="password")  # type: ignore[arg-type]


@pytest.mark.parametrize(("text", "expected"), [
    ("password=hunter2 next", f"password={REDACTED} next"),
    ('{"api_key": "abc123"}', f'{{"api_key": "{REDACTED}"}}'),
    ("Authorization: Bearer abc.def.ghi", f"Authorization: {REDACTED}"),
    ("redis://:s3cret@127.0.0.1:6379/0", f"redis://:{REDACTED}@127.0.0.1:6379/0"),
    ("postgresql://bob:pw@db/x", f"postgresql://bob:{REDACTED}@db/x"),
    ("AWS_SECRET_ACCESS_KEY=wJalrXUt", f"AWS_SECRET_ACCESS_KEY={REDACTED}"),
    ("jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sflKxwRJSMeK", f"jwt {REDACTED}"),
    ("id AKIAIOSFODNN7EXAMPLE", f"id {REDACTED}"),
    ("author: Tolkien, 3 tokens", "author: Tolkien, 3 tokens"),
    ("fetched 3 of 4 files", "fetched 3 of 4 files"),
])
def test_the_default_pattern_set(text: str, expected: str) -> None:
    """Secrets in key=value text, headers, URLs and token shapes go; ordinary text stays."""
    assert expected == default_redact(text)


def test_the_log_is_redacted_message_and_traceback(caplog: pytest.LogCaptureFixture) -> None:
    """otel_progress's own log records: arguments and tracebacks are redacted before output."""
    with caplog.at_level(logging.WARNING, logger="otel_progress"):
        try:
            raise ConnectionError("redis://:pw-in-traceback@db:6379")
        except ConnectionError as exc:
            logger.warning("cannot publish (%s)", "redis://:pw-in-args@db", exc_info=exc)
    text = caplog.text
    assert (False, False, True) == ("pw-in-args" in text, "pw-in-traceback" in text,
                                    REDACTED in text)


# --- post-mortem span closure ------------------------------------------------------------------
def _pid_of(payload: Any) -> int:
    return int(str(payload["description"]).removeprefix("pid="))


@pytest.mark.slow
@pytest.mark.parametrize(("kill", "error_type"), [
    ("sigkill", "WorkerLostError"), ("time_limit", "TimeLimitExceeded"),
    ("revoke", "Terminated")])
def test_a_child_killed_mid_section_has_its_open_spans_ended_error_with_their_ids(
        kill: str, error_type: str, app: Any, celery_worker_factory: WorkerFactory,
        otlp_receiver: OtlpGrpcReceiver, redis_server: RedisServer) -> None:
    """SIGKILL / hard time limit / revoke(terminate=True) mid-section: each open span
    arrives once, ERROR with error.type, ended at the death, under its original ids."""
    worker = celery_worker_factory(APP, concurrency=1, queues=(QUEUE,),
                                   env=_otel_env(otlp_receiver))
    result = app.doomed.apply_async((60,), **({"time_limit": 3} if kill == "time_limit" else {}))
    running = _poll(lambda: get_progress(result.id, app=app.app),
                    lambda p: bool(p and p["description"].startswith("pid=")), 20,
                    "the inner section running")
    client = redis_server.client()
    try:  # the private part is in our key (never in what a reader gets)
        stored = _poll(lambda: json.loads(client.get(KEY_PREFIX + result.id) or b"{}"),
                       lambda p: len(p.get(PRIVATE_KEY, {}).get("open_spans", [])) == 3, 5,
                       "the run span and both sections in the private part")
    finally:
        client.close()
    assert PRIVATE_KEY not in running
    if kill == "sigkill":
        os.kill(_pid_of(running), signal.SIGKILL)
    elif kill == "revoke":
        result.revoke(terminate=True)  # SIGTERM: the child is dying, 0.1 s to SIGKILL
    died = time.time()
    wanted = {"doomed", "inner"}  # the run span too after a SIGKILL (Celery's, ended by none)
    spans = otlp_receiver.wait_for_spans(
        lambda s: wanted <= {x.name for x in s if x.attributes.get(A.POST_MORTEM)}, timeout=20)
    time.sleep(1.5)  # a second export would have arrived by now
    spans = [s for s in otlp_receiver.spans() if s.name in wanted]
    by_name = {s.name: s for s in spans}
    ids = {item["name"]: item for item in stored[PRIVATE_KEY]["open_spans"]}
    assert 2 == len(spans), [s.name for s in spans]
    assert {name: ("ERROR", error_type, ids[name]["span_id"], ids[name]["parent_id"],
                   running["trace_id"]) for name in wanted} == {
        s.name: (s.status_code, s.attributes[A.ERROR_TYPE], s.span_id, s.parent_span_id,
                 s.trace_id) for s in spans}
    assert by_name["inner"].parent_span_id == by_name["doomed"].span_id
    # ended when the main process learned of the death: billiard notices within seconds
    assert 0.0 <= by_name["inner"].end_time_unix_nano / 1e9 - died + 0.5 < 10.5
    final = get_progress(result.id, app=app.app)
    assert final is not None
    assert (True, PRIVATE_KEY in final) == (final["finished"], False)
    # the task history's row ends too (issue 12: "as far as the worker or the reader can tell")
    store = store_for(app.app)
    assert store is not None
    row = _poll(lambda: store.get(result.id), lambda r: bool(r and r["end"]), 10,
                "the history row ended")
    expected = {"sigkill": ("failed", "WorkerLostError"),
                "time_limit": ("failed", "TimeLimitExceeded"),
                "revoke": ("revoked", "TaskRevokedError")}[kill]
    assert expected == (row["state"], row["exc_type"])
    worker.stop()


def test_the_reader_ends_dead_spans_once_when_celery_is_final_and_the_payload_is_not(
        redis_server: RedisServer, spans: SpanCapture) -> None:
    """get_progress on a task Celery failed with WorkerLostError while our payload still runs:
    its open spans are ended (ERROR, original ids), once however often it is read."""
    celery_app = Celery("reader_pm", broker=redis_server.url, backend=redis_server.url,
                        set_as_current=False)
    task_id = f"pm-{time.monotonic_ns()}"
    running = {"schema": 1, "state": "running", "task_name": "dead.task", "percent": 30.0,
               "sections": [{"name": "open one", "state": "running", "percent": 30.0}],
               "finished": False, "status": 2, "updated": "2020-01-01T00:00:00.000000Z",
               PRIVATE_KEY: {"open_spans": [
                   {"name": "open one", "trace_id": "ab" * 16, "span_id": "cd" * 8,
                    "parent_id": "ef" * 8, "start": time.time() - 5, "depth": 1}]}}
    client = redis_server.client()
    try:
        client.set(KEY_PREFIX + task_id, json.dumps(running))
        celery_app.backend.mark_as_failure(task_id, WorkerLostError("gone"))
        reads = [get_progress(task_id, app=celery_app) for _ in range(3)]
        ended = _poll(spans.finished, lambda s: any(x.name == "open one" for x in s), 10,
                      "the dead span")
        time.sleep(1.5)
        ended = [s for s in spans.finished() if s.name == "open one"]
        assert 1 == len(ended)
        span = ended[0]
        assert ("ERROR", "WorkerLostError", "cd" * 8, "ef" * 8, "ab" * 16) == (
            span.status.status_code.name, span.attributes[A.ERROR_TYPE],
            format(span.context.span_id, "016x"), format(span.parent.span_id, "016x"),
            format(span.context.trace_id, "032x"))
        assert [False, False, False] == [PRIVATE_KEY in (r or {}) for r in reads]
        assert [("failed", "failed")] * 3 == [
            (r["state"], r["sections"][0]["state"]) for r in reads if r is not None]
        assert False is claim_post_mortem(celery_app.backend, task_id)  # claimed already
    finally:
        client.close()
        celery_app.close()


# --- worker faults not covered elsewhere ---------------------------------------------------------
@pytest.mark.slow
def test_soft_time_limit_reads_failed_with_the_section_failed_at_its_percent(
        app: Any, celery_worker_factory: WorkerFactory) -> None:
    """soft_time_limit inside a section: failed, SoftTimeLimitExceeded, the section at 25 %."""
    celery_worker_factory(APP, concurrency=1, queues=(QUEUE,))
    result = app.soft_limited.apply_async((10,), soft_time_limit=1)
    _poll(lambda: result.state, lambda s: s == "FAILURE", 20, "Celery's FAILURE")
    payload = get_progress(result.id, app=app.app)
    assert payload is not None
    assert ("failed", True, "SoftTimeLimitExceeded", "failed", 25.0) == (
        payload["state"], payload["finished"], payload["exc_type"],
        payload["sections"][0]["state"], payload["sections"][0]["percent"])


@pytest.mark.slow
def test_acks_late_task_redelivered_after_a_lost_child_reads_succeeded(
        app: Any, celery_worker_factory: WorkerFactory) -> None:
    """acks_late + reject_on_worker_lost: SIGKILL the child, the redelivery ends succeeded."""
    worker = celery_worker_factory(APP, concurrency=1, queues=(QUEUE,))
    result = app.redelivered.delay(60, f"m{time.monotonic_ns()}")
    running = _poll(lambda: get_progress(result.id, app=app.app),
                    lambda p: bool(p and str(p.get("description", "")).startswith("pid=")), 20,
                    "the first delivery running")
    os.kill(_pid_of(running), signal.SIGKILL)
    worker.wait_for_children(1)
    assert "redelivered" == result.get(timeout=30)
    payload = _poll(lambda: get_progress(result.id, app=app.app),
                    lambda p: bool(p and p["state"] == "succeeded"), 10, "succeeded")
    assert (True, 100.0, 1) == (payload["finished"], payload["percent"], payload["status"])


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.parametrize("pool", ["threads", "gevent"])
def test_fifty_concurrent_tasks_keep_their_own_sections_and_notifications(
        pool: str, app: Any, celery_worker_factory: WorkerFactory,
        otlp_receiver: OtlpGrpcReceiver) -> None:
    """50 overlapping tasks on --pool threads / gevent (grpc's gevent init): no leakage."""
    env = _otel_env(otlp_receiver, **({"OTEL_PROGRESS_TEST_GEVENT": "1"} if pool == "gevent"
                                      else {}))
    worker = celery_worker_factory(APP, pool=pool, concurrency=10 if pool == "threads" else 50,
                                   queues=(QUEUE,), env=env)
    tags = [f"{pool[0]}{i}" for i in range(50)]
    results = {tag: app.tagged.delay(tag) for tag in tags}
    assert tags == [results[tag].get(timeout=90) for tag in tags]
    runs = otlp_receiver.wait_for_spans(
        lambda s: sum(x.name == "run/reliability.tagged" for x in s) >= 50, timeout=30)
    worker.stop()
    spans = otlp_receiver.spans()
    run_of = {s.attributes[A.TASK_UUID]: s for s in spans if s.name == "run/reliability.tagged"}
    leaks = []
    for tag, result in results.items():
        run = run_of[result.id]
        children = [s for s in spans if s.parent_span_id == run.span_id
                    and s.trace_id == run.trace_id]
        events = {e.name for c in children for e in c.events}
        payload = get_progress(result.id, app=app.app)
        assert payload is not None
        if ([f"{tag}-s{i}" for i in range(3)] != sorted(c.name for c in children)
                or {f"{tag}-s{i}-n{j}" for i in range(3) for j in range(3)} != events
                or [f"{tag}-s{i}" for i in range(3)] != [s["name"] for s in payload["sections"]]
                or {tag} != set(re.findall(r"\b([tg]\d+)-s\d", payload["log"]))):
            leaks.append(tag)
    assert ([], 50) == (leaks, len(runs and run_of))


# --- limits and what a payload never carries ---------------------------------------------------
@pytest.mark.slow
def test_span_limits_cap_events_and_attribute_lengths_and_count_the_drops(
        tmp_path: Any, otlp_receiver: OtlpGrpcReceiver) -> None:
    """1,500 notifications, a 10,000-character value, 200 attributes: the SDK's SpanLimits keep
    1,000 events, 4,096 characters and 128 attributes; OTLP carries the dropped counts."""
    result = run_python(f"""
        from otel_progress import TaskUpdater, configure, shutdown
        configure(endpoint={otlp_receiver.endpoint!r}, insecure=True, timeout=2, metrics=False)
        updater = TaskUpdater(task_name="limits")
        with updater(task_name="chatty"):
            for i in range(1500):
                updater.notify(f"n{{i}}")
            updater.notify("wide", **{{f"k{{i}}": i for i in range(200)}})
            updater.notify("long", value="x" * 10_000)
        updater.insert_final_update()
        shutdown()
    """, tmp_path)
    assert 0 == result.returncode, result.describe()
    span = next(s for s in otlp_receiver.wait_for_spans(
        lambda spans: any(x.name == "chatty" for x in spans)) if s.name == "chatty")
    assert (1000, 502) == (len(span.events), span.dropped_events_count)
    events = {e.name: e for e in span.events}
    assert ("n502", 128) == (span.events[0].name, len(events["wide"].attributes))  # oldest go
    long_value = next(e for e in span.events if e.name == "long").attributes["value"]
    assert 4096 == len(long_value)


def test_answers_hold_no_args_kwargs_result_environment_or_private_part() -> None:
    """A payload carrying them (a caller's meta, our private part): the answer drops them."""
    from otel_progress.web._reader import Reader

    reader = Reader(None, policy="anonymous")
    payload = {"state": "running", "updated": None, "args": [1], "kwargs": {"a": 1},
               "result": 3, "env": {"HOME": "/root"}, "environ": {}, "traceback": "tb",
               PRIVATE_KEY: {"open_spans": []}, "percent": 1.0}
    shaped = reader.shape("t", dict(payload), "otel-progress")
    assert {"percent": 1.0, "state": "running", "stale": False, "updated": None} == shaped
