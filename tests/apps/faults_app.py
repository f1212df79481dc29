"""Celery app for the recovery tests: ``-A tests.apps.faults_app``, tasks on the queue ``faults``.

The broker is ``OTEL_PROGRESS_TEST_REDIS_URL`` (the session's Redis, which stays up); the result
backend is ``OTEL_PROGRESS_TEST_BACKEND_URL``, a Redis of the test's own that it kills and
restarts. Tasks wait on gates in the broker's Redis (``tests.apps.web_app.wait_gate``).
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery

from otel_progress import TaskUpdater, configure
from otel_progress.celery import ProgressInstrumentor
from tests.apps.web_app import wait_gate
from tests.support.celery_conf import TEST_APP_CONF

QUEUE = "faults"

app = Celery("faults_app", set_as_current=False)
_broker = os.environ.get("OTEL_PROGRESS_TEST_REDIS_URL")
app.conf.update(
    broker_url=_broker or "memory://",
    result_backend=os.environ.get("OTEL_PROGRESS_TEST_BACKEND_URL") or _broker
    or "cache+memory://",
    **TEST_APP_CONF,
    task_default_queue=QUEUE,
    result_backend_always_retry=True,  # Celery's own result store rides out a Redis restart
    result_backend_max_retries=60,
)

if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):  # a worker: spans to the test's receiver
    configure(service_name="faults-app-test", timeout=2)
ProgressInstrumentor().instrument(history=False)  # the backend's own faults, nothing else


@app.task(bind=True, name="faults.gated")
def gated(self: Any, tag: str, gates: list[str]) -> str:
    """One section per gate, each waiting for its gate (the test does something in between)."""
    updater = TaskUpdater(expected_sections=len(gates) or None)
    for i, gate in enumerate(gates):
        with updater(task_name=f"{tag}-{i}"):
            updater.progress(current=i + 1, total=len(gates))
            updater.notify(f"{tag} waits at {i}")
            wait_gate(gate)
    return tag
