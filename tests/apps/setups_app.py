"""The Celery app of the common-setups tests (``tests/test_setups.py``), configured from the env.

``OTEL_PROGRESS_SETUP_BROKER`` and ``OTEL_PROGRESS_SETUP_BACKEND`` are the broker and result
backend URLs (``django-db`` sets up Django with ``tests.apps.setups_django_settings`` for
django-celery-results); ``OTEL_PROGRESS_SETUP_POOL=gevent`` initialises grpc's gevent support
before anything exports, as a gevent worker must; ``OTEL_PROGRESS_SETUP_EAGER=1`` runs tasks
in the caller (``task_always_eager``). The same module is the worker's ``-A`` app and the
producer's (``tests.apps.setups_drive``).
"""

from __future__ import annotations

import os
import time
from typing import Any

if os.environ.get("OTEL_PROGRESS_SETUP_POOL") == "gevent":
    # Celery's gevent pool has monkey-patched the process before the app is imported; grpc's C
    # core must be told to cooperate with gevent before the first channel exists.
    import grpc.experimental.gevent

    grpc.experimental.gevent.init_gevent()

BACKEND = os.environ.get("OTEL_PROGRESS_SETUP_BACKEND", "cache+memory://")
if BACKEND == "django-db":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.apps.setups_django_settings")
    import django

    django.setup()

from celery import Celery, shared_task  # noqa: E402  (after grpc's gevent init and Django)

from otel_progress import TaskUpdater, configure  # noqa: E402
from otel_progress.celery import ProgressInstrumentor  # noqa: E402
from tests.support.celery_conf import TEST_APP_CONF  # noqa: E402

app = Celery("setups_app")
app.conf.update(
    broker_url=os.environ.get("OTEL_PROGRESS_SETUP_BROKER", "memory://"),
    result_backend=BACKEND,
    **TEST_APP_CONF,
    task_default_queue=os.environ.get("OTEL_PROGRESS_SETUP_QUEUE", "celery"),
    task_always_eager=os.environ.get("OTEL_PROGRESS_SETUP_EAGER") == "1",
    task_store_eager_result=True,  # what Celery asks before results are read in eager mode
    result_extended=True,
)
if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
    configure(service_name="setups-app-test", timeout=2)
ProgressInstrumentor().instrument(min_interval=0.2)


def migrate_django() -> None:
    """Create django-celery-results' tables in the SQLite file (once, before the worker)."""
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


@shared_task(bind=True, name="setups.steps")
def steps(self: Any, count: int, delay: float) -> int:
    """Two sections, the second with rising progress over ``count * delay`` seconds."""
    updater = TaskUpdater(expected_sections=2)
    with updater(task_name="prepare"):
        updater.notify("prepared")
    with updater(task_name="work"):
        for i in range(count):
            updater.progress(current=i + 1, total=count)
            time.sleep(delay)
    updater.insert_final_update()
    return count
