"""The Celery app the demo's worker runs: the two seeds as Celery tasks, plus a fan-out.

``otel-progress demo`` starts ``celery -A otel_progress._demo_app worker``; broker, result
backend and the OTLP endpoint come from the environment the demo sets. The seed code is the
seeds' own (task-updater.txt's ``new_format_task_1`` and mastf's ``my_shared_task``), with the
sleeps scaled by ``OTEL_PROGRESS_DEMO_SCALE`` so the demo finishes in seconds.
"""

from __future__ import annotations

import os
import time
import uuid
from typing import Any

from celery import Celery, group, shared_task

from otel_progress import Observer, TaskUpdater, configure
from otel_progress.celery import ProgressInstrumentor

BROKER_ENV = "OTEL_PROGRESS_DEMO_BROKER"
BACKEND_ENV = "OTEL_PROGRESS_DEMO_BACKEND"
DATA_ENV = "OTEL_PROGRESS_DEMO_DATA"
SCALE_ENV = "OTEL_PROGRESS_DEMO_SCALE"

app = Celery("otel_progress_demo")


def configure_app(celery_app: Celery, broker: str | None, backend: str | None,
                  data_dir: str | None) -> None:
    """Point ``celery_app`` at the demo's broker and backend (filesystem ones by default)."""
    conf: dict[str, Any] = {
        "broker_url": broker or "filesystem://",
        "result_backend": backend or f"file://{data_dir}/results",
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "broker_connection_retry_on_startup": True,
        "worker_prefetch_multiplier": 1,
        "worker_hijack_root_logger": False,
    }
    if not broker and data_dir:
        conf["broker_transport_options"] = {
            "data_folder_in": f"{data_dir}/broker", "data_folder_out": f"{data_dir}/broker",
            "processed_folder": f"{data_dir}/processed", "store_processed": False,
            "control_folder": f"{data_dir}/control",
            "polling_interval": 0.1,
        }
    celery_app.conf.update(conf)


def client(broker: str | None, backend: str | None, data_dir: str) -> Celery:
    """The demo process's own app (current, so publish-side tracking writes through it)."""
    app = Celery("otel_progress_demo_client")
    configure_app(app, broker, backend, data_dir)
    app.set_current()
    return app


if os.environ.get(DATA_ENV) or os.environ.get(BROKER_ENV):  # the demo's worker process
    configure_app(app, os.environ.get(BROKER_ENV), os.environ.get(BACKEND_ENV),
                  os.environ.get(DATA_ENV))
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        configure(service_name=os.environ.get("OTEL_SERVICE_NAME", "otel-progress-demo"),
                  timeout=2)
    ProgressInstrumentor().instrument(min_interval=0.2)
_scale = float(os.environ.get(SCALE_ENV, "0.1"))


def _sleep(seconds: float) -> None:
    time.sleep(seconds * _scale)


# --- the TaskUpdater seed (task-updater.txt), as written there -------------------------------
def new_format_task_1(uuid: Any = uuid.uuid4(), name: str = "TEST", verbose: int = 1) -> None:  # noqa: B008
    updater = TaskUpdater(task_uuid=uuid, task_name=name, verbose=verbose)

    with updater(task_name=name + " - First part"):
        # here some code
        _sleep(1)
        updater.notify("Some notification related to the task")

    with updater(task_name=name + " - Second part"):
        ##  here we call another method and we make sure we pass the updater
        my_task_2(updater=updater)

    updater.raise_latest_exception()  # in case of...or insert_final_update


def my_task_2(updater: Any = None) -> None:
    with updater(task_name="My subtask 1 in my task 2"):
        # here some code
        _sleep(1)
        updater.notify("Some notification related to the task")

    with updater(task_name="My subtask 2 in my task 2"):
        _sleep(10)
        1 / 0  # noqa: B018 - raise exception
        updater.notify("Some notification related to the task")

    with updater(task_name="My subtask 3 in my task 2"):
        # here some code
        _sleep(1)
        updater.notify("Some notification related to the task")


@shared_task(bind=True, name="demo.new_format_task_1")
def seed_task_updater(self: Any) -> None:
    """The seed's ``new_format_task_1`` inside a Celery task (its uuid and name are the task's)."""
    new_format_task_1(uuid=self.request.id, name="TEST")


# --- the Observer seed (mastf-progress-observer.rst), as written there ------------------------
@shared_task(bind=True, name="demo.my_shared_task")
def my_shared_task(self: Any, *args: Any) -> Any:
    observer = Observer(self)

    # set the current completion percentage
    observer.pos = 34
    # otherwise specify it directly
    observer.update("Some information...", current=34)
    _sleep(5)

    # Let the observer increment the position itself
    observer.update("Further information...", increment=True, step=5)
    _sleep(5)

    if not (args[0] if args else True):
        # Fail should be called on the end of a non-successful task
        _, meta = observer.fail("Test not passed")
        # always return a result as it will be used within the frontend
        return meta.get("description")

    try:
        _sleep(5)
    except Exception as err:
        _, meta = observer.exception(err, "An error occurred!")
        return meta.get("description")

    # You can also return the updated metadata directly
    status, meta = observer.success("Finished task!")  # noqa: RUF059 - the seed's line
    return meta


# --- a fan-out: children's progress on the parent, one trace ----------------------------------
@shared_task(bind=True, name="demo.fan_out")
def fan_out(self: Any, n: int = 4) -> str:
    """Starts ``n`` children with ``group()`` inside a section and waits for them in another."""
    updater = TaskUpdater(expected_sections=2)
    with updater(task_name="start children"):
        result: Any = group(child.s(i) for i in range(n)).apply_async()
    with updater(task_name="wait for children"):
        deadline = time.monotonic() + 60
        while not result.ready() and time.monotonic() < deadline:
            updater.progress(current=result.completed_count(), total=n)
            time.sleep(0.1)
        updater.progress(current=result.completed_count(), total=n)
    updater.insert_final_update()
    return str(result.id)


@shared_task(bind=True, name="demo.child")
def child(self: Any, i: int) -> int:
    """One child: a section that reports its progress in steps."""
    updater = TaskUpdater()
    with updater(task_name=f"child {i}"):
        for step in range(5):
            updater.progress(current=step + 1, total=5)
            _sleep(1)
    updater.insert_final_update()
    return i
