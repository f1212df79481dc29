"""``otel-progress demo``: a real worker runs the seed tasks; live progress in the terminal and
the browser; the trace tree at the end. Nothing to install or start by hand.

The embedded default is kombu's **filesystem** transport and Celery's **filesystem** result
backend in a temporary directory: both ship with Celery and kombu (no SQLAlchemy, no server),
work across the worker's prefork children, and vanish with the directory, which the demo removes
also when interrupted. ``REDIS_URL`` (or ``--broker``/``--backend``) uses those instead. Spans go
to an in-process OTLP receiver (and on to ``OTEL_EXPORTER_OTLP_ENDPOINT`` when it is set).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rich.console import Console

from otel_progress._demo_app import BACKEND_ENV, BROKER_ENV, DATA_ENV, SCALE_ENV
from otel_progress._demo_app import client as demo_client
from otel_progress._demo_receiver import DemoReceiver, render
from otel_progress._terminal import TaskView
from otel_progress.celery import ProgressInstrumentor, get_progress
from otel_progress.history import HISTORY_URL_ENV, store_for

TASKS = (
    ("demo.new_format_task_1", (), "TaskUpdater seed"),
    ("demo.my_shared_task", (True,), "Observer seed"),
    ("demo.fan_out", (4,), "fan-out (group)"),
)
RUN_TIMEOUT = 90.0
"""Seconds the demo waits for its tasks at most (they take a few seconds)."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class _Worker:
    """The demo's ``celery worker`` (prefork, 2 children), stopped by PID in every case."""

    def __init__(self, env: dict[str, str], cwd: Path, log: Path) -> None:
        self.log = log
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "otel_progress._demo_app", "worker",
                 "--pool", "prefork", "--concurrency", "2", "--loglevel", "WARNING",
                 "--without-mingle", "--without-gossip", "--without-heartbeat",
                 "--hostname", f"otel-progress-demo-{os.getpid()}@%h"],
                env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True,
            )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # the pool children, whatever happened
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)


class _StatusServer:
    """The status app (``otel_progress.web``) under uvicorn on 127.0.0.1, in a thread."""

    def __init__(self, app: Any) -> None:
        self.url: str | None = None
        self._server: Any = None
        self._thread: threading.Thread | None = None
        try:
            import uvicorn  # type: ignore[import-not-found,unused-ignore]

            from otel_progress.web import create_app  # type: ignore[import-not-found,unused-ignore]
        except ImportError:
            return  # the [web] extra is not installed: the terminal view is enough
        port = _free_port()
        config = uvicorn.Config(create_app(app), host="127.0.0.1", port=port,
                                log_level="warning", lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="otel-progress-demo-web",
                                        daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=5)


