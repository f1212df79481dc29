"""Celery app for the adoption tests (celery-progress drop-in, track(), threads, SSE): real
workers start it with ``-A tests.apps.adoption_app``.

Broker/backend from ``OTEL_PROGRESS_TEST_REDIS_URL``; spans to ``OTEL_EXPORTER_OTLP_ENDPOINT`` (a
receiver on 127.0.0.1) when set, else an SDK provider without exporter (real trace ids). Tasks
that wait do so on a Redis key the test sets (``open_gate``), bounded by GATE_TIMEOUT.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import redis
from celery import Celery, shared_task

import otel_progress
from otel_progress import TaskUpdater, configure
from otel_progress.celery import ProgressInstrumentor
from tests.support.celery_conf import TEST_APP_CONF

REDIS_URL_ENV = "OTEL_PROGRESS_TEST_REDIS_URL"
GATE_PREFIX = "adoption-gate-"
GATE_TIMEOUT = 60.0
THREADS = 8

app = Celery("adoption_app")
_url = os.environ.get(REDIS_URL_ENV)
app.conf.update(
    broker_url=_url or "memory://",
    result_backend=_url or "cache+memory://",
    **TEST_APP_CONF,
    task_track_started=True,
)

if os.environ.get("OTEL_PROGRESS_TEST_ADOPTION_WORKER") == "1":
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        configure(service_name="adoption-test", timeout=2, metrics=False)
    else:
        configure(service_name="adoption-test", traces_exporter="none", metrics=False)
ProgressInstrumentor().instrument(
    min_interval=float(os.environ.get("OTEL_PROGRESS_TEST_MIN_INTERVAL", "0.1")),
)


def wait_gate(name: str) -> None:
    """Block until the test opens gate ``name`` (bounded by GATE_TIMEOUT)."""
    client = redis.Redis.from_url(_url or "redis://127.0.0.1:6379/0")
    deadline = time.monotonic() + GATE_TIMEOUT
    try:
        while time.monotonic() < deadline and not client.exists(GATE_PREFIX + name):
            time.sleep(0.02)
    finally:
        client.close()


def open_gate(client: Any, name: str) -> None:
    """What the test calls (with its own Redis client) to let a waiting task go on."""
    client.set(GATE_PREFIX + name, b"1", ex=300)


def _recorder_loop(recorder: Any, count: int, gate: str, stop_at: int) -> int:
    for i in range(count):
        recorder.set_progress(i + 1, count, description=f"item {i + 1}")
        if gate and i + 1 == stop_at:
            wait_gate(gate)
    return count


@shared_task(bind=True, name="adoption.cp_ours")
def cp_ours(self: Any, count: int, gate: str = "", stop_at: int = 0) -> int:
    """celery-progress's example loop on the drop-in (only the import differs)."""
    from otel_progress.compat.celery_progress import ProgressRecorder

    return _recorder_loop(ProgressRecorder(self), count, gate, stop_at)


@shared_task(bind=True, name="adoption.cp_theirs")
def cp_theirs(self: Any, count: int, gate: str = "", stop_at: int = 0) -> int:
    """The same loop on celery-progress itself (the reference)."""
    from celery_progress.backend import ProgressRecorder

    return _recorder_loop(ProgressRecorder(self), count, gate, stop_at)


@shared_task(bind=True, name="adoption.cp_increment")
def cp_increment(self: Any, count: int, gate: str = "") -> int:
    """increment_progress() with a total set once, then a gate at the end."""
    from otel_progress.compat.celery_progress import ProgressRecorder

    recorder = ProgressRecorder(self)
    recorder.set_progress(0, count)
    for _ in range(count):
        recorder.increment_progress(description="one more")
    if gate:
        wait_gate(gate)
    return count


@shared_task(bind=True, name="adoption.cp_fails")
def cp_fails(self: Any) -> None:
    """Progress, then an exception leaves the task: FAILURE."""
    from otel_progress.compat.celery_progress import ProgressRecorder

    ProgressRecorder(self).set_progress(1, 4, description="about to fail")
    raise ValueError("broken row")


def _work(updater: TaskUpdater, index: int) -> str:
    """One thread's share: a section with a tracked loop and a notification."""
    with updater(task_name=f"thread {index}"):
        for _ in updater.track(range(5), description=f"items {index}"):
            time.sleep(0.005)
        updater.notify(f"thread {index} done")
    return threading.current_thread().name


@shared_task(bind=True, name="adoption.threads_executor")
def threads_executor(self: Any) -> list[str]:
    """8 threads of updater.executor() each running sections, inside one section."""
    updater = TaskUpdater(expected_sections=1)
    with updater(task_name="fan out"), updater.executor(max_workers=THREADS) as pool:
        names = list(pool.map(lambda i: _work(updater, i), range(THREADS)))
    updater.insert_final_update()
    return names


@shared_task(bind=True, name="adoption.threads_propagate")
def threads_propagate(self: Any) -> dict[str, Any]:
    """8 threads of a plain ThreadPoolExecutor through propagate(fn); each thread also reads
    the task's id and makes its own TaskUpdater(), which joins the task's run."""
    updater = TaskUpdater()

    def work(index: int) -> str:
        own = TaskUpdater()  # joins the run: propagate carried Celery's current task
        with own(task_name=f"own {index}"):
            own.notify("made in a thread")
        _work(updater, index)
        return str(self.request.id)

    with updater(task_name="fan out"), ThreadPoolExecutor(THREADS) as pool:
        ids = list(pool.map(otel_progress.propagate(work), range(THREADS)))
    updater.insert_final_update()
    return {"ids": ids, "task_id": self.request.id}


@shared_task(bind=True, name="adoption.track_rows")
def track_rows(self: Any, count: int, gate: str = "") -> int:
    """otel_progress.track() with no updater in sight: the task's run, a section of its own."""
    done = 0
    for index in otel_progress.track(range(count), description="rows"):
        if gate and index == count // 2:
            wait_gate(gate)
        time.sleep(0.002)
        done += 1
    return done


@shared_task(bind=True, name="adoption.steps")
def steps(self: Any, count: int, gate: str = "") -> int:
    """One section rising step by step, each step waiting on gate ``<gate>-<i>``."""
    updater = TaskUpdater(expected_sections=1)
    with updater(task_name="work"):
        for i in range(count):
            if gate:
                wait_gate(f"{gate}-{i}")
            updater.progress(current=i + 1, total=count)
            updater.notify(f"step {i + 1} of {count}")
    updater.insert_final_update()
    return count
