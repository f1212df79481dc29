"""Every common setup, with real processes: eager mode, brokers, result backends and pools.

Each setup runs one tracked task (``setups.steps``: two sections, the second rising over 2 s)
through a real worker of that setup (none in eager mode) while a producer process samples
``get_progress()``; three tests then check what a user needs of it: progress readable while it
runs, the final payload, and the spans at a loopback OTLP receiver. One setup changes one thing
from the baseline (Redis broker and backend, prefork pool), so a failure names its cause.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from otel_progress import _attributes as A
from tests.support import REPO_ROOT, child_environment
from tests.support.celery_worker import CeleryWorker, Pool
from tests.support.otlp_receiver import OtlpGrpcReceiver, SpanRecord
from tests.support.rabbitmq_server import RabbitMQServer
from tests.support.redis_server import RedisServer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

APP = "tests.apps.setups_app"
COUNT, DELAY = 20, 0.1
"""The task's second section: 20 steps of 0.1 s, so several 0.2 s writes land mid-task."""


@dataclass(frozen=True)
class Setup:
    """One way users run Celery: a broker, a result backend, a pool (or eager mode)."""

    broker: str  # "redis", "rabbitmq" or "memory"
    backend: str  # "redis", "rpc", "sqlite", "django" or "memory"
    pool: Pool = "prefork"
    eager: bool = False
    concurrency: int = 1
    matrix: bool = False  # part of the version matrix's subset (.ci/matrix)


SETUPS = {
    "eager": Setup("memory", "memory", eager=True, matrix=True),
    "redis-prefork": Setup("redis", "redis", matrix=True),
    "threads-pool": Setup("redis", "redis", pool="threads", concurrency=2),
    "solo-pool": Setup("redis", "redis", pool="solo"),
    "gevent-pool": Setup("redis", "redis", pool="gevent", concurrency=4),
    "rabbitmq-broker": Setup("rabbitmq", "redis"),
    "rpc-backend": Setup("rabbitmq", "rpc"),
    "sqlalchemy-sqlite-backend": Setup("redis", "sqlite"),
    "django-celery-results-backend": Setup("redis", "django"),
}


@dataclass
class Outcome:
    """What the producer saw of one task, and the spans the receiver got for it."""

    setup: Setup
    task_id: str
    value: Any
    seen: list[dict[str, Any]]
    final: dict[str, Any] | None
    late: dict[str, Any] | None
    """The payload as a process that never saw the task running reads it (None on rpc://)."""
    spans: list[SpanRecord] = field(default_factory=list)


def _urls(setup: Setup, request: pytest.FixtureRequest, tmp: Path) -> dict[str, str]:
    """The setup's environment: broker and backend URLs (servers started on first use)."""
    env: dict[str, str] = {}
    if setup.eager:
        env["OTEL_PROGRESS_SETUP_EAGER"] = "1"
    if setup.broker == "redis" or setup.backend == "redis":
        redis: RedisServer = request.getfixturevalue("redis_server")
    if setup.broker == "rabbitmq":
        rabbit: RabbitMQServer = request.getfixturevalue("rabbitmq_server")
        env["OTEL_PROGRESS_SETUP_BROKER"] = rabbit.url
    elif setup.broker == "redis":
        env["OTEL_PROGRESS_SETUP_BROKER"] = redis.url
    backend = {
        "memory": "cache+memory://",
        "rpc": "rpc://",
        "sqlite": f"db+sqlite:///{tmp / 'results.sqlite'}",
        "django": "django-db",
    }.get(setup.backend)
    env["OTEL_PROGRESS_SETUP_BACKEND"] = redis.url if backend is None else backend
    if setup.backend == "django":
        env["OTEL_PROGRESS_SETUP_DJANGO_DB"] = str(tmp / "django.sqlite")
    if setup.pool == "gevent":
        env["OTEL_PROGRESS_SETUP_POOL"] = "gevent"
    return env


def _drive(env: dict[str, str], *args: str) -> dict[str, Any]:
    """Run the producer (tests/apps/setups_drive.py) in a fresh interpreter; its RESULT line."""
    proc = subprocess.run(
        [sys.executable, "-m", "tests.apps.setups_drive", *args], cwd=REPO_ROOT,
        env=child_environment(env), capture_output=True, text=True, timeout=90, check=False,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or (not lines and "--migrate" not in args):
        pytest.fail(f"producer failed (rc={proc.returncode})\n{proc.stdout}\n{proc.stderr}")
    return json.loads(lines[-1][len("RESULT "):]) if lines else {}


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpGrpcReceiver]:
    """One OTLP/gRPC receiver on 127.0.0.1 for every setup of the module."""
    with OtlpGrpcReceiver() as rec:
        yield rec


