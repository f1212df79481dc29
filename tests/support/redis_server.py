"""A throwaway ``redis-server`` on 127.0.0.1 for tests, plus the pytest fixtures that own it.

Each pytest process (each xdist worker too) gets its own server on a free port with its own
data directory, so parallel runs never share state. Register the fixtures from
``tests/conftest.py`` with ``pytest_plugins = ["tests.support.redis_server"]``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

import pytest
import redis

INSTALL_HINT = "apt-get update && apt-get install -y redis-server"
"""The exact command printed when ``redis-server`` is missing."""
BINARY_ENV = "OTEL_PROGRESS_TEST_REDIS_SERVER"
"""Optional path of the ``redis-server`` binary the fixture uses (default: the one on PATH)."""

_START_TIMEOUT = 10.0
_STOP_TIMEOUT = 5.0
_START_ATTEMPTS = 3


class RedisServerNotInstalledError(RuntimeError):
    """``redis-server`` is not on the machine; the message carries the install command."""


class RedisServerError(RuntimeError):
    """``redis-server`` did not start or answer in time; the message carries its log tail."""


def _free_port() -> int:
    """Ask the kernel for an unused 127.0.0.1 port (racy, so callers retry on bind errors)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _find_binary(binary: str | None) -> str:
    """Resolve the server binary, failing with the install command rather than a bare ENOENT."""
    candidate = binary or shutil.which("redis-server") or "/usr/bin/redis-server"
    resolved = shutil.which(candidate)
    if resolved is None:
        raise RedisServerNotInstalledError(
            f"redis-server not found ({candidate!r}); install it with: {INSTALL_HINT}"
        )
    return resolved


def _log_tail(path: Path, lines: int = 30) -> str:
    """Last lines of a log file, for error messages."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "<no log>"


class RedisServer:
    """One ``redis-server`` process bound to 127.0.0.1 without persistence.

    ``kill()`` and ``restart()`` exist for fault tests: the port stays the same across a
    restart, so broker/backend URLs already handed to workers stay valid.
    """

    def __init__(self, data_dir: Path, *, binary: str | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.binary = _find_binary(binary)
        self.log_path = self.data_dir / "redis-server.log"
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    # --- lifecycle -------------------------------------------------------------------------------

    def start(self) -> RedisServer:
        """Start on a fresh free port, retrying if another process grabbed the port first."""
        last_error: RedisServerError | None = None
        for _ in range(_START_ATTEMPTS):
            self.port = _free_port()
            try:
                self._spawn()
                return self
            except RedisServerError as exc:
                last_error = exc
        assert last_error is not None
        raise last_error

    def restart(self) -> RedisServer:
        """Stop (if running) and start again on the same port, empty (nothing is persisted)."""
        if self.port == 0:
            return self.start()
        self.stop()
        self._spawn()
        return self

    def ensure_running(self) -> None:
        """Bring the server back after a fault test left it killed."""
        if not self.is_running():
            self.restart()

    def is_running(self) -> bool:
        """True while the server process is alive."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int:
        """PID of the running server."""
        if self._proc is None:
            raise RedisServerError("redis-server is not running")
        return self._proc.pid

    def stop(self, timeout: float = _STOP_TIMEOUT) -> None:
        """SIGTERM by PID, wait, then SIGKILL if it does not exit in time."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._sigkill(proc)
        self._proc = None

    def kill(self) -> None:
        """SIGKILL by PID (an abrupt crash, for fault tests); the port is kept for ``restart()``."""
        proc = self._proc
        if proc is None:
            return
        self._sigkill(proc)
        self._proc = None

    def __enter__(self) -> RedisServer:
        return self.start() if not self.is_running() else self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # --- access ----------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """Broker/backend URL for DB 0."""
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self, db: int = 0, **kwargs: object) -> redis.Redis:
        """A new redis-py client with short timeouts so a dead server fails fast, not hangs."""
        options: dict[str, object] = {"socket_timeout": 5.0, "socket_connect_timeout": 2.0}
        options.update(kwargs)
        return redis.Redis(host="127.0.0.1", port=self.port, db=db, **options)  # type: ignore[arg-type]

    def commandstats(self) -> dict[str, int]:
        """Calls per command since the last reset, e.g. ``{"set": 3, "setex": 10, "publish": 4}``.

        Subcommands keep Redis' own naming (``"config|resetstat"``, ``"client|setinfo"``).
        """
        with self.client() as client:
            info = client.info("commandstats")
        stats: dict[str, int] = {}
        for key, value in info.items():
            if key.startswith("cmdstat_") and isinstance(value, dict):
                stats[key.removeprefix("cmdstat_")] = int(value.get("calls", 0))
        return stats

    def reset_stats(self) -> None:
        """``CONFIG RESETSTAT`` so a test counts only its own backend writes."""
        with self.client() as client:
            client.config_resetstat()

    # --- internals -------------------------------------------------------------------------------

    def _spawn(self) -> None:
        """Launch on ``self.port`` and wait (bounded) until PING answers."""
        command = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.data_dir),
        ]  # fmt: skip
        with self.log_path.open("ab") as log:
            log.write(f"\n--- starting on port {self.port}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir,
                start_new_session=True,
            )
        self._wait_until_ready()

    def _wait_until_ready(self) -> None:
        """Poll PING until it answers, the process dies, or the deadline passes."""
        proc = self._proc
        assert proc is not None
        deadline = time.monotonic() + _START_TIMEOUT
        client = self.client(socket_timeout=0.5, socket_connect_timeout=0.5)
        try:
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    self._proc = None
                    raise RedisServerError(
                        f"redis-server exited with {proc.returncode} on port {self.port}:\n"
                        f"{_log_tail(self.log_path)}"
                    )
                with contextlib.suppress(redis.ConnectionError, redis.TimeoutError):
                    if client.ping():
                        return
                time.sleep(0.05)
        finally:
            client.close()
        self._sigkill(proc)
        self._proc = None
        raise RedisServerError(
            f"redis-server on port {self.port} did not answer PING within {_START_TIMEOUT}s:\n"
            f"{_log_tail(self.log_path)}"
        )

    @staticmethod
    def _sigkill(proc: subprocess.Popen[bytes]) -> None:
        """SIGKILL and reap, so no zombie outlives the test."""
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=_STOP_TIMEOUT)


# --- pytest fixtures ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One server per pytest process; fails (never skips) when redis-server is missing."""
    try:
        server = RedisServer(tmp_path_factory.mktemp("redis"), binary=os.environ.get(BINARY_ENV))
    except RedisServerNotInstalledError as exc:
        pytest.fail(str(exc), pytrace=False)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_db(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A client on an empty DB 0 with fresh command stats (restarts a server a test killed)."""
    redis_server.ensure_running()
    client = redis_server.client()
    client.flushdb()
    redis_server.reset_stats()
    try:
        yield client
    finally:
        client.close()
