"""Fixtures of the adoption tests: a worker of tests.apps.adoption_app (exporting to a real OTLP
receiver on loopback), a producer app that sends its tasks by name, gates, headless chromium.

The test process never imports tests.apps.adoption_app (it would instrument this process): the
producer is a fresh Celery app on the session's Redis that sends ``adoption.*`` by name.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery

from tests.support.celery_worker import CeleryWorker, internal_errors
from tests.support.otlp_receiver import OtlpGrpcReceiver
from tests.support.redis_server import RedisServer

ADOPTION_APP = "tests.apps.adoption_app"
GATE_PREFIX = "adoption-gate-"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


class AdoptionProducer:
    """Sends adoption_app's tasks by name on an app of its own (no cached backend of another
    test's app); ``result(id)`` is an AsyncResult bound to it."""

    def __init__(self, redis_url: str) -> None:
        self.app = Celery("adoption_client", broker=redis_url, backend=redis_url,
                          set_as_current=False)
        self.app.conf.update(task_serializer="json", result_serializer="json",
                             accept_content=["json"], result_accept_content=["json"])

    def send(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """``adoption.<name>`` with these arguments; its AsyncResult."""
        return self.app.send_task(f"adoption.{name}", args=args, kwargs=kwargs)

    def signature(self, name: str, *args: Any) -> Any:
        """A signature of ``adoption.<name>`` (for a group)."""
        return self.app.signature(f"adoption.{name}", args=args)


@pytest.fixture(scope="module")
def adoption_receiver() -> Iterator[OtlpGrpcReceiver]:
    """The module's OTLP/gRPC receiver on 127.0.0.1 (the worker exports its spans there)."""
    with OtlpGrpcReceiver() as receiver:
        yield receiver


@pytest.fixture(scope="module")
def adoption_worker(redis_server: RedisServer, adoption_receiver: OtlpGrpcReceiver,
                    tmp_path_factory: pytest.TempPathFactory) -> Iterator[CeleryWorker]:
    """One prefork worker (-c 3) of adoption_app for the module; stopped by PID after."""
    env = {
        "OTEL_PROGRESS_TEST_ADOPTION_WORKER": "1",
        "OTEL_EXPORTER_OTLP_ENDPOINT": adoption_receiver.endpoint,
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "OTEL_METRICS_EXPORTER": "none",
    }
    worker = CeleryWorker(ADOPTION_APP, log_dir=tmp_path_factory.mktemp("adoption-worker"),
                          redis_url=redis_server.url, concurrency=3, queues=("celery",),
                          env=env)
    worker.start()
    try:
        yield worker
    finally:
        worker.stop(timeout=15.0)
        bad = internal_errors(worker.log_text())
        print(f"\n=== adoption worker log: {worker.log_path}\n{worker.log_tail()}")
    if bad:
        pytest.fail("the adoption worker hit an otel_progress internal error:\n"
                    + "\n".join(bad[:20]))


@pytest.fixture(scope="module")
def adoption(redis_server: RedisServer, adoption_worker: CeleryWorker
             ) -> Iterator[AdoptionProducer]:
    """The producer of adoption_app's tasks (the worker is running)."""
    made = AdoptionProducer(redis_server.url)
    yield made
    made.app.close()


class AdoptionGates:
    """Gates of one test: ``new()`` names one, ``open(name)`` lets its task go on."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.made: list[str] = []

    def new(self) -> str:
        """A gate name no other test uses (opened at the test's end at the latest)."""
        name = f"g-{uuid.uuid4().hex[:12]}"
        self.made.append(name)
        return name

    def open(self, name: str) -> None:
        """Let the task waiting on ``name`` go on."""
        self.client.set(GATE_PREFIX + name, b"1", ex=300)


@pytest.fixture
def adoption_gates(redis_server: RedisServer) -> Iterator[AdoptionGates]:
    """Gates for the test's tasks; every one it made is opened at its end (no held worker)."""
    client = redis_server.client()
    made = AdoptionGates(client)
    try:
        yield made
    finally:
        for name in made.made:
            made.open(name)
            for step in range(20):
                made.open(f"{name}-{step}")
        client.close()


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    """Debian's chromium under Playwright; fails (never skips) when it is not installed."""
    executable = shutil.which("chromium")
    if executable is None:
        pytest.fail("chromium missing: apt-get update && apt-get install -y chromium",
                    pytrace=False)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def tab(chromium: Any) -> Iterator[Any]:
    """A fresh page; uncaught page errors fail the test."""
    context = chromium.new_context(viewport={"width": 900, "height": 700})
    context.set_default_timeout(20_000)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    context.close()
    assert [] == errors
