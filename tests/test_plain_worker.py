"""A worker whose tasks only import otel_progress: the defaults still hold."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from otel_progress import _attributes as A
from otel_progress.celery import get_progress
from tests.support.celery_worker import CeleryWorker
from tests.support.otlp_receiver import OtlpGrpcReceiver
from tests.support.redis_server import RedisServer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


def test_import_alone_gives_the_final_payload_and_an_own_run_span(
        redis_server: RedisServer, celery_worker_factory: Callable[..., CeleryWorker],
        otlp_receiver: OtlpGrpcReceiver) -> None:
    """No instrumentor: the final payload is there when the result is; the run span is ours."""
    from tests.apps import plain_app

    plain_app.app.conf.update(broker_url=redis_server.url, result_backend=redis_server.url)
    celery_worker_factory("tests.apps.plain_app", concurrency=1, env={
        "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_receiver.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "100",
        "OTEL_METRICS_EXPORTER": "none"})
    result = plain_app.job.delay()
    assert "plain" == result.get(timeout=30)
    payload = get_progress(result.id, app=plain_app.app)
    assert payload is not None
    assert ("succeeded", True, {"finished": 1, "total": 1}) == (
        payload["state"], payload["finished"], payload["jobs"])
    spans = otlp_receiver.wait_for_spans(
        lambda s: {"plain_app.job", "only part"} <= {x.name for x in s}, timeout=20)
    run = next(s for s in spans if s.name == "plain_app.job")
    part = next(s for s in spans if s.name == "only part")
    assert (run.span_id, result.id) == (part.parent_span_id, run.attributes[A.TASK_UUID])
    assert "OK" == run.status_code
