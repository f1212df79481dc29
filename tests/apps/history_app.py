"""Celery app for the task-history tests: real workers start it with
``-A tests.apps.history_app``.

Broker and result backend from ``OTEL_PROGRESS_TEST_REDIS_URL``; the history store from
``OTEL_PROGRESS_TEST_HISTORY_URL`` (unset: the default rule, the Redis result backend's server).
Every task goes to the ``history`` queue, so no other test's worker takes one. In a worker
(``OTEL_PROGRESS_TEST_HISTORY_WORKER=1``) an SDK tracer provider without an exporter gives the
payloads real trace ids.
"""

from __future__ import annotations

import os
import time
from typing import Any

import redis
from celery import Celery

from otel_progress import TaskUpdater, configure
from otel_progress.celery import ProgressInstrumentor
from tests.support.celery_conf import TEST_APP_CONF

REDIS_URL_ENV = "OTEL_PROGRESS_TEST_REDIS_URL"
HISTORY_URL_ENV = "OTEL_PROGRESS_TEST_HISTORY_URL"
QUEUE = "history"
GATE_PREFIX = "history-test-gate-"
GATE_TIMEOUT = 60.0

app = Celery("history_app")
_url = os.environ.get(REDIS_URL_ENV)
app.conf.update(
    broker_url=_url or "memory://",
    result_backend=_url or "cache+memory://",
    **TEST_APP_CONF,
    task_default_queue=QUEUE,
)

if os.environ.get("OTEL_PROGRESS_TEST_HISTORY_WORKER") == "1":
    configure(service_name="history-test", traces_exporter="none", metrics=False)
ProgressInstrumentor().instrument(min_interval=0.1,
                                  history=os.environ.get(HISTORY_URL_ENV) or None)


@app.task(bind=True, name="history_app.work")
def work(self: Any, i: int, fail: bool = False) -> int:
    """Two sections; with ``fail`` the second raises ``ValueError("bad <i>")`` and the task
    re-raises it (Celery's FAILURE): jobs 1 of 2; else 2 of 2."""
    updater = TaskUpdater(expected_sections=2)
    with updater(task_name="load"):
        updater.notify(f"loading {i}")
    with updater(task_name="process"):
        if fail:
            raise ValueError(f"bad {i}")
        updater.progress(current=1, total=1)
    updater.raise_latest_exception()
    return i


@app.task(bind=True, name="history_app.flaky", max_retries=2)
def flaky(self: Any, i: int) -> int:
    """Retries once before it makes an updater; the second attempt has one section (1 of 1)."""
    if self.request.retries == 0:
        raise self.retry(countdown=0.2)
    updater = TaskUpdater()
    with updater(task_name="second try"):
        pass
    updater.insert_final_update()
    return i


@app.task(bind=True, name="history_app.bare")
def bare(self: Any, i: int = 0) -> int:
    """No updater at all: its row comes from the task-end hook alone."""
    return i


@app.task(bind=True, name="history_app.spawn")
def spawn(self: Any) -> str:
    """Publishes one child inside a section; returns the child's id."""
    updater = TaskUpdater()
    with updater(task_name="spawn"):
        child = bare.apply_async((7,))
    updater.insert_final_update()
    return str(child.id)


@app.task(bind=True, name="history_app.block")
def block(self: Any, gate: str) -> str:
    """Waits inside a section until the test sets the gate key (bounded)."""
    updater = TaskUpdater()
    with updater(task_name="blocked"):
        updater.notify("waiting")
        client = redis.Redis.from_url(_url or "redis://127.0.0.1:6379/0")
        deadline = time.monotonic() + GATE_TIMEOUT
        try:
            while time.monotonic() < deadline and not client.exists(GATE_PREFIX + gate):
                time.sleep(0.05)
        finally:
            client.close()
    updater.insert_final_update()
    return "released"
