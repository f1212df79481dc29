"""Minimal Celery app for the harness tests; workers start it with ``-A tests.apps.harness_app``.

Broker and result backend come from ``OTEL_PROGRESS_TEST_REDIS_URL`` so each test session's
private redis-server is used. Without it the app falls back to in-memory transports, so an
import never reaches for a real Redis by accident (the test process overrides the URLs).
"""

from __future__ import annotations

import os
import time
from typing import Any

from celery import Celery, Task

from tests.support.celery_conf import TEST_APP_CONF

REDIS_URL_ENV = "OTEL_PROGRESS_TEST_REDIS_URL"


def configure(celery_app: Celery, redis_url: str | None) -> None:
    """Point broker and backend at ``redis_url``; call before the app's first broker use."""
    celery_app.conf.update(
        broker_url=redis_url or "memory://",
        result_backend=redis_url or "cache+memory://",
        task_track_started=True,
        **TEST_APP_CONF,
    )


app = Celery("harness_app")
configure(app, os.environ.get(REDIS_URL_ENV))


@app.task
def add(x: int, y: int) -> int:
    """Smallest round trip through broker, worker and backend."""
    return x + y


@app.task
def sleep_then(seconds: float, value: Any) -> Any:
    """Keeps a worker busy, for shutdown and timing tests."""
    time.sleep(seconds)
    return value


@app.task(bind=True)
def whoami(self: Task) -> str:  # type: ignore[type-arg]
    """Names the worker node that ran it, to check queue routing."""
    return str(self.request.hostname)
