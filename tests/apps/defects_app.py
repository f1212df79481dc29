"""The Celery app of the issue-15 regression tests: workers run ``-A tests.apps.defects_app``.

Broker/backend from ``OTEL_PROGRESS_TEST_REDIS_URL`` (like ``progress_app``);
``OTEL_PROGRESS_TEST_BACKEND_URL`` replaces the result backend of the worker (a hung socket
server, ``rpc://``) with ``redis_socket_timeout=2``; spans go to ``OTEL_EXPORTER_OTLP_ENDPOINT``
through ``configure()`` when it is set. Task names start with ``defects.``.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from celery import Celery, chord

from otel_progress import Observer, TaskUpdater, configure
from otel_progress.celery import ProgressInstrumentor
from tests.support.celery_conf import TEST_APP_CONF

REDIS_URL_ENV = "OTEL_PROGRESS_TEST_REDIS_URL"
BACKEND_URL_ENV = "OTEL_PROGRESS_TEST_BACKEND_URL"
QUEUE = "defects"
"""The queue every task of this app goes to: no worker of another test module consumes it."""

logger = logging.getLogger("defects_app")

# Not the current app, and tasks bound to it (no ``shared_task`` proxies): importing this module in
# the test process must not change where other test apps' shared tasks are sent. The tests make
# it current while they publish (otel_progress records a published task in current_app's
# backend).
app = Celery("defects_app", set_as_current=False)
_url = os.environ.get(REDIS_URL_ENV)
app.conf.update(
    broker_url=_url or "memory://",
    result_backend=_url or "cache+memory://",
    **TEST_APP_CONF,
    task_default_queue=QUEUE,
)
if os.environ.get(BACKEND_URL_ENV):  # the worker's own backend: a hung server, or rpc://
    app.conf.update(result_backend=os.environ[BACKEND_URL_ENV], redis_socket_timeout=2,
                    redis_socket_connect_timeout=2)

if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
    configure(service_name="defects-app-test", timeout=2)
ProgressInstrumentor().instrument(
    min_interval=float(os.environ.get("OTEL_PROGRESS_TEST_MIN_INTERVAL", "0.5")),
)


def _say_pid(updater: TaskUpdater) -> None:
    """Put this pool child's pid in the payload's description, so a test can kill it."""
    updater.notify(f"pid={os.getpid()}")


@app.task(bind=True, name="defects.hold")
def hold(self: Any, percent: int, seconds: float) -> str:
    """One section that reaches ``percent`` % at once, then holds there for ``seconds``."""
    updater = TaskUpdater()
    with updater(task_name="work"):
        updater.progress(current=percent, total=100)
        _say_pid(updater)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            time.sleep(0.05)
    updater.insert_final_update()
    return "held"


@app.task(bind=True, name="defects.cleanup_in_finally")
def cleanup_in_finally(self: Any, seconds: float, cleanup_seconds: float = 1.0) -> str:
    """A section killed mid-way whose ``finally`` runs another section doing cleanup with
    progress steps: the child keeps reporting while it unwinds."""
    updater = TaskUpdater()
    with updater(task_name="work"):
        try:
            steps = max(int(seconds / 0.05), 1)
            for i in range(steps):
                updater.progress(current=i + 1, total=steps * 5)
                time.sleep(0.05)
        finally:
            with updater(task_name="cleanup"):
                steps = max(int(cleanup_seconds / 0.05), 1)
                for i in range(steps):
                    updater.progress(current=i + 1, total=steps)
                    time.sleep(0.05)
    updater.insert_final_update()
    return "cleaned"


@app.task(bind=True, name="defects.raises_early")
def raises_early(self: Any) -> None:
    """Raises before any TaskUpdater or Observer exists."""
    raise ValueError("raised before any updater")


@app.task(bind=True, name="defects.bad_section_name")
def bad_section_name(self: Any) -> str:
    """A section named by an undecodable file name: ``os.fsdecode(b"\\xffbad")`` is
    ``"\\udcffbad"`` (a lone surrogate), what ``os.listdir`` returns for such names."""
    updater = TaskUpdater()
    with updater(task_name=os.fsdecode(b"\xffbad")):
        updater.notify("looked at a file with an undecodable name")
        time.sleep(0.2)
    updater.insert_final_update()
    return "bad"


@app.task(bind=True, name="defects.healthy")
def healthy(self: Any, tag: str, sections: int = 4) -> str:
    """``sections`` sections named ``<tag>-<i>``, each with one notification."""
    updater = TaskUpdater()
    for i in range(sections):
        with updater(task_name=f"{tag}-{i}"):
            updater.notify(f"{tag}-{i} done")
            time.sleep(0.05)
    updater.insert_final_update()
    return tag


@app.task(bind=True, name="defects.slow_body", ignore_result=True)
def slow_body(self: Any, seconds: float) -> None:
    """Reports progress for ``seconds``; logs how long the body took (``body took <s> s``).

    ``ignore_result=True``: Celery itself never touches the result backend for this task, so
    the time between the body's end and Celery's "succeeded in" is otel_progress's alone.
    """
    started = time.monotonic()
    updater = TaskUpdater()
    with updater(task_name="work"):
        steps = max(int(seconds / 0.1), 1)
        for i in range(steps):
            updater.progress(current=i + 1, total=steps)
            time.sleep(0.1)
    updater.insert_final_update()
    logger.warning("body took %.3f s", time.monotonic() - started)


@app.task(bind=True, name="defects.steps")
def steps(self: Any, count: int, delay: float) -> int:
    """Rising progress in one section over ``count * delay`` seconds."""
    updater = TaskUpdater()
    with updater(task_name="work"):
        for i in range(count):
            updater.progress(current=i + 1, total=count)
            time.sleep(delay)
    updater.insert_final_update()
    return count


@app.task(bind=True, name="defects.retry_half", max_retries=1)
def retry_half(self: Any, countdown: float) -> str:
    """Attempt 1 reaches 50 % in its section and retries after ``countdown``; attempt 2 ends."""
    updater = TaskUpdater()
    with updater(task_name="attempt"):
        updater.progress(current=1, total=2)
        if self.request.retries == 0:
            raise self.retry(countdown=countdown)
        updater.progress(current=2, total=2)
    updater.insert_final_update()
    return "second try"


@app.task(bind=True, name="defects.huge_integers")
def huge_integers(self: Any) -> str:
    """Huge integers through every counter, each in its own section."""
    updater = TaskUpdater()
    with updater(task_name="advance"):
        updater.progress(current=0.5, total=10)
        updater.advance(10**400)
    with updater(task_name="progress"):
        updater.progress(current=10**400, total=10)
    with updater(task_name="observer"):
        observer = Observer(self)
        observer.pos = 10**400
        observer.increment(10**400)
        observer.update("huge step", step=10**400)
    updater.insert_final_update()
    return "huge"


@app.task(bind=True, name="defects.noop")
def noop(self: Any, i: int) -> int:
    """A child that does nothing (no updater: Celery's own state is all it has)."""
    return i


@app.task(bind=True, name="defects.collect")
def collect(self: Any, values: list[int]) -> int:
    """A chord callback."""
    return len(values)


@app.task(bind=True, name="defects.fan_out")
def fan_out(self: Any, n: int) -> list[str]:
    """Publishes ``n`` children from inside a section."""
    updater = TaskUpdater()
    ids = []
    with updater(task_name="fan out"):
        for i in range(n):
            ids.append(noop.apply_async((i,)).id)
    updater.insert_final_update()
    return ids


@app.task(bind=True, name="defects.fan_out_chord")
def fan_out_chord(self: Any) -> list[str]:
    """Publishes a chord (two header tasks, one callback) from inside a section; returns
    ``[header ids..., callback id]``."""
    updater = TaskUpdater()
    with updater(task_name="fan out chord"):
        result = chord([noop.si(1), noop.si(2)], collect.s()).apply_async()
    updater.insert_final_update()
    return [*(str(r.id) for r in result.parent.results), str(result.id)]