@contextlib.contextmanager
def _workspace() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="otel-progress-demo-"))
    try:
        for sub in ("broker", "processed", "results", "control"):
            (root / sub).mkdir()
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run_demo(*, scale: float = 0.1, keep_open: bool = False, broker: str | None = None,
             backend: str | None = None, console: Console | None = None) -> int:
    """Run the demo; 0 when every task reached its expected end, 130 when interrupted."""
    console = console or Console(soft_wrap=True)  # a URL must stay on one line
    broker = broker or os.environ.get("REDIS_URL")
    backend = backend or os.environ.get("REDIS_URL")
    upstream = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    receiver = DemoReceiver(forward_to=upstream)
    worker: _Worker | None = None
    status: _StatusServer | None = None
    try:
        with _workspace() as root:
            env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
            env.update({
                DATA_ENV: str(root), SCALE_ENV: str(scale),
                "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
                "OTEL_BSP_SCHEDULE_DELAY": "200", "OTEL_METRICS_EXPORTER": "none",
                "OTEL_SERVICE_NAME": os.environ.get("OTEL_SERVICE_NAME", "otel-progress-demo"),
                "PYTHONUNBUFFERED": "1",
                "TMPDIR": str(root),  # billiard's own temporary files go with the workspace
            })
            if broker:
                env[BROKER_ENV] = broker
            if backend:
                env[BACKEND_ENV] = backend
            # the task history: the user's, the Redis backend's, else SQLite in the workspace
            history = os.environ.get(HISTORY_URL_ENV) or (
                None if (backend or "").startswith("redis") else f"sqlite:///{root}/history.db")
            if history:
                env[HISTORY_URL_ENV] = history
            worker = _Worker(env, root, root / "worker.log")
            client = demo_client(broker, backend, str(root))
            ProgressInstrumentor().instrument(history=history)
            where = broker or f"filesystem broker and backend in {root}"
            console.print(f"[bold]otel-progress demo[/]: a prefork worker (2 children), {where}")
            with client:
                results = {client.send_task(name, args=args).id: label
                           for name, args, label in TASKS}
                status = _StatusServer(client)
                for task_id, label in results.items():
                    if status.url:
                        console.print(f"  {label}: {status.url}/tasks/{task_id}/view")
                    else:
                        console.print(f"  {label}: {task_id}")
                view = TaskView(lambda tid: get_progress(tid, app=client), results,
                                console=console)
                final = view.run(RUN_TIMEOUT, stop=lambda: worker is not None
                                 and not worker.alive())
                payloads = view.payloads
            _report(console, results, payloads, receiver)
            _report_history(console, client)
            if keep_open and status is not None and status.url:
                console.print(f"Serving {status.url} until Ctrl-C")
                while True:
                    time.sleep(1)
            return 0 if final and _expected(payloads) else 1
    except KeyboardInterrupt:
        console.print("interrupted: stopping the worker and removing the demo's files")
        return 130
    finally:
        if status is not None:
            status.stop()
        if worker is not None:
            worker.stop()
        receiver.stop()


def _report_history(console: Console, client: Any) -> None:
    """The runs as the task history keeps them (``otel-progress history`` lists the same)."""
    store = store_for(client)
    if store is None:
        return
    console.rule(f"The task history ({store!r})")
    try:
        rows, _ = store.list(limit=20)
    except Exception as exc:
        console.print(f"unreadable: {type(exc).__name__}: {exc}", markup=False)
        return
    for row in rows:
        console.print(f"{row['state']:<9} {row['task_name']:<26} attempt {row['attempt']} jobs "
                      f"{row['jobs_finished']}/{row['jobs_total']} {row['duration_s']} s "
                      f"{row['exc_type'] or ''}", markup=False, highlight=False)


def _expected(payloads: dict[str, Any]) -> bool:
    """The seeds end as written: the TaskUpdater seed re-raises (failed), the others succeed."""
    states = [p.get("state") if p else None for p in payloads.values()]
    return states == ["failed", "succeeded", "succeeded"]


def _report(console: Console, results: dict[str, str], payloads: dict[str, Any],
            receiver: DemoReceiver) -> None:
    console.rule("Outcome")
    for task_id, label in results.items():
        payload = payloads.get(task_id) or {}
        jobs = payload.get("jobs") or {}
        console.print(f"{label}: {payload.get('state')}, {payload.get('percent')} %, jobs "
                      f"{jobs.get('finished')}/{jobs.get('total')}, "
                      f"trace {payload.get('trace_id')}", markup=False, highlight=False)
    seed = payloads.get(next(iter(results))) or {}
    console.rule("The seed's log")
    console.file.write(seed.get("log", ""))  # verbatim: the seed's log has tabs
    console.file.flush()
    console.rule("The span trees (as Jaeger/Tempo show them)")
    deadline = time.monotonic() + 10
    wanted = {p.get("trace_id") for p in payloads.values() if p and p.get("trace_id")}
    while time.monotonic() < deadline:
        roots = {s.trace_id for s in receiver.spans() if not s.parent_id}
        if wanted <= roots:
            break
        time.sleep(0.2)
    for task_id in results:
        payload = payloads.get(task_id) or {}
        if payload.get("trace_id"):
            console.print(render(receiver.spans(), payload["trace_id"]), markup=False,
                          highlight=False)
