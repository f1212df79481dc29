"""The zero-code path: ``opentelemetry-instrument celery -A app worker`` and OTEL_* only."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.celery_worker import CeleryWorker
from tests.support.otlp_receiver import OtlpGrpcReceiver
from tests.support.redis_server import RedisServer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


def test_opentelemetry_instrument_produces_section_spans(
        redis_server: RedisServer, celery_worker_factory: Callable[..., CeleryWorker]) -> None:
    """With only OTEL_* set, the entry point turns otel_progress on in the worker."""
    launcher = shutil.which("opentelemetry-instrument", path=str(Path(sys.executable).parent))
    assert launcher, "opentelemetry-instrument missing: pip install opentelemetry-distro"
    from tests.apps import zerocode_app

    zerocode_app.app.conf.update(broker_url=redis_server.url, result_backend=redis_server.url)
    with OtlpGrpcReceiver() as receiver:
        env = {
            "OTEL_SERVICE_NAME": "zero-code-worker",
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_METRICS_EXPORTER": "none",
            "OTEL_LOGS_EXPORTER": "none",
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_EXPORTER_OTLP_INSECURE": "true",
            "OTEL_BSP_SCHEDULE_DELAY": "100",
        }
        worker = celery_worker_factory("tests.apps.zerocode_app", pool="solo", env=env,
                                       launcher=[launcher], queues=("zerocode",))
        assert "zero" == zerocode_app.job.apply_async(queue="zerocode").get(timeout=30)
        spans = receiver.wait_for_spans(
            lambda s: {"run/zerocode_app.job", "prepare", "work"} <= {x.name for x in s},
            timeout=20)
        worker.stop()
    run = next(s for s in spans if s.name == "run/zerocode_app.job")
    sections = [s for s in spans if s.name in ("prepare", "work")]
    assert {run.span_id} == {s.parent_span_id for s in sections}
    assert "zero-code-worker" == run.resource["service.name"]
    assert ["ready"] == [e.name for s in sections if s.name == "prepare" for e in s.events]
