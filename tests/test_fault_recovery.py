"""Faults that go away: a trace backend and a result backend that die mid-run and come back.

Real processes on loopback: a prefork worker of ``tests.apps.faults_app``, the session's Redis as
its broker, a Redis of the test's own as its result backend (killed by PID, restarted on the
same port), and the OTLP/gRPC receiver (stopped, then a new one on the same port).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from otel_progress._backend import own_key
from tests.support.celery_worker import CeleryWorker
from tests.support.otlp_receiver import OtlpGrpcReceiver
from tests.support.redis_server import RedisServer
from tests.support.web import Gates

pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]

APP = "tests.apps.faults_app"
QUEUE = "faults"
WorkerFactory = Callable[..., CeleryWorker]


def _env(receiver_endpoint: str, **extra: str) -> dict[str, str]:
    return {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver_endpoint,
            "OTEL_EXPORTER_OTLP_INSECURE": "true", "OTEL_BSP_SCHEDULE_DELAY": "200",
            "OTEL_METRICS_EXPORTER": "none", **extra}


def _producer(broker: str, backend: str) -> Celery:
    app = Celery("faults_producer", broker=broker, backend=backend, set_as_current=False)
    app.conf.update(task_serializer="json", result_serializer="json", accept_content=["json"],
                    result_accept_content=["json"], result_backend_always_retry=True,
                    result_backend_max_retries=60)
    return app


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[RedisServer]:
    """A result-backend Redis of this test's own (the broker stays on the session's)."""
    with RedisServer(tmp_path / "backend") as server:
        yield server


def test_spans_made_after_the_trace_backend_comes_back_arrive(
        redis_server: RedisServer, celery_worker_factory: WorkerFactory, gates: Gates) -> None:
    """The receiver goes away mid-task and comes back on its port: the task returns its
    result, and the spans of a task run after the recovery arrive."""
    first = OtlpGrpcReceiver()
    port = first.port
    worker = celery_worker_factory(APP, concurrency=1, queues=(QUEUE,),
                                   env=_env(first.endpoint))
    app = _producer(redis_server.url, redis_server.url)
    try:
        before = app.send_task("faults.gated", args=["before", []], queue=QUEUE)
        assert "before" == before.get(timeout=30)
        first.wait_for_spans(lambda s: "run/faults.gated" in {x.name for x in s}, timeout=15)
        gate = gates.new()
        during = app.send_task("faults.gated", args=["during", [gate]], queue=QUEUE)
        first.stop()  # mid-task: the section is open, its span not yet exported
        gates.open(gate)
        assert "during" == during.get(timeout=30)
        second = OtlpGrpcReceiver(port=port)
        try:
            after = app.send_task("faults.gated", args=["after", [gates.new()]], queue=QUEUE)
            gates.open(gates.made[-1])
            assert "after" == after.get(timeout=30)
            spans = second.wait_for_spans(
                lambda s: {"after-0", "run/faults.gated"} <= {x.name for x in s}, timeout=30)
            assert {"after-0"} <= {s.name for s in spans}
        finally:
            second.stop()
    finally:
        worker.stop()
        first.stop()
        app.close()
    assert [] == [line for line in worker.log_text().splitlines() if "Traceback" in line
                  and "otel_progress" in line]


def test_a_result_backend_killed_mid_task_gets_the_next_write_and_the_final_payload(
        redis_server: RedisServer, backend: RedisServer, celery_worker_factory: WorkerFactory,
        gates: Gates, otlp_receiver: OtlpGrpcReceiver) -> None:
    """Redis (the result backend) is SIGKILLed while a section runs and restarted empty: the
    task keeps running and returns its result, one warning for the task, and once Redis is back
    the next progress write and the final payload arrive."""
    worker = celery_worker_factory(
        APP, concurrency=1, queues=(QUEUE,), env=_env(
            otlp_receiver.endpoint, OTEL_PROGRESS_TEST_BACKEND_URL=backend.url,
            OTEL_PROGRESS_TEST_MIN_INTERVAL="0.2"))
    app = _producer(redis_server.url, backend.url)
    down, back, last = gates.new(), gates.new(), gates.new()
    try:
        result = app.send_task("faults.gated", args=["steps", [down, back, last]], queue=QUEUE)
        client = backend.client()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and client.get(own_key(result.id)) is None:
            time.sleep(0.05)
        assert client.get(own_key(result.id)) is not None, "no progress before the kill"
        client.close()
        backend.kill()
        gates.open(down)  # section 2 runs against a dead backend
        time.sleep(1.0)   # several flusher intervals with writes failing
        backend.restart()
        gates.open(back)  # section 3: the next write must land in the restarted Redis
        client = backend.client()
        try:
            deadline = time.monotonic() + 20
            seen: Any = None
            while time.monotonic() < deadline:
                raw = client.get(own_key(result.id))
                seen = json.loads(raw) if raw else None
                if seen and seen["jobs"]["finished"] >= 2:
                    break
                time.sleep(0.05)
            assert seen is not None and seen["state"] == "running", seen
            gates.open(last)
            assert "steps" == result.get(timeout=40)
            final = json.loads(client.get(own_key(result.id)) or b"{}")
        finally:
            client.close()
        assert ("succeeded", 3, 3) == (final.get("state"), final["jobs"]["finished"],
                                       final["jobs"]["total"])
    finally:
        worker.stop()
        app.close()
    warnings = [line for line in worker.log_text().splitlines()
                if "cannot publish progress of " + result.id in line]
    assert 1 == len(warnings), warnings
