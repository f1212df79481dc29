"""A Celery app without ProgressInstrumentor: spans exported by configure(); with
``OTEL_PROGRESS_TEST_INSTALL=1`` it calls ``otel_progress.celery.install()`` (the bridge without
OpenTelemetry's Celery instrumentation)."""

from __future__ import annotations

import os
from typing import Any

from celery import Celery, shared_task

from otel_progress import TaskUpdater, configure

app = Celery("plain_app")
_url = os.environ.get("OTEL_PROGRESS_TEST_REDIS_URL")
app.conf.update(broker_url=_url or "memory://", result_backend=_url or "cache+memory://",
                broker_connection_retry_on_startup=True)
if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
    configure(service_name="plain-app-test", timeout=2)
if os.environ.get("OTEL_PROGRESS_TEST_INSTALL") == "1":
    from otel_progress.celery import install

    install()


@shared_task(bind=True, name="plain_app.job")
def job(self: Any) -> str:
    """One section (the final payload is written only where the bridge is installed)."""
    updater = TaskUpdater()
    with updater(task_name="only part"):
        updater.progress(current=1, total=1)
    return "plain"
