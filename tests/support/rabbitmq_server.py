"""A throwaway RabbitMQ broker on 127.0.0.1 for tests, plus the session fixture that owns it.

Debian's ``rabbitmq-server`` is started as the current user (not through the init script),
with its own ``epmd`` on a free port, its own ``HOME`` (the Erlang cookie), node name, data,
log, config and plugin files in a temporary directory, and every listener on loopback. Both
processes are stopped by PID; nothing is left behind. Without the package the fixture fails
with the install command (DECISIONS 24: never a skip).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.support.redis_server import _free_port

SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
"""The server script itself: ``/usr/sbin/rabbitmq-server`` switches to the rabbitmq user."""
INSTALL = "apt-get update && apt-get install -y rabbitmq-server"
_START_TIMEOUT = 60.0
_STOP_TIMEOUT = 20.0
_READY_LINE = "Server startup complete"


class RabbitMQServer:
    """One ``rabbitmq-server`` (and its ``epmd``) on loopback ports, started and stopped by PID."""

    def __init__(self, base: Path) -> None:
        if not (os.path.exists(SERVER) and shutil.which("epmd")):
            pytest.fail(f"rabbitmq-server missing: {INSTALL}", pytrace=False)
        self.base = base
        self.port = _free_port()
        self.epmd_port = _free_port()
        self.dist_port = _free_port()
        self.node = f"otelprogress{uuid.uuid4().hex[:8]}@localhost"
        self.log_path = base / "rabbitmq.log"
        self._epmd: subprocess.Popen[bytes] | None = None
        self._server: subprocess.Popen[bytes] | None = None
        self._family: list[psutil.Process] = []

    @property
    def url(self) -> str:
        """The broker URL Celery takes (the default ``guest`` user, allowed on loopback)."""
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    def _env(self) -> dict[str, str]:
        home = self.base / "home"
        for sub in ("home", "mnesia", "log"):
            (self.base / sub).mkdir(parents=True, exist_ok=True)
        (self.base / "enabled_plugins").write_text("[].\n")
        (self.base / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{self.port}\n"
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("RABBITMQ_")}
        env.update({
            "HOME": str(home),
            "ERL_EPMD_PORT": str(self.epmd_port),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.base / "log"),
            "RABBITMQ_LOGS": "-",
            "RABBITMQ_CONFIG_FILE": str(self.base / "rabbitmq"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.base / "enabled_plugins"),
            "RABBITMQ_PID_FILE": str(self.base / "rabbit.pid"),
            "RABBITMQ_CONF_ENV_FILE": str(self.base / "rabbitmq-env.conf"),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS":
                "-kernel inet_dist_use_interface {127,0,0,1}",  # distribution on loopback too
        })  # fmt: skip
        return env

    def start(self) -> RabbitMQServer:
        """Start epmd and the broker; wait (bounded) until it accepts AMQP connections."""
        env = self._env()
        self._epmd = subprocess.Popen(
            ["epmd", "-port", str(self.epmd_port), "-address", "127.0.0.1"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env=env, start_new_session=True,
        )
        with self.log_path.open("wb") as log:
            self._server = subprocess.Popen(
                [SERVER], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=env, cwd=self.base, start_new_session=True,
            )
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            if self._server.poll() is not None:
                self._fail(f"exited with {self._server.returncode} before becoming ready")
            if _READY_LINE in self._log() and self._accepts():
                self._family = self._processes()
                return self
            time.sleep(0.1)
        self._fail(f"not ready within {_START_TIMEOUT} s")
        return self  # unreachable: _fail raises

    def stop(self) -> None:
        """SIGTERM the broker by PID (it shuts down cleanly), SIGKILL on overrun, then epmd."""
        family = self._processes() or self._family
        if self._server is not None and self._server.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self._server.send_signal(signal.SIGTERM)
            try:
                self._server.wait(_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self._server.pid, signal.SIGKILL)
                self._server.wait(5)
        _, alive = psutil.wait_procs(family, timeout=5)
        for proc in alive:  # erl_child_setup and inet_gethost leave with beam; never later
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        if self._epmd is not None and self._epmd.poll() is None:
            self._epmd.terminate()
            try:
                self._epmd.wait(5)
            except subprocess.TimeoutExpired:
                self._epmd.kill()
                self._epmd.wait(5)

    def _processes(self) -> list[psutil.Process]:
        if self._server is None:
            return []
        try:
            main = psutil.Process(self._server.pid)
            return [main, *main.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def _accepts(self) -> bool:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(0.5)
            return sock.connect_ex(("127.0.0.1", self.port)) == 0

    def _log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def _fail(self, why: str) -> None:
        tail = "\n".join(self._log().splitlines()[-30:])
        self.stop()
        raise RuntimeError(f"rabbitmq-server {why}\nlog: {self.log_path}\n{tail}")

    def __enter__(self) -> RabbitMQServer:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()


@pytest.fixture(scope="session")
def rabbitmq_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitMQServer]:
    """One RabbitMQ broker for the whole test session (it takes a few seconds to boot)."""
    with RabbitMQServer(tmp_path_factory.mktemp("rabbitmq")) as server:
        yield server
