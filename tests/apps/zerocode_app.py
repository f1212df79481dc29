"""A Celery app with no OpenTelemetry code at all: ``opentelemetry-instrument`` does everything.

It uses TaskUpdater only; spans must reach the OTLP endpoint named by ``OTEL_*`` variables
through the ``opentelemetry_instrumentor`` entry point of otel_progress.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery, shared_task

from otel_progress import TaskUpdater

app = Celery("zerocode_app")
_url = os.environ.get("OTEL_PROGRESS_TEST_REDIS_URL")
app.conf.update(broker_url=_url or "memory://", result_backend=_url or "cache+memory://",
                broker_connection_retry_on_startup=True)


@shared_task(bind=True, name="zerocode_app.job")
def job(self: Any) -> str:
    """Two sections and a notification."""
    updater = TaskUpdater()
    with updater(task_name="prepare"):
        updater.notify("ready")
    with updater(task_name="work"):
        updater.progress(current=1, total=2)
    updater.insert_final_update()
    return "zero"
