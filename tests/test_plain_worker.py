"""Workers that did not call ProgressInstrumentor: spans still record; install() turns on the
bridge without OpenTelemetry's Celery instrumentation; a worker with neither says so once."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from otel_progress import _attributes as A
from otel_progress.celery import get_progress
from tests.support.celery_worker import CeleryWorker
from tests.support.otlp_receiver import OtlpGrpcReceiver
from tests.support.redis_server import RedisServer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

WARNING = "this Celery worker was not instrumented"


def _env(receiver: OtlpGrpcReceiver, **extra: str) -> dict[str, str]:
    return {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "100",
            "OTEL_METRICS_EXPORTER": "none", **extra}


def test_uninstrumented_worker_records_spans_and_warns_once_naming_the_call(
        redis_server: RedisServer, celery_worker_factory: Callable[..., CeleryWorker],
        otlp_receiver: OtlpGrpcReceiver) -> None:
    """No instrumentor, no install(): the run span is ours, and one warning names the fix."""
    from tests.apps import plain_app

    plain_app.app.conf.update(broker_url=redis_server.url, result_backend=redis_server.url)
    worker = celery_worker_factory("tests.apps.plain_app", concurrency=1, queues=("plain-1",),
                                   env=_env(otlp_receiver))
    results = [plain_app.job.apply_async(queue="plain-1") for _ in range(3)]
    assert ["plain"] * 3 == [r.get(timeout=30) for r in results]
    spans = otlp_receiver.wait_for_spans(
        lambda s: sum(x.name == "plain_app.job" for x in s) >= 3, timeout=20)
    run = next(s for s in spans if s.name == "plain_app.job")
    part = next(s for s in spans if s.name == "only part" and s.parent_span_id == run.span_id)
    assert run.attributes[A.TASK_UUID] in {r.id for r in results}
    assert "OK" == run.status_code
    assert part is not None
    log = worker.log_text()
    assert 1 == log.count(WARNING), log
    assert "ProgressInstrumentor().instrument()" in log


def test_install_gives_the_final_payload_without_otel_celery_instrumentation(
        redis_server: RedisServer, celery_worker_factory: Callable[..., CeleryWorker],
        otlp_receiver: OtlpGrpcReceiver) -> None:
    """install(): the final payload is there when the result is, and no warning."""
    from tests.apps import plain_app

    plain_app.app.conf.update(broker_url=redis_server.url, result_backend=redis_server.url)
    worker = celery_worker_factory("tests.apps.plain_app", concurrency=1, queues=("plain-2",),
                                   env=_env(otlp_receiver, OTEL_PROGRESS_TEST_INSTALL="1"))
    result = plain_app.job.apply_async(queue="plain-2")
    assert "plain" == result.get(timeout=30)
    payload = get_progress(result.id, app=plain_app.app)
    assert payload is not None
    assert ("succeeded", True, {"finished": 1, "total": 1}) == (
        payload["state"], payload["finished"], payload["jobs"])
    assert WARNING not in worker.log_text()
