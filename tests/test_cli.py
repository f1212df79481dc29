"""The ``otel-progress`` command: the demo end to end, ``watch`` against a real worker, ``serve``'s
refusal of a public bind, and the CLI conventions (help, version, one-line errors)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.support import REPO_ROOT, child_environment
from tests.support.celery_worker import CeleryWorker
from tests.support.redis_server import RedisServer

APP = "tests.apps.progress_app"
DEMO_TIMEOUT = 120.0
CLI = [sys.executable, "-m", "otel_progress.cli"]


def _demo_processes(demo_pid: int) -> set[int]:
    """PIDs of the worker processes of the demo with PID ``demo_pid`` (its hostname names it)."""
    found = set()
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info.get("cmdline") or [])
        if f"otel-progress-demo-{demo_pid}@" in cmdline:
            found.add(proc.pid)
    return found


def _start_demo(tmp_path: Path, *args: str) -> tuple[subprocess.Popen[str], Path]:
    temp = tmp_path / "tmp"
    temp.mkdir()
    work = tmp_path / "cwd"
    work.mkdir()
    env = child_environment({"TMPDIR": str(temp), "COLUMNS": "200"})
    env.pop("REDIS_URL", None)
    proc = subprocess.Popen([*CLI, "demo", *args], cwd=work, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    return proc, tmp_path


def _left_behind(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                  if p.parent.name in ("tmp", "cwd") or p.parent.parent.name in ("tmp", "cwd"))


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_demo_runs_the_seeds_on_a_real_worker_and_leaves_nothing_behind(tmp_path: Path) -> None:
    """make demo's command: exit 0, seed sections and jobs, the trees; no process, no file."""
    started = time.monotonic()
    proc, root = _start_demo(tmp_path)
    out, _ = proc.communicate(timeout=DEMO_TIMEOUT)
    assert 0 == proc.returncode, out
    assert time.monotonic() - started < 60, "the demo should finish well under a minute"
    for name in ("TEST - First part", "My subtask 2 in my task 2", "child 3",
                 "3 out of 4 jobs finished", "run/demo.new_format_task_1  [ERROR]",
                 "My subtask 2 in my task 2  [ERROR]", "Finished task!",
                 "ZeroDivisionError: division by zero"):
        assert name in out, name
    assert "TaskUpdater seed: failed" in out
    assert "Observer seed: succeeded" in out
    assert "fan-out (group): succeeded" in out
    assert set() == _demo_processes(proc.pid)
    assert [] == _left_behind(root)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_demo_serves_each_tasks_page_while_it_runs(tmp_path: Path) -> None:
    """The printed /tasks/<id>/view URLs answer 200 while the demo runs, and so does the JSON."""
    import re
    import urllib.request

    proc, _ = _start_demo(tmp_path, "--scale", "1")
    assert proc.stdout is not None
    try:
        deadline = time.monotonic() + 60
        urls: list[str] = []
        while len(urls) < 3 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            urls += re.findall(r"http://127\.0\.0\.1:\d+/tasks/[0-9a-f-]+/view", line)
        assert 3 == len(urls), urls
        for url in urls:
            with urllib.request.urlopen(url, timeout=10) as page:
                assert 200 == page.status
                assert "otel-progress.js" in page.read().decode()
            with urllib.request.urlopen(url.removesuffix("/view"), timeout=10) as answer:
                assert 200 == answer.status
                assert answer.headers["Content-Type"].startswith("application/json")
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)
    assert set() == _demo_processes(proc.pid)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_demo_interrupted_midway_stops_its_worker_and_removes_its_files(tmp_path: Path) -> None:
    """SIGINT while the tasks run: exit 130, the worker stopped, no file or directory left."""
    proc, root = _start_demo(tmp_path, "--scale", "1")
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    seen = ""
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        seen += line
        if "running" in line:
            break
    assert "running" in seen, seen
    assert _demo_processes(proc.pid), "the worker should be running midway"
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert 130 == proc.returncode, seen + out
    assert set() == _demo_processes(proc.pid)
    assert [] == _left_behind(root)


# --- watch -----------------------------------------------------------------------------------
@pytest.fixture
def worker(celery_worker_factory: Callable[..., CeleryWorker]) -> CeleryWorker:
    """A prefork worker (-c 2) on the default queue."""
    return celery_worker_factory(APP, concurrency=2, queues=("celery",),
                                 env={"OTEL_PROGRESS_TEST_MIN_INTERVAL": "0.1"})


