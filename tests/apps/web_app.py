"""Celery app for the status-app and widget tests: real workers start it with
``-A tests.apps.web_app``.

Broker/backend from ``OTEL_PROGRESS_TEST_REDIS_URL``. In a worker
(``OTEL_PROGRESS_TEST_WEB_WORKER=1``): an SDK tracer provider with no exporter, so payloads carry
real trace ids without a collector. The test process imports it as the producer: instrumented
(published tasks are tracked ``queued``), no SDK. Celery's ``STARTED`` state is on
(``task_track_started``). Tasks that wait do so on a Redis key the test sets (``open_gate``),
never on a sleep the test has to outlast.
"""

from __future__ import annotations

import os
import time
from typing import Any

import redis
from celery import Celery, shared_task

from otel_progress import TaskUpdater, configure
from otel_progress.celery import ProgressInstrumentor
from tests.support.celery_conf import TEST_APP_CONF

REDIS_URL_ENV = "OTEL_PROGRESS_TEST_REDIS_URL"
GATE_PREFIX = "web-test-gate-"
"""A task waiting on gate ``name`` goes on once the key ``<prefix><name>`` exists."""
GATE_TIMEOUT = 60.0
"""A gate nobody opens lets the task go on after this long (bounded, never a hung worker)."""
HOSTILE = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">'
"""A notification and a section name that must be shown as text, never run."""

app = Celery("web_app")
_url = os.environ.get(REDIS_URL_ENV)
app.conf.update(
    broker_url=_url or "memory://",
    result_backend=_url or "cache+memory://",
    **TEST_APP_CONF,
    task_track_started=True,
)

if os.environ.get("OTEL_PROGRESS_TEST_WEB_WORKER") == "1":
    configure(service_name="web-app-test", traces_exporter="none", metrics=False)
ProgressInstrumentor().instrument(
    min_interval=float(os.environ.get("OTEL_PROGRESS_TEST_MIN_INTERVAL", "0.1")),
)


def wait_gate(name: str) -> None:
    """Block until the test opens gate ``name`` (bounded by GATE_TIMEOUT)."""
    client = redis.Redis.from_url(_url or "redis://127.0.0.1:6379/0")
    deadline = time.monotonic() + GATE_TIMEOUT
    try:
        while time.monotonic() < deadline and not client.exists(GATE_PREFIX + name):
            time.sleep(0.05)
    finally:
        client.close()


def open_gate(client: Any, name: str) -> None:
    """What the test calls (with its own Redis client) to let a waiting task go on."""
    client.set(GATE_PREFIX + name, b"1", ex=300)


@shared_task(bind=True, name="web_app.seed")
def seed(self: Any, scale: float = 0.01) -> str:
    """The TaskUpdater seed (two parts, subtask 2 fails): what docs/widget.png shows."""
    updater = TaskUpdater(verbose=1, expected_sections=2)
    with updater(task_name="First part"):
        time.sleep(1 * scale)
        updater.notify("Some notification related to the task")
    with updater(task_name="Second part"):
        for i in (1, 2, 3):
            with updater(task_name=f"My subtask {i}"):
                time.sleep(scale)
                if i == 2:
                    1 / 0  # noqa: B018 - the seed's failing subtask
                updater.notify("Some notification related to the task")
    updater.insert_final_update()
    return "done"


@shared_task(bind=True, name="web_app.steps")
def steps(self: Any, count: int, gate: str = "") -> int:
    """Two sections; the second rises step by step, each step waiting on gate ``<gate>-<i>``."""
    updater = TaskUpdater(expected_sections=2)
    with updater(task_name="prepare"):
        updater.notify("preparing")
    with updater(task_name="work"):
        for i in range(count):
            if gate:
                wait_gate(f"{gate}-{i}")
            updater.progress(current=i + 1, total=count)
            updater.notify(f"step {i + 1} of {count}")
    updater.insert_final_update()
    return count


@shared_task(bind=True, name="web_app.quick")
def quick(self: Any, count: int = 5, pause: float = 0.1) -> int:
    """One section rising over ``count * pause`` seconds, then success (no gate)."""
    updater = TaskUpdater(expected_sections=1)
    with updater(task_name="quick work"):
        for i in range(count):
            time.sleep(pause)
            updater.progress(current=i + 1, total=count)
    updater.insert_final_update()
    return count


@shared_task(bind=True, name="web_app.hold")
def hold(self: Any, gate: str, with_updater: bool = True) -> str:
    """Waits on ``gate``; with ``with_updater`` from inside a section (PROGRESS), else bare
    (Celery's own STARTED is then all the backend holds)."""
    if not with_updater:
        wait_gate(gate)
        return "held"
    updater = TaskUpdater()
    with updater(task_name="holding"):
        updater.progress(current=1, total=4)
        updater.notify("holding")
        wait_gate(gate)
    updater.insert_final_update()
    return "held"


@shared_task(bind=True, name="web_app.retry_later", max_retries=1)
def retry_later(self: Any, countdown: float) -> str:
    """Retries once with ``countdown`` from inside a section; the second attempt succeeds."""
    updater = TaskUpdater()
    with updater(task_name=f"attempt {self.request.retries + 1}"):
        if self.request.retries == 0:
            raise self.retry(countdown=countdown)
    updater.insert_final_update()
    return "second try"


@shared_task(bind=True, name="web_app.raises")
def raises(self: Any) -> None:
    """A section succeeds, then the task raises: Celery's FAILURE."""
    updater = TaskUpdater()
    with updater(task_name="ok part"):
        pass
    raise ValueError("task failed")


@shared_task(bind=True, name="web_app.hostile")
def hostile(self: Any, gate: str) -> str:
    """Untrusted text everywhere the widget shows text: section name, notification, error."""
    updater = TaskUpdater(expected_sections=2)
    with updater(task_name=HOSTILE):
        updater.notify(HOSTILE)
        wait_gate(gate)
    with updater(task_name="fails"):
        raise RuntimeError(HOSTILE)
    updater.insert_final_update()
    return "done"


@shared_task(bind=True, name="web_app.custom_state")
def custom_state(self: Any, gate: str) -> str:
    """Sets a state of its own (``CRUNCHING``) and waits: no updater, Celery's meta only."""
    self.update_state(state="CRUNCHING", meta={"step": 1})
    wait_gate(gate)
    return "crunched"
