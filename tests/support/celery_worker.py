"""Real ``celery worker`` subprocesses for tests, plus the pytest factory fixture that owns them.

Workers run ``sys.executable -m celery -A <module> worker`` from the repository root, in their
own process group, with stdout/stderr in a per-test log file (``CeleryWorker.log_path``).
Register the fixture from ``tests/conftest.py`` with
``pytest_plugins = ["tests.support.redis_server", "tests.support.celery_worker"]``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import psutil
import pytest

from tests.support.redis_server import RedisServer

REPO_ROOT = Path(__file__).resolve().parents[2]
"""Worker cwd and first PYTHONPATH entry, so ``tests.apps.*`` and ``otel_progress`` import."""

DEFAULT_APP = "tests.apps.harness_app"
REDIS_URL_ENV = "OTEL_PROGRESS_TEST_REDIS_URL"

Pool = Literal["prefork", "threads", "solo", "gevent"]
CeleryWorkerFactory = Callable[..., "CeleryWorker"]
"""``celery_worker_factory(app=DEFAULT_APP, *, wait=True, **CeleryWorker options)``."""

_READY_LOGLEVELS = {"DEBUG", "INFO"}
_POLL_INTERVAL = 0.05


class CeleryWorkerError(RuntimeError):
    """The worker died or never became ready; the message carries its log path and tail."""


def _alive(proc: psutil.Process) -> bool:
    """Running and not a zombie (an orphan reparented to a non-reaping PID 1 stays a zombie)."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _hermetic_env(extra: Mapping[str, str] | None, redis_url: str | None) -> dict[str, str]:
    """The parent's env minus any ``OTEL_*`` (no accidental export off 127.0.0.1), plus ours."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    pythonpath = [str(REPO_ROOT)]
    if env.get("PYTHONPATH"):
        pythonpath.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(pythonpath)
    env["PYTHONUNBUFFERED"] = "1"
    env["OTEL_PROGRESS_STRICT"] = "1"  # internal errors raise in workers too
    if redis_url is not None:
        env[REDIS_URL_ENV] = redis_url
    env.update(extra or {})
    return env


class CeleryWorker:
    """One ``celery worker`` process (with its pool children) started and stopped by PID.

    ``fast_start`` adds ``--without-mingle --without-gossip --without-heartbeat``: mingle alone
    waits a second for peers, and none of the three matter to a single-host test.
    """

    def __init__(
        self,
        app: str = DEFAULT_APP,
        *,
        log_dir: Path,
        redis_url: str | None = None,
        queues: Sequence[str] = (),
        concurrency: int = 1,
        pool: Pool = "prefork",
        max_tasks_per_child: int | None = None,
        name: str | None = None,
        loglevel: str = "INFO",
        env: Mapping[str, str] | None = None,
        cwd: Path = REPO_ROOT,
        extra_args: Sequence[str] = (),
        fast_start: bool = True,
        start_timeout: float = 30.0,
        launcher: Sequence[str] = (),
    ) -> None:
        self.app = app
        self.redis_url = redis_url
        self.queues = tuple(queues)
        self.pool = pool
        self.loglevel = loglevel.upper()
        self.start_timeout = start_timeout
        self.cwd = cwd
        short = name or f"w{uuid.uuid4().hex[:8]}"
        self.hostname = f"{short}@{socket.gethostname()}"
        """Full node name, as ``self.request.hostname`` and ``control.ping`` report it."""
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"celery-{short}.log"
        self.force_killed = False
        """Set when ``stop()`` had to fall back to SIGKILL (the warm shutdown overran)."""
        self.env = _hermetic_env(env, redis_url)
        # ``launcher`` prefixes the command, e.g. ``opentelemetry-instrument`` (zero-code path)
        self.command = [
            *launcher, sys.executable, "-m", "celery", "-A", app, "worker",
            "--loglevel", self.loglevel,
            "--pool", pool,
            "--concurrency", str(concurrency),
            "--hostname", self.hostname,
        ]  # fmt: skip
        if self.queues:
            self.command += ["--queues", ",".join(self.queues)]
        if max_tasks_per_child is not None:
            self.command += ["--max-tasks-per-child", str(max_tasks_per_child)]
        if fast_start:
            self.command += ["--without-mingle", "--without-gossip", "--without-heartbeat"]
        self.command += list(extra_args)
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0
        self._stopping: list[psutil.Process] | None = None

    # --- lifecycle -------------------------------------------------------------------------------

    def start(self, *, wait: bool = True) -> CeleryWorker:
        """Spawn the worker; with ``wait`` block (bounded) until it consumes tasks."""
        if self.is_running():
            return self
        self.force_killed = False
        self._stopping = None
        with self.log_path.open("ab") as log:
            self._log_offset = log.tell()
            log.write(f"--- {' '.join(self.command)}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                self.command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.cwd,
                env=self.env,
                start_new_session=True,
            )
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float | None = None) -> None:
        """Wait for ``<hostname> ready.`` in the log, or a ping reply below INFO loglevel."""
        deadline = time.monotonic() + (self.start_timeout if timeout is None else timeout)
        check = self._logged_ready if self.loglevel in _READY_LOGLEVELS else self._answers_ping
        while time.monotonic() < deadline:
            if not self.is_running():
                self._fail(f"exited with {self.returncode} before becoming ready")
            if check():
                return
            time.sleep(_POLL_INTERVAL)
        self._fail(f"not ready within {timeout or self.start_timeout}s")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int | None:
        """Send ``sig`` by PID (SIGTERM = warm shutdown) and wait; SIGKILL the group on overrun.

        Returns the exit code. Pool children are checked too, so nothing outlives the call.
        """
        self.request_stop(sig)
        return self.wait_stopped(timeout)

    def request_stop(self, sig: int = signal.SIGTERM) -> None:
        """Send ``sig`` without waiting, so several workers shut down in parallel.

        A no-op while a stop is pending (a second SIGTERM must not escalate teardown); use
        ``send_signal()`` to escalate on purpose, e.g. SIGQUIT for a cold shutdown.
        """
        if self._stopping is not None or not self.is_running():
            return
        self._stopping = self._family()[1:]
        self.send_signal(sig)

    def send_signal(self, sig: int) -> None:
        """Send any signal to the main process by PID (SIGUSR1, SIGQUIT, ...)."""
        if self._proc is not None and self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.send_signal(sig)

    def wait_stopped(self, timeout: float = 15.0) -> int | None:
        """Wait for the exit that ``request_stop()`` asked for; SIGKILL the group on overrun."""
        proc = self._proc
        if proc is None:
            return None
        descendants = self._stopping if self._stopping is not None else self._family()[1:]
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.force_killed = True
            self._kill_group(proc)
        self._reap(descendants, timeout=5.0)
        self._stopping = None
        return proc.returncode

    def kill(self) -> None:
        """SIGKILL the whole process group at once (a crashed host, for fault tests)."""
        proc = self._proc
        if proc is None:
            return
        family = self._family()
        self._kill_group(proc)
        self._reap(family[1:], timeout=5.0)

    def kill_child(self) -> int:
        """SIGKILL one pool child (prefork only) and return its PID; the parent replaces it."""
        children = self.children()
        if not children:
            raise CeleryWorkerError(f"{self.hostname} has no pool children (pool={self.pool})")
        victim = children[0]
        victim.send_signal(signal.SIGKILL)
        psutil.wait_procs([victim], timeout=5.0)
        return victim.pid

    def wait_for_children(self, count: int, timeout: float = 10.0) -> list[psutil.Process]:
        """Wait until ``count`` live pool children exist, e.g. after ``kill_child()``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            children = self.children()
            if len(children) >= count:
                return children
            time.sleep(_POLL_INTERVAL)
        raise CeleryWorkerError(f"{self.hostname}: fewer than {count} pool children in {timeout}s")

    def __enter__(self) -> CeleryWorker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # --- inspection ------------------------------------------------------------------------------

    @property
    def pid(self) -> int:
        """PID of the worker's main process."""
        if self._proc is None:
            raise CeleryWorkerError(f"{self.hostname} was never started")
        return self._proc.pid

    @property
    def returncode(self) -> int | None:
        """Exit code once the main process has exited, else None."""
        return None if self._proc is None else self._proc.poll()

    def is_running(self) -> bool:
        """True while the main process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def children(self) -> list[psutil.Process]:
        """Live direct children of the main process (the prefork pool)."""
        if not self.is_running():
            return []
        try:
            return [c for c in psutil.Process(self.pid).children() if _alive(c)]
        except psutil.NoSuchProcess:
            return []

    def log_text(self) -> str:
        """Everything this worker wrote to its log file so far (all starts)."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        """Last lines of the log, for failure messages."""
        return "\n".join(self.log_text().splitlines()[-lines:])

    # --- internals -------------------------------------------------------------------------------

    def _logged_ready(self) -> bool:
        """True once this start's part of the log contains the ready line."""
        try:
            with self.log_path.open("rb") as log:
                log.seek(self._log_offset)
                return f"{self.hostname} ready.".encode() in log.read()
        except OSError:
            return False

    def _answers_ping(self) -> bool:
        """True when the worker replies to a remote-control ping (needs ``redis_url``)."""
        if self.redis_url is None:
            raise CeleryWorkerError("loglevel above INFO needs redis_url to detect readiness")
        from celery import Celery

        client = Celery("ping", broker=self.redis_url, set_as_current=False)
        try:
            replies = client.control.ping(destination=[self.hostname], timeout=0.5)
        except Exception:  # broker not answering yet: simply not ready
            return False
        finally:
            client.close()
        return any(self.hostname in reply for reply in replies or [])

    def _family(self) -> list[psutil.Process]:
        """Main process followed by all its descendants, captured before signalling."""
        try:
            main = psutil.Process(self.pid)
            return [main, *main.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    @staticmethod
    def _kill_group(proc: subprocess.Popen[bytes]) -> None:
        """SIGKILL the process group (the worker is its leader) and reap the main process."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5.0)

    @staticmethod
    def _reap(processes: list[psutil.Process], timeout: float) -> None:
        """Wait for descendants to vanish; SIGKILL any straggler (e.g. one that left the group)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(_alive(p) for p in processes):
            time.sleep(_POLL_INTERVAL)
        for p in processes:
            if _alive(p):
                with contextlib.suppress(psutil.NoSuchProcess):
                    p.kill()

    def _fail(self, why: str) -> None:
        """Stop whatever is left, then raise with the log so the cause is visible."""
        self.kill()
        raise CeleryWorkerError(
            f"celery worker {self.hostname} {why}\nlog: {self.log_path}\n{self.log_tail()}"
        )


# --- pytest fixture ----------------------------------------------------------------------------


@pytest.fixture
def celery_worker_factory(
    redis_server: RedisServer, tmp_path: Path
) -> Iterator[CeleryWorkerFactory]:
    """Start workers on demand (broker/backend = the session redis); all stop at teardown.

    Teardown prints each log path and tail; pytest shows it only for failed tests.
    """
    started: list[CeleryWorker] = []
    log_dir = tmp_path / "celery-logs"

    def _start(app: str = DEFAULT_APP, *, wait: bool = True, **options: Any) -> CeleryWorker:
        options.setdefault("redis_url", redis_server.url)
        worker = CeleryWorker(app, log_dir=log_dir, **options)
        started.append(worker)
        return worker.start(wait=wait)

    yield _start
    for worker in started:
        worker.request_stop()
    for worker in started:
        worker.wait_stopped(timeout=10.0)
    for worker in started:
        print(f"\n=== celery worker {worker.hostname} log: {worker.log_path}\n{worker.log_tail()}")
    bad = [line for worker in started for line in internal_errors(worker.log_text())]
    if bad:
        pytest.fail("a worker hit an otel_progress internal error:\n" + "\n".join(bad[:20]))


INTERNAL_ERROR_SIGNS = ("otel_progress internal error", "Exception in thread otel-progress")
"""What a worker's log shows when otel_progress failed inside it (strict mode raises)."""


def internal_errors(log: str) -> list[str]:
    """Lines of ``log`` that show an otel_progress internal error."""
    return [line for line in log.splitlines() if any(s in line for s in INTERNAL_ERROR_SIGNS)]
