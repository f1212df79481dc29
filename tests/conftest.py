"""Shared fixtures: strict mode on (internal errors raise), an in-memory span capture, and the
real-process fixtures (Redis, Celery workers, OTLP receivers) from tests/support."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

from otel_progress import _publish
from otel_progress.testing import SpanCapture, capture_spans, set_strict

if TYPE_CHECKING:  # imported by pytest_plugins below: an import here would skip its rewrite
    from tests.support.redis_server import RedisServer

pytest_plugins = [
    "tests.support.redis_server",
    "tests.support.celery_worker",
    "tests.support.otlp_receiver",
    "tests.support.web",
    "tests.support.adoption",
    "tests.support.rabbitmq_server",
]


MATRIX_FILES = frozenset({
    "test_task_updater.py", "test_observer.py", "test_instrumentor.py", "test_configure.py",
    "test_celery_bridge.py", "test_plain_worker.py", "test_zero_code.py", "test_hot_path.py",
})
"""Whole files in the supported-versions matrix (``.ci/matrix`` runs ``-m matrix``): the public
API, span shapes, SDK configuration and the worker bridge, which is what differs between the
oldest and newest Celery and OpenTelemetry. Single tests elsewhere carry the mark themselves."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test of the matrix files ``matrix``."""
    for item in items:
        if item.path.name in MATRIX_FILES:
            item.add_marker(pytest.mark.matrix)


@pytest.fixture(autouse=True)
def _strict_mode() -> Iterator[None]:
    """Internal errors raise in tests, so a telemetry bug cannot hide behind the guard."""
    set_strict(True)
    yield
    set_strict(False)


@pytest.fixture(autouse=True)
def _fast_flusher() -> Iterator[None]:
    """Restore the default write interval after tests that change it."""
    yield
    _publish.set_min_interval(_publish.DEFAULT_MIN_INTERVAL)


@pytest.fixture
def spans() -> Iterator[SpanCapture]:
    """Finished spans of the test, in memory."""
    with capture_spans() as capture:
        yield capture


@pytest.fixture
def app(redis_server: RedisServer) -> Any:
    """``tests.apps.progress_app`` as the producer (this process) sees it, on this session's
    Redis: the app most worker tests drive (a file testing another app defines its own)."""
    from tests.apps import progress_app

    progress_app.app.conf.update(broker_url=redis_server.url, result_backend=redis_server.url)
    return progress_app
