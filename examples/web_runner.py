"""What each web example's one command does: Redis, a worker, the web server, one task.

``python -m examples.web_fastapi`` (or ``web_flask``, ``web_django``) from the repository root:
starts a redis-server on a free 127.0.0.1 port (or uses ``REDIS_URL``), a Celery worker, and the
framework's app on http://127.0.0.1:8000; runs the seed task and prints the page that shows it.
Ctrl-C stops everything. ``--check`` instead waits (over HTTP) until the task is final, reads
the page and the widget, prints ``check ok`` and exits: what the tests run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any, Protocol
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

ROOT = Path(__file__).resolve().parents[1]
PREFIX = "/progress"
"""Where every example mounts otel_progress's routes."""


class Server(Protocol):
    """A web server the runner can run on a thread and stop."""

    def serve_forever(self) -> None: ...

    def shutdown(self) -> None: ...


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        if os.environ.get("EXAMPLE_ACCESS_LOG"):
            super().log_message(format, *args)


def wsgi_server(app: Any, port: int) -> Server:
    """A threaded stdlib WSGI server on 127.0.0.1 (for the Flask and Django examples)."""
    server: Server = make_server("127.0.0.1", port, app, server_class=_ThreadingWSGIServer,
                                 handler_class=_QuietHandler)
    return server


class UvicornThread:
    """uvicorn as a Server (for the FastAPI example)."""

    def __init__(self, app: Any, port: int) -> None:
        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                                    log_level="warning", lifespan="off"))

    def serve_forever(self) -> None:
        self.server.run()

    def shutdown(self) -> None:
        self.server.should_exit = True


def _start_redis(tmp: str) -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("redis-server missing: apt-get install -y redis-server (or set REDIS_URL)")
    port = free_port()
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", tmp], stdout=subprocess.DEVNULL)
    for _ in range(100):  # bounded: 10 s
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return proc, f"redis://127.0.0.1:{port}/0"
        time.sleep(0.1)
    proc.kill()
    sys.exit("redis-server did not start")


def _start_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "examples.web_tasks", "worker", "-c", "2",
         "--loglevel", "WARNING", "--without-mingle", "--without-gossip", "--without-heartbeat"],
        cwd=ROOT, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT,
    )


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()


def _check(base: str, task_id: str) -> int:
    """Poll the status route until the task is final; read the page and the widget."""
    deadline = time.monotonic() + 60
    payload: dict[str, Any] = {}
    while time.monotonic() < deadline:
        status, body = _get(f"{base}{PREFIX}/tasks/{task_id}")
        if status == 200:
            payload = json.loads(body)
            print(f"  {payload['state']:<9} {payload['percent']:5.1f}%  {payload['description']}")
            if payload["state"] in ("succeeded", "failed", "revoked"):
                break
        time.sleep(0.3)
    else:
        print("timed out")
        return 1
    view_status, view = _get(f"{base}{PREFIX}/tasks/{task_id}/view")
    js_status, _js = _get(f"{base}{PREFIX}/static/otel-progress.js")
    names = [s["name"] for s in payload.get("sections", [])]
    ok = view_status == 200 and b"data-otel-progress" in view and js_status == 200
    ok = ok and names == ["First part", "Second part"]
    print("check ok" if ok else f"check failed: view {view_status}, js {js_status}, {names}")
    return 0 if ok else 1


def main(name: str, make: Callable[[int], Server], argv: list[str] | None = None) -> int:
    """Run one example: ``make(port)`` builds its server (after REDIS_URL is set)."""
    parser = argparse.ArgumentParser(prog=f"python -m examples.{name}")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    parser.add_argument("--check", action="store_true",
                        help="run one task to its end over HTTP, then exit (the tests)")
    args = parser.parse_args(argv)
    port = args.port or free_port()
    tmp = tempfile.mkdtemp(prefix=f"otel-progress-{name}-")
    redis_proc = None
    url = os.environ.get("REDIS_URL")
    if not url:
        redis_proc, url = _start_redis(tmp)
    os.environ["REDIS_URL"] = url
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [
        str(ROOT), os.environ.get("PYTHONPATH")]))}
    worker = _start_worker(env, Path(tmp) / "worker.log")
    server = make(port)
    thread = threading.Thread(target=server.serve_forever, name="web", daemon=True)
    thread.start()
    try:
        from examples.web_tasks import seed

        result = seed.delay(0.05 if args.check else 0.5)
        base = f"http://127.0.0.1:{port}"
        print(f"{name}: seed task {result.id} started; watch it at")
        print(f"  {base}{PREFIX}/tasks/{result.id}/view")
        if args.check:
            return _check(base, str(result.id))
        print("Ctrl-C stops the server, the worker and Redis.")
        while thread.is_alive():
            thread.join(0.5)
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        server.shutdown()
        thread.join(10)
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=15)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait(timeout=5)
        if redis_proc is not None:
            redis_proc.terminate()
            redis_proc.wait(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)
