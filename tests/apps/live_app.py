"""Celery app for the live-placeholder and cancel tests: ``-A tests.apps.live_app``.

Broker/backend from ``OTEL_PROGRESS_TEST_REDIS_URL``; tasks on the queue ``live``. In a worker
(``OTEL_EXPORTER_OTLP_ENDPOINT`` set) ``configure()`` exports to a receiver on 127.0.0.1 and
reads ``OTEL_PROGRESS_LIVE`` / ``OTEL_PROGRESS_LIVE_INTERVAL`` itself. Tasks that wait do so on
a Redis key the test sets (``tests.apps.web_app.open_gate``), bounded, never on a sleep. The tasks
are bound to this app (not shared): a test that made another app current cannot send them to
another queue.
"""

from __future__ import annotations

import os
import time
from typing import Any

from celery import Celery

from otel_progress import TaskCancelled, TaskUpdater, configure
from otel_progress.celery import ProgressInstrumentor
from tests.apps.web_app import wait_gate
from tests.support.celery_conf import TEST_APP_CONF

REDIS_URL_ENV = "OTEL_PROGRESS_TEST_REDIS_URL"
QUEUE = "live"

app = Celery("live_app")
_url = os.environ.get(REDIS_URL_ENV)
app.conf.update(
    broker_url=_url or "memory://",
    result_backend=_url or "cache+memory://",
    **TEST_APP_CONF,
    task_default_queue=QUEUE,
    task_track_started=True,
)

if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
    configure(service_name="live-app-test", timeout=2, metrics=False)
elif os.environ.get("OTEL_PROGRESS_TEST_WORKER") == "1":
    configure(service_name="live-app-test", traces_exporter="none", metrics=False)
ProgressInstrumentor().instrument(
    min_interval=float(os.environ.get("OTEL_PROGRESS_TEST_MIN_INTERVAL", "0.1")),
)


@app.task(bind=True, name="live_app.nested")
def nested(self: Any, gate: str) -> str:
    """``outer`` > ``inner`` (progress 1 of 4), waiting on ``gate`` inside both, then ``after``."""
    updater = TaskUpdater(expected_sections=2)
    with updater(task_name="outer"), updater(task_name="inner"):
        updater.progress(current=1, total=4)
        updater.notify("waiting")
        wait_gate(gate)
    with updater(task_name="after"):
        pass
    updater.insert_final_update()
    return "done"


@app.task(bind=True, name="live_app.stepwise")
def stepwise(self: Any, steps: int = 200, pause: float = 0.05) -> str:
    """One section per step (``step 0``, ``step 1``, ...), each ``pause`` long: it never checks
    for a cancel itself, so a cancel stops it at the next section boundary."""
    updater = TaskUpdater(expected_sections=steps)
    for i in range(steps):
        with updater(task_name=f"step {i}"):
            time.sleep(pause)
    updater.insert_final_update()
    return "all steps"


@app.task(bind=True, name="live_app.polling")
def polling(self: Any, gate: str) -> str:
    """One long section that asks ``updater.cancelled`` between items (no exception) and
    reports how it stopped; waits on ``gate`` inside the section before the loop."""
    updater = TaskUpdater()
    stopped_at = -1
    with updater(task_name="items"):
        wait_gate(gate)
        for i in range(2000):
            if updater.cancelled:
                stopped_at = i
                break
            updater.progress(current=i + 1, total=2000)
            time.sleep(0.01)
    updater.insert_final_update()
    return f"stopped at {stopped_at}"


@app.task(bind=True, name="live_app.explicit")
def explicit(self: Any) -> str:
    """Calls ``raise_if_cancelled()`` in a loop; catches nothing (TaskCancelled ends it)."""
    updater = TaskUpdater()
    with updater(task_name="loop"):
        for _ in range(2000):
            updater.raise_if_cancelled()
            time.sleep(0.01)
    updater.insert_final_update()
    return "never cancelled"


@app.task(bind=True, name="live_app.catches")
def catches(self: Any) -> str:
    """Catches ``TaskCancelled`` itself: the run still reads revoked."""
    updater = TaskUpdater()
    try:
        with updater(task_name="loop"):
            for _ in range(2000):
                updater.notify("tick")
                time.sleep(0.01)
    except TaskCancelled:
        return "caught"
    return "finished"
