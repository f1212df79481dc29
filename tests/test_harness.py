"""The test harness itself: a private redis-server and real Celery worker subprocesses."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import TYPE_CHECKING

import psutil
import pytest
import redis
from celery import Celery
from celery.result import AsyncResult

from tests.apps import harness_app

if TYPE_CHECKING:
    from tests.support.celery_worker import CeleryWorkerFactory
    from tests.support.redis_server import RedisServer

# Registered globally once; a tests/conftest.py listing the same modules does not double them.
# The support modules are imported lazily below so pytest can assert-rewrite them as plugins.
pytest_plugins = ["tests.support.redis_server", "tests.support.celery_worker"]

_REPO_ROOT = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]

_RESULT_TIMEOUT = 20.0


def _gone(pid: int) -> bool:
    """No such process, or only an unreaped zombie."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _wait_state(result: AsyncResult, state: str, timeout: float = 10.0) -> None:  # type: ignore[type-arg]
    """Poll the backend until the task reports ``state`` (bounded)."""
    deadline = time.monotonic() + timeout
    while result.state != state:
        assert time.monotonic() < deadline, f"task never reached {state}, is {result.state}"
        time.sleep(0.05)


@pytest.fixture
def app(redis_server: RedisServer, redis_db: redis.Redis) -> Celery:
    """The harness app on the client side, pointed at this session's redis-server."""
    harness_app.configure(harness_app.app, redis_server.url)
    return harness_app.app


def test_redis_server_answers_ping(redis_server: RedisServer) -> None:
    """The session server listens on 127.0.0.1 and answers PING."""
    assert redis_server.url == f"redis://127.0.0.1:{redis_server.port}/0"
    with redis_server.client() as client:
        assert client.ping() is True


def test_commandstats_counts_a_set(redis_server: RedisServer, redis_db: redis.Redis) -> None:
    """One SET after a stats reset shows up as exactly one ``set`` call."""
    redis_db.set("harness:key", "value")
    assert redis_server.commandstats()["set"] == 1


def test_reset_stats_forgets_earlier_calls(
    redis_server: RedisServer, redis_db: redis.Redis
) -> None:
    """CONFIG RESETSTAT drops counts of commands issued before it."""
    redis_db.set("harness:key", "value")
    redis_server.reset_stats()
    assert "set" not in redis_server.commandstats()


def test_restart_after_kill_serves_on_the_same_port(tmp_path: Path) -> None:
    """A SIGKILLed server comes back on its old port, empty, so URLs handed out stay valid."""
    from tests.support.redis_server import RedisServer

    with RedisServer(tmp_path) as server:
        port = server.port
        with server.client() as client:
            client.set("harness:key", "value")
        server.kill()
        assert not server.is_running()
        server.restart()
        assert server.port == port
        with server.client() as client:
            assert client.get("harness:key") is None


def test_missing_redis_server_binary_names_the_install_command(tmp_path: Path) -> None:
    """Without the binary the class raises with the exact apt-get command."""
    from tests.support.redis_server import RedisServer, RedisServerNotInstalledError

    with pytest.raises(RedisServerNotInstalledError, match="apt-get update && apt-get install"):
        RedisServer(tmp_path, binary=str(tmp_path / "no-such-redis-server"))


def test_missing_redis_server_fails_the_fixture_instead_of_skipping(tmp_path: Path) -> None:
    """A run whose redis-server is missing errors out and prints the install command."""
    from tests.support.redis_server import BINARY_ENV, INSTALL_HINT

    (tmp_path / "conftest.py").write_text('pytest_plugins = ["tests.support.redis_server"]\n')
    (tmp_path / "test_needs_redis.py").write_text(
        textwrap.dedent(
            """
            def test_uses_redis(redis_server):
                pass
            """
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env.update(PYTHONPATH=str(_REPO_ROOT), **{BINARY_ENV: str(tmp_path / "no-such-binary")})
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 1, run.stdout + run.stderr
    assert "1 error" in run.stdout and "skipped" not in run.stdout
    assert INSTALL_HINT in run.stdout


def test_prefork_worker_runs_add(celery_worker_factory: CeleryWorkerFactory, app: Celery) -> None:
    """A real prefork worker with two children computes add(2, 3) through redis."""
    celery_worker_factory(concurrency=2)
    assert harness_app.add.delay(2, 3).get(timeout=_RESULT_TIMEOUT) == 5


def test_workers_only_take_tasks_from_their_own_queue(
    celery_worker_factory: CeleryWorkerFactory, app: Celery
) -> None:
    """Tasks routed to queue A are all run by worker A, queue B's by worker B."""
    worker_a = celery_worker_factory(queues=["harness-a"], wait=False)
    worker_b = celery_worker_factory(queues=["harness-b"], wait=False)
    worker_a.wait_ready()
    worker_b.wait_ready()
    on_a = [harness_app.whoami.apply_async(queue="harness-a") for _ in range(4)]
    on_b = [harness_app.whoami.apply_async(queue="harness-b") for _ in range(4)]
    assert {r.get(timeout=_RESULT_TIMEOUT) for r in on_a} == {worker_a.hostname}
    assert {r.get(timeout=_RESULT_TIMEOUT) for r in on_b} == {worker_b.hostname}


def test_sigterm_stops_worker_in_time_leaving_no_process(
    celery_worker_factory: CeleryWorkerFactory, app: Celery
) -> None:
    """Warm shutdown ends the main process and every pool child before the timeout."""
    worker = celery_worker_factory(concurrency=2)
    pids = [worker.pid, *(child.pid for child in worker.wait_for_children(2))]
    started = time.monotonic()
    worker.stop(timeout=15.0)
    assert time.monotonic() - started < 15.0
    assert not worker.force_killed
    assert [pid for pid in pids if not _gone(pid)] == []


def test_warm_shutdown_lets_the_running_task_finish(
    celery_worker_factory: CeleryWorkerFactory, app: Celery
) -> None:
    """SIGTERM during a task waits for it, so its result still arrives."""
    worker = celery_worker_factory(concurrency=1)
    result = harness_app.sleep_then.delay(1.0, "finished")
    _wait_state(result, "STARTED")
    worker.stop(timeout=15.0)
    assert result.get(timeout=_RESULT_TIMEOUT) == "finished"


def test_killed_pool_child_is_replaced(
    celery_worker_factory: CeleryWorkerFactory, app: Celery
) -> None:
    """After SIGKILL of one prefork child the worker forks a new one and keeps serving."""
    worker = celery_worker_factory(concurrency=2)
    worker.wait_for_children(2)
    victim = worker.kill_child()
    children = worker.wait_for_children(2)
    assert victim not in {child.pid for child in children}
    assert harness_app.add.delay(1, 1).get(timeout=_RESULT_TIMEOUT) == 2