def _watch(redis_server: RedisServer, task_id: str, *extra: str,
           timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = child_environment({"OTEL_PROGRESS_TEST_REDIS_URL": redis_server.url})
    return subprocess.run([*CLI, "watch", task_id, "-A", f"{APP}:app", *extra], cwd=REPO_ROOT,
                          env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_watch_shows_sections_in_order_and_exits_1_for_a_failed_run(
        app: Any, worker: CeleryWorker, redis_server: RedisServer) -> None:
    """Plain lines off a TTY; the seed's sections in order; a job failed: exit status 1."""
    result = app.seed.delay(0.3)
    done = _watch(redis_server, result.id)
    assert 1 == done.returncode, done.stdout + done.stderr
    order = [done.stdout.find(n) for n in ("First part", "Second part", "My subtask 1",
                                            "My subtask 2", "My subtask 3")]
    assert -1 not in order and order == sorted(order), done.stdout
    assert "My subtask 2  failed" in done.stdout and "ZeroDivisionError" in done.stdout
    assert "\x1b[" not in done.stdout, "no terminal escapes off a TTY"


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_watch_exits_0_for_a_succeeded_task_and_shows_its_progress(
        app: Any, worker: CeleryWorker, redis_server: RedisServer) -> None:
    """A task that succeeds: exit status 0, its rising percent printed as it changed."""
    result = app.steps.delay(10, 0.1)
    done = _watch(redis_server, result.id, "--interval", "0.1")
    assert 0 == done.returncode, done.stdout + done.stderr
    assert "succeeded 100.0%" in done.stdout
    assert "work  running" in done.stdout or "work  succeeded" in done.stdout


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_watch_exits_2_for_a_revoked_task(
        app: Any, worker: CeleryWorker, redis_server: RedisServer) -> None:
    """revoke(terminate=True) of a running task: watch ends with exit status 2."""
    result = app.sleepy.delay(30)
    deadline = time.monotonic() + 20
    while result.state not in ("PROGRESS", "STARTED") and time.monotonic() < deadline:
        time.sleep(0.1)
    watcher = subprocess.Popen(
        [*CLI, "watch", result.id, "-A", f"{APP}:app"], cwd=REPO_ROOT,
        env=child_environment({"OTEL_PROGRESS_TEST_REDIS_URL": redis_server.url}),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)
    result.revoke(terminate=True)
    out, err = watcher.communicate(timeout=60)
    assert 2 == watcher.returncode, out + err
    assert "revoked" in out


@pytest.mark.slow
def test_watch_exits_3_for_an_untracked_id_after_wait(redis_server: RedisServer) -> None:
    """An id otel_progress never tracked: exit status 3 after --wait seconds, one line."""
    started = time.monotonic()
    done = _watch(redis_server, "no-such-task", "--wait", "1")
    assert 3 == done.returncode, done.stdout + done.stderr
    assert time.monotonic() - started >= 1.0
    assert "not tracked" in done.stderr


# --- serve and conventions --------------------------------------------------------------------
def test_serve_refuses_a_public_bind_without_authorize_or_anonymous() -> None:
    """serve --host 0.0.0.0 without --authorize/--allow-anonymous: one line, non-zero exit."""
    done = subprocess.run([*CLI, "serve", "-A", f"{APP}:app", "--host", "0.0.0.0"],
                          cwd=REPO_ROOT, env=child_environment(), capture_output=True,
                          text=True, timeout=30)
    assert 0 != done.returncode
    assert 1 == len(done.stderr.strip().splitlines()), done.stderr
    assert "refusing" in done.stderr


@pytest.mark.slow
def test_serve_answers_on_loopback(redis_server: RedisServer) -> None:
    """serve -A module:app: the status app answers on 127.0.0.1 (an untracked id is 404 JSON)."""
    import socket
    import urllib.error
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = child_environment({"OTEL_PROGRESS_TEST_REDIS_URL": redis_server.url})
    proc = subprocess.Popen([*CLI, "serve", "-A", f"{APP}:app", "--port", str(port)],
                            cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        status = None
        while status is None and time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/tasks/never-seen", timeout=5)
            except urllib.error.HTTPError as exc:
                status, headers = exc.code, exc.headers
            except OSError:
                time.sleep(0.1)
        assert 404 == status
        assert "no-store" == headers["Cache-Control"]
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


@pytest.mark.parametrize("command", ["demo", "watch", "serve"])
def test_every_subcommand_help_lists_its_options(command: str) -> None:
    """``otel-progress <cmd> --help`` lists every option of the subcommand."""
    done = subprocess.run([*CLI, command, "--help"], capture_output=True, text=True,
                          timeout=30, env=child_environment())
    assert 0 == done.returncode
    expected = {"demo": ["--scale", "--broker", "--backend", "--keep-open"],
                "watch": ["-A", "--broker", "--backend", "--wait", "--timeout"],
                "serve": ["-A", "--host", "--port", "--trace-url", "--authorize",
                          "--allow-anonymous"]}[command]
    assert [] == [opt for opt in expected if opt not in done.stdout]


def test_version_and_top_level_help() -> None:
    """``--version`` prints the version; ``--help`` names the three commands."""
    from otel_progress import __version__

    version = subprocess.run([*CLI, "--version"], capture_output=True, text=True, timeout=30,
                             env=child_environment())
    assert f"otel-progress {__version__}" == version.stdout.strip()
    help_text = subprocess.run([*CLI, "--help"], capture_output=True, text=True, timeout=30,
                               env=child_environment()).stdout
    assert all(cmd in help_text for cmd in ("demo", "watch", "serve"))


@pytest.mark.parametrize("args", [
    ["watch", "x", "-A", "no_such_module_xyz:app"],
    ["watch", "x", "-A", "os:path"],
    ["watch", "x"],
    ["watch", "x", "--backend", "redis://127.0.0.1:1/0", "--wait", "0"],
])
def test_errors_are_one_line_on_stderr_and_a_nonzero_exit(args: list[str]) -> None:
    """A bad app module, no app, or an unreachable backend: one line, never a traceback."""
    env = child_environment()
    done = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60, env=env,
                          cwd=REPO_ROOT)
    assert done.returncode not in (0, 1, 2, 3), done.stderr
    assert "Traceback" not in done.stderr
    assert 1 == len(done.stderr.strip().splitlines()), done.stderr


def test_the_cli_module_is_what_the_console_script_runs() -> None:
    """The ``otel-progress`` entry point is ``otel_progress.cli:main``."""
    from importlib.metadata import entry_points

    scripts = {ep.name: ep.value for ep in entry_points(group="console_scripts")}
    assert "otel_progress.cli:main" == scripts["otel-progress"]
    assert os.path.exists(REPO_ROOT / "otel_progress" / "cli.py")
