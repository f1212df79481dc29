"""The Celery app of the reliability and security tests (issue 11), run as
``-A tests.apps.reliability_app``.

Broker/backend from ``OTEL_PROGRESS_TEST_REDIS_URL``; spans to ``OTEL_EXPORTER_OTLP_ENDPOINT``
through ``configure()`` when set (the default redaction on). ``OTEL_PROGRESS_TEST_GEVENT=1``
initialises grpc's gevent support first (``--pool gevent``). Every task goes to the
``reliability`` queue; names start with ``reliability.``.
"""

from __future__ import annotations

import os
import time
from typing import Any

if os.environ.get("OTEL_PROGRESS_TEST_GEVENT") == "1":
    import grpc.experimental.gevent

    grpc.experimental.gevent.init_gevent()  # before any channel: gRPC under gevent's hub

from celery import Celery

from otel_progress import Observer, TaskUpdater, configure
from otel_progress.celery import ProgressInstrumentor
from tests.support.celery_conf import TEST_APP_CONF

QUEUE = "reliability"
SECRET = "hunter2-Zq9"
"""Planted after ``password=`` (and the like) in every place text leaves a task."""

app = Celery("reliability_app", set_as_current=False)
_url = os.environ.get("OTEL_PROGRESS_TEST_REDIS_URL")
app.conf.update(
    broker_url=_url or "memory://",
    result_backend=_url or "cache+memory://",
    **TEST_APP_CONF,
    task_default_queue=QUEUE,
)
if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
    configure(service_name="reliability-app-test", timeout=2)
ProgressInstrumentor().instrument(
    min_interval=float(os.environ.get("OTEL_PROGRESS_TEST_MIN_INTERVAL", "0.2")),
)


@app.task(bind=True, name="reliability.secrets")
def secrets(self: Any, secret: str) -> str:
    """A secret in a message, a section name, attribute values, an exception message, its stack
    trace (the message is in it) and the seed log (every message is)."""
    updater = TaskUpdater()
    with updater(task_name=f"connect password={secret}"):
        updater.notify(f"login with password={secret}", password=secret,
                       url=f"redis://:{secret}@127.0.0.1:6379/0", note=f"token={secret}")
    with updater(task_name="fail"):
        raise RuntimeError(f"cannot reach redis://user:{secret}@db:6379 (api_key={secret})")
    observer = Observer(self)
    observer.update(f"Authorization: Bearer {secret}", meta={"api_key": secret,
                                                             "detail": f"secret={secret}"})
    updater.insert_final_update()
    return "done"


@app.task(bind=True, name="reliability.raises_secret")
def raises_secret(self: Any, secret: str) -> None:
    """Raises out of the task: Celery's instrumentation records it on ``run/<task>`` and Celery
    stores its message in the FAILURE meta."""
    updater = TaskUpdater()
    with updater(task_name="work"):
        updater.progress(current=1, total=2)
    raise ValueError(f"password={secret}")


@app.task(bind=True, name="reliability.doomed")
def doomed(self: Any, seconds: float) -> str:
    """Two nested sections held open for ``seconds``; the description says the child's pid."""
    updater = TaskUpdater()
    with updater(task_name="doomed"):
        updater.progress(current=1, total=4)
        with updater(task_name="inner"):
            updater.progress(current=1, total=2)
            updater.notify(f"pid={os.getpid()}")
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                time.sleep(0.05)
    updater.insert_final_update()
    return "survived"


@app.task(bind=True, name="reliability.soft_limited")
def soft_limited(self: Any, seconds: float) -> str:
    """A section that outlives its soft time limit (SoftTimeLimitExceeded raised in it)."""
    updater = TaskUpdater()
    with updater(task_name="slow"):
        updater.progress(current=1, total=4)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            time.sleep(0.05)
    updater.insert_final_update()
    return "in time"


@app.task(bind=True, name="reliability.redelivered", acks_late=True,
          reject_on_worker_lost=True)
def redelivered(self: Any, seconds: float, marker: str) -> str:
    """acks_late: the first delivery holds ``seconds`` (to be killed), a redelivery ends at once."""
    import redis

    client = redis.Redis.from_url(_url or "redis://127.0.0.1:6379/0")
    first = bool(client.set(f"reliability-delivered-{marker}", "1", nx=True, ex=300))
    client.close()
    updater = TaskUpdater()
    with updater(task_name="attempt"):
        updater.notify(f"pid={os.getpid()}")
        updater.progress(current=1, total=2)
        if first:
            time.sleep(seconds)
        updater.progress(current=2, total=2)
    updater.insert_final_update()
    return "redelivered" if not first else "first"


@app.task(bind=True, name="reliability.tagged")
def tagged(self: Any, tag: str, sections: int = 3, notes: int = 3) -> str:
    """Sections and notifications named by ``tag``, sleeping between them (tasks overlap)."""
    updater = TaskUpdater()
    for i in range(sections):
        with updater(task_name=f"{tag}-s{i}"):
            for j in range(notes):
                updater.notify(f"{tag}-s{i}-n{j}")
                time.sleep(0.01)
    updater.insert_final_update()
    return tag
