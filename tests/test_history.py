"""Task history on real parts: a real Redis, two real prefork workers, the status app over
HTTP, the CLI's exports; the same suite against the Redis and the SQLite store."""

from __future__ import annotations

import contextlib
import io
import json
import re
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from otel_progress.history import (
    ROW_KEYS,
    RedisHistory,
    SQLiteHistory,
    read_csv,
    store_from_url,
)
from tests.apps import history_app
from tests.support.celery_worker import CeleryWorker, internal_errors
from tests.support.redis_server import RedisServer
from tests.support.web import UvicornServer, free_port, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

APP = "tests.apps.history_app"
TASKS = 200
FAIL_EVERY = 10  # i % 10 == 3 fails: 20 tasks
FLAKY_EVERY = 25  # i % 25 == 7 retries once: 8 tasks
BARE_EVERY = 16  # i % 16 == 5 has no updater
HEX32 = re.compile(r"^[0-9a-f]{32}$")


@dataclass
class Setup:
    """One store kind: the store as the test reads it, the producer app, the workers."""

    kind: str
    store: Any
    producer: Any
    workers: list[CeleryWorker]
    url: str | None
    expected: dict[str, dict[str, Any]] = field(default_factory=dict)
    kinds: dict[str, str] = field(default_factory=dict)

    def send(self, name: str, *args: Any) -> str:
        return str(self.producer.send_task(f"history_app.{name}", args=args,
                                           queue=history_app.QUEUE).id)

    def all_rows(self, **query: Any) -> list[dict[str, Any]]:
        rows, cursor = self.store.list(limit=500, **query)
        out = list(rows)
        for _ in range(100):
            if cursor is None:
                break
            rows, cursor = self.store.list(limit=500, cursor=cursor, **query)
            out += rows
        return out


def _instrumented(store: Any) -> Iterator[None]:
    """This process publishes as an instrumented producer writing to ``store``."""
    from otel_progress.celery import ProgressInstrumentor

    instrumentor = ProgressInstrumentor()
    was_on = instrumentor.is_instrumented_by_opentelemetry
    if was_on:
        instrumentor.uninstrument()
    instrumentor.instrument(history=store)
    try:
        yield
    finally:
        instrumentor.uninstrument()
        if was_on:
            instrumentor.instrument()


