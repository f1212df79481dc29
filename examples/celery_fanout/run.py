"""Two workers, one trace: ``python -m examples.celery_fanout.run`` (from the repository root).

Starts a redis-server on a free 127.0.0.1 port (or uses ``REDIS_URL``), a worker on queue A and
one on queue B, runs ``scan`` over 4 files and prints the parent's payload as a frontend reads it,
with the children's progress aggregated, until every child finished. With
``OTEL_EXPORTER_OTLP_ENDPOINT`` set, the whole tree goes to that backend as one trace.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start_redis(tmp: str) -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("redis-server missing: apt-get install -y redis-server (or set REDIS_URL)")
    port = _free_port()
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", tmp], stdout=subprocess.DEVNULL)
    for _ in range(100):  # bounded: 10 s
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return proc, f"redis://127.0.0.1:{port}/0"
        time.sleep(0.1)
    proc.kill()
    sys.exit("redis-server did not start")


def _start_worker(queue: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "examples.celery_fanout.app", "worker",
         "-Q", queue, "-c", "2", "-n", f"{queue.lower()}@%h", "--loglevel", "WARNING",
         "--without-mingle", "--without-gossip", "--without-heartbeat"],
        cwd=ROOT, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT,
    )


def main() -> int:
    """Run the example; returns the exit status."""
    tmp = tempfile.mkdtemp(prefix="otel-progress-fanout-")
    redis_proc = None
    url = os.environ.get("REDIS_URL")
    if not url:
        redis_proc, url = _start_redis(tmp)
    env = {**os.environ, "REDIS_URL": url, "PYTHONPATH": str(ROOT)}
    os.environ["REDIS_URL"] = url
    workers = [_start_worker(q, env, Path(tmp) / f"worker-{q}.log") for q in ("A", "B")]
    try:
        from examples.celery_fanout.app import app, scan
        from otel_progress.celery import get_progress

        result = scan.delay([f"file-{i}.apk" for i in range(4)])
        print(f"scan {result.id} published; workers on queues A and B")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            payload = get_progress(result.id, app=app)
            if payload is not None:
                kids = payload.get("children_progress")
                summary = (f"{kids['finished']}/{kids['total']} finished, {kids['percent']:.0f}%"
                           if kids else "none yet")
                print(f"parent {payload['state']:<9} {payload['percent']:5.1f}%  "
                      f"children: {summary}")
                if payload["state"] == "succeeded" and kids and kids["finished"] == kids["total"]:
                    if payload["trace_id"]:
                        print(f"trace id {payload['trace_id']} (search it in Jaeger or Tempo)")
                    return 0
            time.sleep(0.3)
        print("timed out")
        return 1
    finally:
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
        for worker in workers:
            try:
                worker.wait(timeout=15)
            except subprocess.TimeoutExpired:
                worker.kill()
        if redis_proc is not None:
            redis_proc.terminate()
            redis_proc.wait(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
