"""The status app under concurrent clients: a healthy backend never reads as unavailable."""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest

from otel_progress.web import create_app
from tests.support.web import Producer, UvicornServer, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120), pytest.mark.usefixtures("tracking")]

CLIENTS = 50
REQUESTS_EACH = 40


@pytest.fixture(scope="module")
def server(producer: Producer) -> Iterator[UvicornServer]:
    """The status app on a free loopback port, anonymous reads allowed."""
    with UvicornServer(create_app(producer.app, allow_anonymous=True)) as running:
        yield running


def test_fifty_concurrent_clients_all_read_the_task_not_503(
        producer: Producer, server: UvicornServer) -> None:
    """50 clients polling one task at once all get 200: more concurrent reads than our Redis
    pool's connections wait for one (bounded) instead of failing as 'backend unavailable'."""
    task_id = f"load-{uuid.uuid4().hex}"
    # a queue no worker consumes: the task stays queued, tracked from its publish
    producer.app.send_task("web_app.hold", args=["never-opened"], task_id=task_id,
                           queue=f"nobody-{task_id}")
    url = f"{server.url}/tasks/{task_id}"
    wait_for(lambda: httpx.get(url, timeout=5).status_code == 200, what="the queued payload")
    statuses: Counter[int] = Counter()
    lock = threading.Lock()
    start = threading.Barrier(CLIENTS)

    def client() -> None:
        seen: Counter[int] = Counter()
        with httpx.Client(timeout=30) as http:
            start.wait(30)
            for _ in range(REQUESTS_EACH):
                seen[http.get(url).status_code] += 1
        with lock:
            statuses.update(seen)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(90)
    assert {200: CLIENTS * REQUESTS_EACH} == dict(statuses)
