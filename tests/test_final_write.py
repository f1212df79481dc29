"""The final write at a task's end rides in Celery's own store of the task's state.

One MULTI/EXEC holds otel_progress's final payload (and the history row), then Celery's SETEX and
PUBLISH: a reader never sees Celery's final state without the final payload, and the task end
makes no round trip of its own. Real prefork worker, real Redis; the commands are watched with
Redis's MONITOR.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from otel_progress.celery import get_progress
from tests.support.celery_worker import CeleryWorker
from tests.support.redis_server import RedisServer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

APP = "tests.apps.progress_app"


@pytest.fixture
def worker(celery_worker_factory: Callable[..., CeleryWorker]) -> CeleryWorker:
    """One pool child, so consecutive tasks run in the same process."""
    return celery_worker_factory(APP, concurrency=1, queues=("celery",))


@contextlib.contextmanager
def _monitor(redis_server: RedisServer) -> Iterator[list[dict[str, Any]]]:
    """Every command Redis executes while the block runs (MONITOR), in order."""
    seen: list[dict[str, Any]] = []
    client = redis_server.client()
    stop = threading.Event()
    ready = threading.Event()

    def watch() -> None:
        with contextlib.suppress(Exception), client.monitor() as monitor:
            ready.set()
            while not stop.is_set():
                seen.append(monitor.next_command())

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    assert ready.wait(5), "MONITOR did not start"
    time.sleep(0.1)
    try:
        yield seen
    finally:
        stop.set()
        redis_server.client().ping()  # one more command: the watcher wakes and sees stop
        thread.join(5)
        client.close()


def _send(app: Any, name: str, *args: Any) -> Any:
    """Through the test app itself: a shared task would follow whatever app is current."""
    return app.app.send_task(name, args=args)


def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def _per_client(seen: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Commands by client connection; those a Lua script ran (MONITOR's "lua" client) left out."""
    out: dict[str, list[str]] = {}
    for cmd in list(seen):
        if cmd.get("client_type") == "lua" or cmd.get("client_address") == "lua":
            continue
        out.setdefault(f"{cmd.get('client_address')}:{cmd.get('client_port')}", []).append(
            str(cmd.get("command", "")))
    return out


def _stored_block_seen(seen: list[dict[str, Any]], meta_key: str) -> bool:
    """Whether MONITOR has delivered a SETEX of ``meta_key`` and the EXEC after it (its lines
    arrive after the task's result does: the subscriber is told first)."""
    for commands in _per_client(seen).values():
        for i, command in enumerate(commands):
            if command.startswith("SETEX") and meta_key in command.split(" ", 2)[1]:
                return any(c.startswith("EXEC") for c in commands[i + 1:])
    return False


def test_the_final_payload_rides_in_the_transaction_that_stores_celerys_state(
        app: Any, worker: CeleryWorker, redis_server: RedisServer) -> None:
    """MULTI, our EVALSHA on the own key, Celery's SETEX and PUBLISH, EXEC: one connection, in
    a row; no other write of the final payload."""
    # the child's scripts are loaded: the steady state
    _send(app, "progress_app.sections", 1).get(timeout=30)
    with _monitor(redis_server) as seen:
        result = _send(app, "progress_app.sections", 3)
        assert 3 == result.get(timeout=30)
        meta_key = f"celery-task-meta-{result.id}"
        _wait(lambda: _stored_block_seen(seen, meta_key), 10,
              "MONITOR's lines of Celery's store of the task's state, up to its EXEC")
    own_key = f"otel-progress-meta-{result.id}"
    blocks = []
    for commands in _per_client(seen).values():
        for i, command in enumerate(commands):
            if command.startswith("SETEX") and meta_key in command.split(" ", 2)[1]:
                blocks.append(commands[max(i - 2, 0):i + 3])
    assert 1 == len(blocks), blocks
    block = blocks[0]
    assert ["MULTI", "EVALSHA", "SETEX", "PUBLISH", "EXEC"] == [c.split(" ", 1)[0]
                                                               for c in block], block
    assert own_key in block[1]
    writes_of_ours = [c for commands in _per_client(seen).values() for c in commands
                      if own_key in c and c.startswith(("EVALSHA", "SET"))
                      and not re.search(r"state\W{1,8}queued", c)]
    # besides the queued write at publish (when this process tracks publishes): only the one
    # in Celery's transaction
    assert 1 == len(writes_of_ours), writes_of_ours
    payload = get_progress(result.id, app=app.app)
    assert payload is not None
    assert ("succeeded", True, 3) == (payload["state"], payload["finished"],
                                      payload["jobs"]["finished"])


def test_a_task_whose_result_celery_ignores_still_gets_its_final_payload(
        app: Any, worker: CeleryWorker, redis_server: RedisServer) -> None:
    """ignore_result=True: Celery stores nothing, the final payload is written at postrun."""
    result = _send(app, "progress_app.quiet", 2)
    client = redis_server.client()

    def final() -> bool:
        payload = get_progress(result.id, app=app.app)
        return payload is not None and payload["finished"]

    _wait(final, 20, "the final payload of a task whose result is ignored")
    payload = get_progress(result.id, app=app.app)
    assert payload is not None
    assert ("succeeded", 2, "quiet 1") == (payload["state"], payload["jobs"]["finished"],
                                           payload["description"])
    assert 0 == client.exists(f"celery-task-meta-{result.id}")
    client.close()


def test_a_flushed_script_cache_loses_neither_the_result_nor_the_final_payload(
        app: Any, worker: CeleryWorker, redis_server: RedisServer) -> None:
    """SCRIPT FLUSH after the child loaded our scripts (a Redis restart does the same): the
    riding EVALSHA fails with NOSCRIPT inside Celery's transaction, Celery's state is stored
    all the same, and the final payload is written on its own right after (this once: a reader
    in between gets the payload closed from Celery's state, as after a lost worker)."""
    _send(app, "progress_app.sections", 1).get(timeout=30)
    client = redis_server.client()
    client.script_flush()
    result = _send(app, "progress_app.sections", 2)
    assert 2 == result.get(timeout=30)

    def final() -> bool:  # written right after Celery's state, not with it, this once
        payload = get_progress(result.id, app=app.app)
        return payload is not None and payload["jobs"]["finished"] == 2

    _wait(final, 10, "the final payload written after NOSCRIPT")
    payload = get_progress(result.id, app=app.app)
    assert payload is not None
    assert ("succeeded", True) == (payload["state"], payload["finished"])
    again = _send(app, "progress_app.sections", 1)  # the scripts are loaded again: it rides
    assert 1 == again.get(timeout=30)
    later = get_progress(again.id, app=app.app)
    assert later is not None and later["finished"]
    client.close()