def _params() -> list[Any]:
    return [pytest.param(name, id=name, marks=[pytest.mark.matrix] if setup.matrix else [])
            for name, setup in SETUPS.items()]


@pytest.fixture(scope="module", params=_params())
def outcome(request: pytest.FixtureRequest, receiver: OtlpGrpcReceiver,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Outcome]:
    """Run the setup's task once (a worker of that setup, or eager) and keep what was seen."""
    name: str = request.param
    setup = SETUPS[name]
    tmp = tmp_path_factory.mktemp(name)
    env = {
        **_urls(setup, request, tmp),
        "OTEL_PROGRESS_SETUP_QUEUE": f"setups-{name}",
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "OTEL_METRICS_EXPORTER": "none",
    }
    if setup.backend == "django":
        _drive(env, "--migrate")
    worker = None
    if not setup.eager:
        worker = CeleryWorker(APP, log_dir=tmp, pool=setup.pool, concurrency=setup.concurrency,
                              queues=(f"setups-{name}",), env=env, name=name)
        worker.start()
    try:
        seen = _drive(env, "--count", str(COUNT), "--delay", str(DELAY))
        task_id = seen["task_id"]
        spans = receiver.wait_for_spans(lambda s: {"prepare", "work"} <= {
            x.name for x in _of_task(s, task_id)}, timeout=20)
        late = None if setup.eager or setup.backend == "rpc" else _drive(
            env, "--read", task_id)["final"]
        yield Outcome(setup, task_id, seen["value"], seen["seen"], seen["final"], late,
                      _of_task(spans, task_id))
    finally:
        if worker is not None:
            worker.stop()


def _of_task(spans: list[SpanRecord], task_id: str) -> list[SpanRecord]:
    """The run span carrying ``task_id`` and every span of its trace."""
    runs = [s for s in spans if s.attributes.get(A.TASK_UUID) == task_id]
    traces = {s.trace_id for s in runs}
    return [s for s in spans if s.trace_id in traces]


def test_progress_is_readable_while_the_task_runs(outcome: Outcome) -> None:
    """get_progress() mid-task reads running with a rising percent strictly between 0 and 100."""
    running = [s["percent"] for s in outcome.seen if s["state"] == "running"]
    assert len(set(running)) >= 3, outcome.seen
    assert sorted(running) == running, "percent went backwards"
    assert all(0 < p < 100 for p in running), running


def test_the_final_payload_is_succeeded_with_every_job(outcome: Outcome) -> None:
    """After the result: succeeded, finished, 100 %, both sections' jobs, the task's value."""
    final = outcome.final
    assert final is not None
    assert (COUNT, "succeeded", True, 100.0, {"finished": 2, "total": 2}, 1) == (
        outcome.value, final["state"], final["finished"], final["percent"], final["jobs"],
        final["status"]), json.dumps(final)  # the whole payload when it fails
    assert (["prepare", "work"], outcome.task_id) == (
        [s["name"] for s in final["sections"]], final["task_uuid"])


@pytest.mark.parametrize("outcome", [n for n in SETUPS if not SETUPS[n].eager
                                     and SETUPS[n].backend != "rpc"], indirect=True)
def test_another_process_reads_the_same_final_payload_afterwards(outcome: Outcome) -> None:
    """A reader that never saw the task run (a web server, say) gets the same final payload."""
    assert outcome.final is not None
    assert outcome.late is not None
    drop = ("celery_state", "updated", "children_progress")
    assert {k: v for k, v in outcome.final.items() if k not in drop} == {
        k: v for k, v in outcome.late.items() if k not in drop}


def test_the_spans_reach_the_otlp_receiver_as_one_tree(outcome: Outcome) -> None:
    """run/setups.steps carries the task id; both sections are its children, one trace."""
    spans = outcome.spans
    run = next(s for s in spans if s.name == "run/setups.steps")
    sections = {s.name: s for s in spans if s.name in ("prepare", "work")}
    assert outcome.task_id == run.attributes[A.TASK_UUID]
    assert {"prepare": run.span_id, "work": run.span_id} == {
        name: s.parent_span_id for name, s in sections.items()}
    assert ["prepared"] == [e.name for e in sections["prepare"].events]
    assert "setups-app-test" == run.resource["service.name"]
