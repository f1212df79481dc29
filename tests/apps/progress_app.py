"""Celery app for the state-bridge tests: real workers start it with ``-A tests.apps.progress_app``.

Broker/backend from ``OTEL_PROGRESS_TEST_REDIS_URL``; spans to ``OTEL_EXPORTER_OTLP_ENDPOINT`` (a
receiver on 127.0.0.1) through ``configure()``; the bridge through ``ProgressInstrumentor``.
"""

from __future__ import annotations

import os
import time
from typing import Any

from celery import Celery, chain, chord, group, shared_task

from otel_progress import Observer, TaskUpdater, configure
from otel_progress.celery import ProgressInstrumentor
from tests.support.celery_conf import TEST_APP_CONF

REDIS_URL_ENV = "OTEL_PROGRESS_TEST_REDIS_URL"

app = Celery("progress_app")
_url = os.environ.get(REDIS_URL_ENV)
app.conf.update(
    broker_url=_url or "memory://",
    result_backend=_url or "cache+memory://",
    **TEST_APP_CONF,
    task_routes={"progress_app.child": {"queue": "B"}},
)
if os.environ.get("OTEL_PROGRESS_TEST_BACKEND_URL"):  # a dead result backend (fault test)
    app.conf.update(
        result_backend=os.environ["OTEL_PROGRESS_TEST_BACKEND_URL"],
        result_backend_transport_options={"retry_policy": {"max_retries": 1}},
    )

if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
    configure(service_name="progress-app-test", timeout=2)
ProgressInstrumentor().instrument(
    min_interval=float(os.environ.get("OTEL_PROGRESS_TEST_MIN_INTERVAL", "0.5")),
    send_events=os.environ.get("OTEL_PROGRESS_TEST_EVENTS") == "1",
)


@shared_task(bind=True, name="progress_app.seed")
def seed(self: Any, scale: float = 0.01) -> str:
    """The TaskUpdater seed inside a Celery task (3 of 4 jobs, subtask 2 fails)."""
    updater = TaskUpdater(verbose=1)
    with updater(task_name="First part"):
        time.sleep(1 * scale)
        updater.notify("Some notification related to the task")
    with updater(task_name="Second part"):
        for i in (1, 2, 3):
            with updater(task_name=f"My subtask {i}"):
                time.sleep(scale)
                if i == 2:
                    1 / 0  # noqa: B018
                updater.notify("Some notification related to the task")
    updater.insert_final_update()
    return "done"


@shared_task(bind=True, name="progress_app.steps")
def steps(self: Any, count: int, delay: float) -> int:
    """Rising progress over count * delay seconds, for polling mid-task."""
    updater = TaskUpdater()
    with updater(task_name="work"):
        for i in range(count):
            updater.progress(current=i + 1, total=count)
            time.sleep(delay)
    updater.insert_final_update()
    return count


@shared_task(bind=True, name="progress_app.hot_loop")
def hot_loop(self: Any, seconds: float) -> tuple[int, float]:
    """advance() as fast as possible for ``seconds``: (calls, the run's duration in s)."""
    started = time.monotonic()
    updater = TaskUpdater()
    n = 0
    with updater(task_name="loop"):
        # a total the loop never reaches: the percent changes between any two flushes, so every
        # flush slot has something new to write and only the coalescing bounds the writes
        updater.progress(total=100_000_000)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for _ in range(1000):
                updater.advance()
            n += 1000
    return n, time.monotonic() - started


@shared_task(bind=True, name="progress_app.observer_fail")
def observer_fail(self: Any) -> str:
    """mastf's pattern: fail(...) then return the description (Celery says SUCCESS)."""
    observer = Observer(self)
    observer.update("checking", current=50)
    _, meta = observer.fail("Test not passed")
    return str(meta.get("description"))


@shared_task(bind=True, name="progress_app.raises")
def raises(self: Any) -> None:
    """A section succeeds, then the task raises outside any section."""
    updater = TaskUpdater()
    with updater(task_name="ok part"):
        pass
    raise ValueError("task failed")


@shared_task(bind=True, name="progress_app.raises_in_section")
def raises_in_section(self: Any) -> None:
    """The task fails inside a section that does not suppress."""
    updater = TaskUpdater(suppress_exceptions=False)
    with updater(task_name="bad part"):
        raise KeyError("missing")


@shared_task(bind=True, name="progress_app.fanout")
def fanout(self: Any, n: int) -> list[str]:
    """Queue A: fans out n children to queue B from inside a section."""
    updater = TaskUpdater()
    ids = []
    with updater(task_name="fan out"):
        for i in range(n):
            ids.append(child.apply_async((i,)).id)
    updater.insert_final_update()
    return ids


@shared_task(bind=True, name="progress_app.fanout_group")
def fanout_group(self: Any, n: int) -> str:
    """Queue A: starts a group of n children to queue B from inside a section."""
    updater = TaskUpdater()
    with updater(task_name="fan out group"):
        result = group(child.s(i) for i in range(n)).apply_async()
    updater.insert_final_update()
    return str(result.id)


@shared_task(bind=True, name="progress_app.child")
def child(self: Any, i: int) -> int:
    """Queue B: a child with one section."""
    updater = TaskUpdater()
    with updater(task_name="child work"):
        updater.progress(current=1, total=1)
        time.sleep(0.05)
    updater.insert_final_update()
    return i


@shared_task(bind=True, name="progress_app.sleepy")
def sleepy(self: Any, seconds: float) -> str:
    """A section that sleeps: SIGTERM (warm shutdown) lets it finish."""
    updater = TaskUpdater()
    with updater(task_name="sleeping"):
        time.sleep(seconds)
    return "slept"


@shared_task(bind=True, name="progress_app.sections")
def sections(self: Any, count: int) -> int:
    """``count`` empty sections in a row: more spans than one export batch holds."""
    updater = TaskUpdater()
    for i in range(count):
        with updater(task_name=f"part {i}"):
            pass
    return count


@shared_task(bind=True, name="progress_app.retrying", max_retries=1, default_retry_delay=0)
def retrying(self: Any) -> str:
    """Retries once from inside a section (Retry is control flow, not an error)."""
    updater = TaskUpdater()
    with updater(task_name=f"attempt {self.request.retries + 1}"):
        if self.request.retries == 0:
            raise self.retry(countdown=0)
    updater.insert_final_update()
    return "second try"


@shared_task(bind=True, name="progress_app.tagged")
def tagged(self: Any, tag: str) -> str:
    """Sections and notifications named by ``tag``: concurrent runs must not mix them."""
    updater = TaskUpdater()
    for part in ("a", "b"):
        with updater(task_name=f"{tag}-{part}"):
            for i in range(5):
                updater.notify(f"{tag}-{part}-{i}")
                time.sleep(0.02)
    updater.insert_final_update()
    return tag


@shared_task(bind=True, name="progress_app.chained")
def chained(self: Any) -> list[str]:
    """From inside a section: a chain and a chord of children (queue B)."""
    updater = TaskUpdater()
    with updater(task_name="compose"):
        a = chain(child.si(1), child.si(2)).apply_async()
        b = chord([child.si(3), child.si(4)], child.si(5)).apply_async()
    updater.insert_final_update()
    return [str(a.id), str(b.id)]


@app.task(bind=True, name="progress_app.quiet", ignore_result=True)
def quiet(self: Any, count: int) -> int:
    """Sections in a task whose result Celery does not store: otel_progress writes its own."""
    updater = TaskUpdater()
    for i in range(count):
        with updater(task_name=f"quiet {i}"):
            updater.notify(f"quiet {i}")
    return count
