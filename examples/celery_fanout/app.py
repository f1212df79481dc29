"""Celery app of the fan-out example: ``scan`` (queue A) fans out ``scan_file`` (queue B)."""

from __future__ import annotations

import os
import time
from typing import Any

from celery import Celery, shared_task

from otel_progress import TaskUpdater, configure
from otel_progress.celery import ProgressInstrumentor

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")

app = Celery("fanout_example", broker=REDIS_URL, backend=REDIS_URL)
app.conf.update(
    task_routes={"fanout.scan": {"queue": "A"}, "fanout.scan_file": {"queue": "B"}},
    broker_connection_retry_on_startup=True,
    worker_prefetch_multiplier=1,
)
if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
    configure(service_name=os.environ.get("OTEL_SERVICE_NAME", "fanout-example"))
ProgressInstrumentor().instrument(min_interval=0.2)


@shared_task(bind=True, name="fanout.scan")
def scan(self: Any, files: list[str]) -> list[str]:
    """One section per phase; the fan-out section starts one subtask per file on queue B."""
    updater = TaskUpdater(expected_sections=2)
    with updater(task_name="list files"):
        updater.notify(f"{len(files)} files to scan")
    with updater(task_name="fan out"):
        ids = [scan_file.delay(name).id for name in files]
    updater.insert_final_update()
    return ids


@shared_task(bind=True, name="fanout.scan_file")
def scan_file(self: Any, name: str) -> str:
    """A subtask on another worker: its progress rolls up into the parent's payload."""
    updater = TaskUpdater()
    with updater(task_name="scan file"):
        for step in range(5):
            updater.progress(current=step + 1, total=5)
            time.sleep(0.1)
        updater.notify(f"{name}: clean")
    updater.insert_final_update()
    return name