@pytest.fixture(scope="module", params=["redis", "sqlite"])
def setup(request: pytest.FixtureRequest, redis_server: RedisServer,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    """Two prefork workers (-c 2 each) writing the history to one store kind."""
    from celery import Celery, current_app

    kind = request.param
    tmp = tmp_path_factory.mktemp(f"history-{kind}")
    redis_server.ensure_running()
    url: str | None
    if kind == "redis":
        url = None  # the default rule: the Redis result backend's own server
        store: Any = RedisHistory(redis_server.url)
        store.clear()
    else:
        url = f"sqlite:///{tmp / 'history.db'}"  # an absolute path: sqlite:////...
        store = store_from_url(url)
    env = {"OTEL_PROGRESS_TEST_HISTORY_WORKER": "1"}
    if url:
        env[history_app.HISTORY_URL_ENV] = url
    workers = [CeleryWorker(APP, log_dir=tmp, redis_url=redis_server.url, concurrency=2,
                            queues=(history_app.QUEUE,), env=env) for _ in range(2)]
    producer = Celery("history_client", broker=redis_server.url, backend=redis_server.url,
                      set_as_current=False)
    producer.conf.update(task_serializer="json", result_serializer="json",
                         accept_content=["json"], result_accept_content=["json"])
    previous = current_app._get_current_object()
    try:
        for worker in workers:
            worker.start(wait=False)
        for worker in workers:
            worker.wait_ready()
        producer.set_current()
        with contextlib.contextmanager(_instrumented)(store):
            yield Setup(kind, store, producer, workers, url)
    finally:
        previous.set_current()
        for worker in workers:
            worker.request_stop()
        for worker in workers:
            worker.wait_stopped(timeout=15.0)
        producer.close()
        bad = [line for w in workers for line in internal_errors(w.log_text())]
        for worker in workers:
            print(f"\n=== {worker.hostname}: {worker.log_path}\n{worker.log_tail()}")
    if bad:
        pytest.fail("a worker hit an otel_progress internal error:\n" + "\n".join(bad[:20]))


def _wait_final(setup: Setup, ids: list[str], timeout: float = 90.0) -> dict[str, dict[str, Any]]:
    def final() -> dict[str, dict[str, Any]] | None:
        rows = {i: setup.store.get(i) for i in ids}
        done = all(r is not None and r["state"] in ("succeeded", "failed", "revoked")
                   for r in rows.values())
        return rows if done else None  # type: ignore[return-value]

    rows: dict[str, dict[str, Any]] = wait_for(final, timeout=timeout, interval=0.2,
                                               what="every row final")
    return rows


@pytest.fixture(scope="module")
def ran(setup: Setup, redis_server: RedisServer) -> Setup:
    """200 tasks run concurrently: a known share failing, some retried, one revoked."""
    gate = uuid.uuid4().hex
    blocked = setup.send("block", gate)
    wait_for(lambda: (setup.store.get(blocked) or {}).get("state") == "running", timeout=30,
             what="the blocked task running")
    setup.producer.control.revoke(blocked, terminate=True)
    setup.kinds[blocked] = "revoked"
    spawned = setup.send("spawn")
    setup.kinds[spawned] = "spawn"
    for i in range(TASKS - 2):
        if i % FLAKY_EVERY == 7:
            task_id, what = setup.send("flaky", i), "flaky"
        elif i % FAIL_EVERY == 3:
            task_id, what = setup.send("work", i, True), "fail"
        elif i % BARE_EVERY == 5:
            task_id, what = setup.send("bare", i), "bare"
        else:
            task_id, what = setup.send("work", i, False), "ok"
        setup.kinds[task_id] = what
        setup.expected[task_id] = {"i": i}
    rows = _wait_final(setup, list(setup.kinds))
    child = setup.producer.AsyncResult(spawned).get(timeout=30)
    setup.kinds[child] = "child"
    setup.expected[child] = {"parent": spawned}
    _wait_final(setup, [child])
    assert "revoked" == rows[blocked]["state"]
    return setup


def _expected_row(kind: str, i: int | None) -> dict[str, Any]:
    """What a run of each kind must leave in its row (the keys that do not vary)."""
    if kind == "ok":
        return {"state": "succeeded", "attempt": 1, "jobs_finished": 2, "jobs_total": 2,
                "exc_type": None, "exc_message": None}
    if kind == "fail":
        return {"state": "failed", "attempt": 1, "jobs_finished": 1, "jobs_total": 2,
                "exc_type": "ValueError", "exc_message": f"bad {i}"}
    if kind == "flaky":
        return {"state": "succeeded", "attempt": 2, "jobs_finished": 1, "jobs_total": 1,
                "exc_type": None, "exc_message": None}
    if kind in ("bare", "child"):
        return {"state": "succeeded", "attempt": 1, "jobs_finished": 0, "jobs_total": 0,
                "exc_type": None, "exc_message": None}
    if kind == "spawn":
        return {"state": "succeeded", "attempt": 1, "jobs_finished": 1, "jobs_total": 1,
                "exc_type": None, "exc_message": None}
    return {"state": "revoked", "attempt": 1, "exc_type": "TaskRevokedError"}


def test_every_run_has_exactly_one_correct_row(ran: Setup) -> None:
    """After 200 concurrent runs the index holds one row per run, as each task ended."""
    rows = ran.all_rows()
    ids = [r["task_id"] for r in rows]
    assert len(ids) == len(set(ids))
    assert set(ran.kinds) == set(ids)
    by_id = {r["task_id"]: r for r in rows}
    mismatched = {}
    for task_id, kind in ran.kinds.items():
        row = by_id[task_id]
        want = _expected_row(kind, ran.expected.get(task_id, {}).get("i"))
        got = {k: row[k] for k in want}
        if want != got:
            mismatched[task_id] = (kind, want, got)
    assert {} == mismatched
    assert list(ROW_KEYS) == list(rows[0])


def test_rows_carry_times_trace_ids_parents_and_the_log(ran: Setup) -> None:
    """Start before end, duration their difference, trace ids, the parent's id, the seed log."""
    rows = {r["task_id"]: r for r in ran.all_rows()}
    from otel_progress._payload import parse_iso

    for task_id, kind in ran.kinds.items():
        row = rows[task_id]
        start, end = parse_iso(row["start"]), parse_iso(row["end"])
        assert start is not None and end is not None and start <= end, row
        assert abs((end - start) - row["duration_s"]) < 0.002, row
        assert row["task_name"].startswith("history_app."), row
        if kind in ("ok", "fail", "flaky", "spawn"):
            assert HEX32.match(row["trace_id"] or ""), row
    child = next(i for i, k in ran.kinds.items() if k == "child")
    spawned = next(i for i, k in ran.kinds.items() if k == "spawn")
    assert spawned == rows[child]["parent_id"]
    flaky = next(i for i, k in ran.kinds.items() if k == "flaky")
    assert None is rows[flaky]["parent_id"]  # retry() re-publishes the task: not its parent
    ok = next(i for i, k in ran.kinds.items() if k == "ok")
    assert rows[ok]["log"].endswith("\tTask Finished - 2 out of 2 jobs finished\n")
    failed = next(i for i, k in ran.kinds.items() if k == "fail")
    assert "<class 'ValueError'>: bad" in rows[failed]["log"]


def test_list_is_newest_first_by_start(ran: Setup) -> None:
    """Every page is ordered by start, newest first."""
    starts = [r["start"] for r in ran.all_rows()]
    assert sorted(starts, reverse=True) == starts


def test_filters_by_state_name_and_time(ran: Setup) -> None:
    """state=, name=, since= and until= select exactly the matching rows."""
    failed = {i for i, k in ran.kinds.items() if k == "fail"}
    assert failed == {r["task_id"] for r in ran.all_rows(state="failed")}
    flaky = {i for i, k in ran.kinds.items() if k == "flaky"}
    assert flaky == {r["task_id"] for r in ran.all_rows(name="history_app.flaky")}
    assert set() == {r["task_id"] for r in ran.all_rows(name="history_app.flaky",
                                                         state="failed")}
    rows = ran.all_rows()
    from otel_progress._payload import parse_iso

    middle = parse_iso(rows[len(rows) // 2]["start"])
    assert middle is not None
    newer = {r["task_id"] for r in rows if (parse_iso(r["start"]) or 0) >= middle}
    older = {r["task_id"] for r in rows if (parse_iso(r["start"]) or 0) <= middle}
    assert newer == {r["task_id"] for r in ran.all_rows(since=middle)}
    assert older == {r["task_id"] for r in ran.all_rows(until=middle)}


def test_pages_miss_no_row_and_repeat_none_while_new_tasks_arrive(ran: Setup) -> None:
    """Paging 37 at a time while 40 new tasks run: every earlier row once, no row twice."""
    before = {r["task_id"] for r in ran.all_rows()}
    stop = threading.Event()
    sent: list[str] = []

    def publish() -> None:
        for i in range(40):
            if stop.is_set():
                break
            sent.append(ran.send("bare", 1000 + i))
            time.sleep(0.02)

    thread = threading.Thread(target=publish, daemon=True)
    thread.start()
    seen: list[str] = []
    rows, cursor = ran.store.list(limit=37)
    seen += [r["task_id"] for r in rows]
    for _ in range(200):
        if cursor is None:
            break
        time.sleep(0.03)
        rows, cursor = ran.store.list(limit=37, cursor=cursor)
        seen += [r["task_id"] for r in rows]
    stop.set()
    thread.join(10)
    assert len(seen) == len(set(seen))
    assert set() == before - set(seen)
    _wait_final(ran, sent)
    for task_id in sent:
        ran.kinds[task_id] = "bare"


def test_a_row_outlives_the_result_backend(ran: Setup, redis_server: RedisServer) -> None:
    """With Celery's meta and our key gone, get_progress() still answers from the history."""
    from otel_progress.celery import get_progress

    failed = next(i for i, k in ran.kinds.items() if k == "fail")
    client = redis_server.client()
    try:
        client.delete(f"celery-task-meta-{failed}", f"otel-progress-meta-{failed}")
    finally:
        client.close()
    payload = get_progress(failed, app=ran.producer)
    assert payload is not None
    assert ("failed", "ValueError", True) == (payload["state"], payload["exc_type"],
                                              payload["finished"])
    assert get_progress(f"never-{uuid.uuid4().hex}", app=ran.producer) is None


def test_a_short_retention_removes_old_rows(ran: Setup, tmp_path: Path,
                                            redis_server: RedisServer) -> None:
    """retention_s=1: a row older than a second is gone from get() and list()."""
    if ran.kind == "redis":
        store: Any = RedisHistory(redis_server.url, retention_s=1.0,
                                  key_prefix=f"expiry-{uuid.uuid4().hex}:")
    else:
        store = SQLiteHistory(tmp_path / "expiry.db", retention_s=1.0)
    now = time.time()
    store.record({"task_id": "old", "task_name": "t", "state": "succeeded", "start": now,
                  "end": now})
    assert ["old"] == [r["task_id"] for r in store.list()[0]]
    time.sleep(1.3)
    later = time.time()
    store.record({"task_id": "new", "task_name": "t", "state": "succeeded", "start": later,
                  "end": later})
    assert (None, ["new"]) == (store.get("old"), [r["task_id"] for r in store.list()[0]])
    if ran.kind == "redis":
        client = redis_server.client()
        try:
            assert 0 == client.exists(f"{store.prefix}row:old")
            assert [b"new"] == client.zrange(f"{store.prefix}time", 0, -1)
        finally:
            client.close()



def test_tasks_succeed_when_the_store_is_down(celery_worker_factory: Any,
                                              redis_server: RedisServer) -> None:
    """A history on a port nobody listens on: every task succeeds, with one warning."""
    from celery import Celery, current_app

    dead = f"redis://127.0.0.1:{free_port()}/0"
    worker = celery_worker_factory(APP, concurrency=1, queues=(history_app.QUEUE,),
                                   env={history_app.HISTORY_URL_ENV: dead})
    producer = Celery("history_down", broker=redis_server.url, backend=redis_server.url,
                      set_as_current=False)
    previous = current_app._get_current_object()
    producer.set_current()
    started = time.monotonic()
    try:
        with contextlib.contextmanager(_instrumented)(store_from_url(dead)):
            results = [producer.send_task("history_app.work", args=(i, i == 2),
                                          queue=history_app.QUEUE) for i in range(6)]
            outcomes = [r.get(timeout=30, propagate=False) for r in results]
    finally:
        previous.set_current()
        producer.close()
    assert [0, 1, "bad 2", 3, 4, 5] == [str(o) if isinstance(o, Exception) else o
                                        for o in outcomes]
    assert time.monotonic() - started < 20
    warnings = worker.log_text().count("cannot write the task history")
    assert 1 == warnings


@pytest.fixture(scope="module")
def served(ran: Setup) -> Iterator[tuple[str, list[Any]]]:
    """The status app over HTTP on loopback; its authorize hook records every task id asked."""
    from otel_progress.web import create_app

    asked: list[Any] = []

    def authorize(request: Any, task_id: Any) -> bool:
        asked.append(task_id)
        return request.headers.get("x-refuse") is None

    with UvicornServer(create_app(ran.producer, authorize=authorize)) as server:
        yield server.url, asked


def test_the_list_route_pages_through_a_filter(ran: Setup,
                                               served: tuple[str, list[Any]]) -> None:
    """GET /tasks?state=failed&limit=7 pages through every failed run, newest first."""
    base, _ = served
    seen: list[dict[str, Any]] = []
    with httpx.Client(timeout=10) as client:
        response = client.get(f"{base}/tasks", params={"state": "failed", "limit": "7"})
        for _ in range(20):
            assert (200, "no-store") == (response.status_code,
                                         response.headers["cache-control"])
            body = response.json()
            assert ["next_cursor", "tasks"] == sorted(body)
            seen += body["tasks"]
            if body["next_cursor"] is None:
                break
            response = client.get(f"{base}/tasks", params={"state": "failed", "limit": "7",
                                                           "cursor": body["next_cursor"]})
    assert ran.all_rows(state="failed") == seen
    assert 7 >= len(body["tasks"])


def test_the_list_route_answers_400_for_bad_parameters(served: tuple[str, list[Any]]) -> None:
    """An unknown state, a limit outside 1..500, a bad time or cursor: 400, nothing listed."""
    base, _ = served
    bad = [{"state": "done"}, {"limit": "0"}, {"limit": "501"}, {"limit": "ten"},
           {"since": "last tuesday"}, {"until": "2024-13-45"}, {"cursor": "not-a-cursor"}]
    with httpx.Client(timeout=10) as client:
        got = [client.get(f"{base}/tasks", params=p).status_code for p in bad]
    assert [400] * len(bad) == got


def test_the_list_route_asks_authorize_with_no_task_id(served: tuple[str, list[Any]]) -> None:
    """authorize(request, None) decides the list: a refusal is a 403."""
    base, asked = served
    asked.clear()
    with httpx.Client(timeout=10) as client:
        allowed = client.get(f"{base}/tasks", params={"limit": "1", "since": "30d"})
        refused = client.get(f"{base}/tasks", headers={"x-refuse": "1"})
    assert (200, 403, [None, None]) == (allowed.status_code, refused.status_code, asked)


def test_the_log_route_serves_a_runs_log_as_text(ran: Setup,
                                                 served: tuple[str, list[Any]]) -> None:
    """GET /tasks/<id>/log: the row's log as text/plain; 404 untracked, 400 malformed."""
    base, asked = served
    failed = next(i for i, k in ran.kinds.items() if k == "fail")
    asked.clear()
    with httpx.Client(timeout=10) as client:
        response = client.get(f"{base}/tasks/{failed}/log")
        unknown = client.get(f"{base}/tasks/never-{uuid.uuid4().hex}/log")
        malformed = client.get(f"{base}/tasks/{'x' * 300}/log")
    assert (200, "text/plain; charset=utf-8") == (response.status_code,
                                                  response.headers["content-type"])
    assert ran.store.get(failed)["log"] == response.text
    assert (404, 400) == (unknown.status_code, malformed.status_code)
    assert failed == asked[0]


def test_the_json_export_round_trips_with_the_next_cursor_on_stderr(
        ran: Setup, capsys: pytest.CaptureFixture[str]) -> None:
    """`history --format json`: the rows exactly; `--cursor` from stderr gives the next page."""
    from otel_progress.cli import main

    assert 0 == main(["history", "-A", f"{APP}:app", "--state", "failed", "--limit", "5",
                      "--format", "json"])
    out, err = capsys.readouterr()
    first, cursor = ran.store.list(state="failed", limit=5)
    assert first == json.loads(out)
    assert f"next cursor: {cursor}\n" == err
    assert 0 == main(["history", "-A", f"{APP}:app", "--state", "failed", "--limit", "5",
                      "--format", "json", "--cursor", str(cursor)])
    assert ran.store.list(state="failed", limit=5, cursor=cursor)[0] == json.loads(
        capsys.readouterr().out)


def test_the_csv_export_parses_back_to_the_same_rows(ran: Setup, tmp_path: Path) -> None:
    """`history --format csv --output FILE` of every run reads back with read_csv()."""
    from otel_progress.cli import main

    out = tmp_path / "runs.csv"
    assert 0 == main(["history", "-A", f"{APP}:app", "--since", "1d", "--limit", "500",
                      "--format", "csv", "--output", str(out)])
    assert ran.store.list(since=time.time() - 86400, limit=500)[0] == read_csv(
        out.read_bytes().decode("utf-8"))
    assert out.read_bytes().startswith(b"task_id,task_name,state,attempt,start,end,")


def test_the_table_shows_the_rows(ran: Setup, capsys: pytest.CaptureFixture[str]) -> None:
    """The default format is a table of the page's rows."""
    from otel_progress.cli import main

    assert 0 == main(["history", "-A", f"{APP}:app", "--name", "history_app.flaky"])
    out = capsys.readouterr().out
    flaky = [i for i, k in ran.kinds.items() if k == "flaky"]
    assert f"{len(flaky)} runs, newest first" in out
    assert all(task_id[:8] in out for task_id in flaky)


def test_csv_cells_that_look_like_formulas_are_neutralised(tmp_path: Path) -> None:
    """Cells starting with = + - @ tab CR or ' get a leading ', and read back unchanged."""
    from otel_progress.cli import main

    store = SQLiteHistory(tmp_path / "danger.db")
    now = time.time()
    store.record({"task_id": "danger", "task_name": "=HYPERLINK(\"http://x\")",
                  "state": "failed", "start": now, "end": now + 1, "exc_type": "@SUM(A1)",
                  "exc_message": "+1,\n\"two\"", "log": "-3\r\n\tfour", "trace_id": "'quoted"})
    out = tmp_path / "danger.csv"
    assert 0 == main(["history", "--history", f"sqlite:///{tmp_path / 'danger.db'}",
                      "--format", "csv", "-o", str(out)])
    text = out.read_bytes().decode("utf-8")  # not read_text(): it would turn \r\n into \n
    import csv

    cells = next(csv.DictReader(io.StringIO(text, newline="")))
    assert ["'=", "'@", "'+", "'-", "''"] == [cells[k][:2] for k in (
        "task_name", "exc_type", "exc_message", "log", "trace_id")]
    assert store.list()[0] == read_csv(text)
    assert text.endswith("\r\n")


def test_bad_cli_arguments_are_one_line_errors(capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """An unparsable --since, a --limit over 500, or no store: exit 64 and one line."""
    from otel_progress import _backend
    from otel_progress.cli import EXIT_USAGE, main

    # as in a fresh CLI process: not the store this module's instrumented producer set up
    monkeypatch.setattr(_backend, "_history_choice", None)
    monkeypatch.delenv(_backend.HISTORY_URL_ENV, raising=False)

    codes = [main(["history", "--history", "sqlite:///x.db", "--since", "soon"]),
             main(["history", "--history", "sqlite:///x.db", "--limit", "501"]),
             main(["history", "--backend", "cache+memory://"])]
    err = capsys.readouterr().err
    assert [EXIT_USAGE] * 3 == codes
    assert 3 == len(err.strip().splitlines())
