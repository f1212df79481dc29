"""The Celery side of the three web examples: one app, the seed task, a slower import task.

Broker and result backend come from ``REDIS_URL`` (the examples' runner starts a redis-server on
a free 127.0.0.1 port and sets it): progress has to cross from the worker process to the web
process, which Celery's in-memory transport cannot do.
"""

from __future__ import annotations

import os
import time
from typing import Any

from celery import Celery, shared_task

from otel_progress import TaskUpdater, configure
from otel_progress.celery import ProgressInstrumentor

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")

app = Celery("web_example", broker=REDIS_URL, backend=REDIS_URL)
app.conf.update(broker_connection_retry_on_startup=True, worker_prefetch_multiplier=1)
if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):  # spans to Jaeger/Tempo, and trace links
    configure(service_name=os.environ.get("OTEL_SERVICE_NAME", "web-example"))
ProgressInstrumentor().instrument(min_interval=0.2)


@shared_task(bind=True, name="web_example.seed")
def seed(self: Any, scale: float = 0.2) -> str:
    """The TaskUpdater seed: two parts, the second with three subtasks, subtask 2 fails."""
    updater = TaskUpdater(expected_sections=2)
    with updater(task_name="First part"):
        time.sleep(1 * scale)
        updater.notify("Some notification related to the task")
    with updater(task_name="Second part"):
        for i in (1, 2, 3):
            with updater(task_name=f"My subtask {i}"):
                time.sleep(2 * scale)
                if i == 2:
                    1 / 0  # noqa: B018 - the seed's failing subtask
                updater.notify(f"subtask {i} done")
    updater.insert_final_update()
    return "done"
