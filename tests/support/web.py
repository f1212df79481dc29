"""The status app's test parts: a uvicorn server on 127.0.0.1, a web_app worker, the producer.

``UvicornServer`` serves any ASGI app on a free loopback port from a thread and stops it
(bounded). The module-scoped fixtures share one worker of ``tests.apps.web_app`` and one producer
app per test module, so each test costs one task, not one worker start.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from tests.support.celery_worker import CeleryWorker, internal_errors
from tests.support.redis_server import RedisServer

WEB_APP = "tests.apps.web_app"


def free_port() -> int:
    """A TCP port nobody listens on right now (127.0.0.1)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class UvicornServer:
    """``uvicorn`` serving ``app`` on 127.0.0.1 from a daemon thread; ``stop()`` is bounded."""

    def __init__(self, app: Any, *, port: int | None = None) -> None:
        self.port = port or free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                lifespan="off", access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="uvicorn-test", daemon=True)

    @property
    def url(self) -> str:
        """Base URL, no trailing slash."""
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> UvicornServer:
        """Start serving and wait (bounded) until the socket accepts."""
        self.thread.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.server.started:
                return self
            if not self.thread.is_alive():
                break
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"uvicorn did not start on port {self.port} within {timeout} s")

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the server to exit and wait for its thread (bounded)."""
        self.server.should_exit = True
        if self.thread.is_alive():
            self.thread.join(timeout)
        if self.thread.is_alive():  # pragma: no cover - a hung shutdown: force it
            self.server.force_exit = True
            self.thread.join(timeout)

    def __enter__(self) -> UvicornServer:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()


class Prefixes:
    """An ASGI app that hands each request to the app mounted at its path's first segment.

    Starlette's ``Mount`` matches with ``.*``, which stops at a newline, so a ``%0A`` id would
    never reach the mounted app; this passes every path on, as a reverse proxy would.
    """

    def __init__(self, apps: dict[str, Any]) -> None:
        self.apps = apps

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        for prefix, app in self.apps.items():
            if path.startswith(prefix + "/"):
                child = dict(scope, root_path=scope.get("root_path", "") + prefix)
                await app(child, receive, send)
                return
        await send({"type": "http.response.start", "status": 404,
                    "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"no app here"})


def wait_for(check: Callable[[], Any], *, timeout: float = 20.0, interval: float = 0.05,
             what: str = "condition") -> Any:
    """Poll ``check`` until it returns something truthy (bounded); fail with ``what``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"{what} not reached within {timeout} s (last: {last!r})")


def new_gate() -> str:
    """A gate name no other test uses."""
    return f"g-{uuid.uuid4().hex[:12]}"


class Producer:
    """The test process as a producer of tests.apps.web_app's tasks, on its own fresh app.

    ``producer.hold`` is the task bound to ``producer.app``: a Celery app made for this module,
    so no backend or broker pool cached by an earlier test (Celery caches both per app, with
    the configuration of their first use) can send it elsewhere.
    """

    def __init__(self, redis_url: str) -> None:
        from celery import Celery

        from tests.apps import web_app  # registers the shared tasks with every app

        self.module = web_app
        self.app = Celery("web_client", broker=redis_url, backend=redis_url,
                          set_as_current=False)
        self.app.conf.update(task_serializer="json", result_serializer="json",
                             accept_content=["json"], result_accept_content=["json"])

    def __getattr__(self, name: str) -> Any:
        return self.app.tasks[f"web_app.{name}"]


@pytest.fixture(scope="module")
def producer(redis_server: RedisServer) -> Iterator[Producer]:
    """A producer of web_app's tasks on this session's Redis (closed after the module)."""
    made = Producer(redis_server.url)
    yield made
    made.app.close()


@pytest.fixture
def tracking(producer: Producer) -> Iterator[None]:
    """This process tracks what it publishes (``queued`` from publish), as an instrumented
    producer does; afterwards as it was (other modules' tests turn the instrumentor off, and
    their shared tasks publish through the current app)."""
    from celery import current_app

    from otel_progress.celery import ProgressInstrumentor

    instrumentor = ProgressInstrumentor()
    was_on = instrumentor.is_instrumented_by_opentelemetry
    if not was_on:
        instrumentor.instrument()
    previous = current_app._get_current_object()
    producer.app.set_current()  # the publish hook writes to the current app's backend
    yield
    previous.set_current()
    if not was_on:
        instrumentor.uninstrument()


@pytest.fixture(scope="module")
def web_worker(redis_server: RedisServer,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[CeleryWorker]:
    """One prefork worker (-c 3) of tests.apps.web_app for the module; stopped by PID after."""
    worker = CeleryWorker(WEB_APP, log_dir=tmp_path_factory.mktemp("web-worker"),
                          redis_url=redis_server.url, concurrency=3, queues=("celery",),
                          env={"OTEL_PROGRESS_TEST_WEB_WORKER": "1"})
    worker.start()
    try:
        yield worker
    finally:
        worker.stop(timeout=15.0)
        bad = internal_errors(worker.log_text())
        print(f"\n=== web worker log: {worker.log_path}\n{worker.log_tail()}")
    if bad:
        pytest.fail("the web worker hit an otel_progress internal error:\n" + "\n".join(bad[:20]))


class Gates:
    """Gates of one test: ``new()`` names one, ``open(name)`` lets its task go on."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.made: list[str] = []

    def new(self) -> str:
        """A gate name no other test uses (opened at the test's end at the latest)."""
        name = new_gate()
        self.made.append(name)
        return name

    def open(self, name: str) -> None:
        """Let the task waiting on ``name`` go on."""
        from tests.apps import web_app

        web_app.open_gate(self.client, name)


@pytest.fixture
def gates(redis_server: RedisServer) -> Iterator[Gates]:
    """Gates for the test's tasks; every one it made is opened at its end (no held worker)."""
    client = redis_server.client()
    made = Gates(client)
    try:
        yield made
    finally:
        for name in made.made:
            made.open(name)
        client.close()


def get_json(client: httpx.Client, url: str) -> tuple[int, Any]:
    """Status and decoded body of a GET."""
    response = client.get(url)
    with contextlib.suppress(ValueError):
        return response.status_code, response.json()
    return response.status_code, response.text


def repo_file(*parts: str) -> Path:
    """A path inside the repository."""
    return Path(__file__).resolve().parents[2].joinpath(*parts)
