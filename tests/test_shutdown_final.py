"""A task that ends while the interpreter shuts down still gets its final payload."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from otel_progress._backend import own_key
from tests.support.redis_server import RedisServer

pytestmark = [pytest.mark.timeout(60)]

SCRIPT = textwrap.dedent("""
    import sys, threading, time
    from celery import Celery
    from otel_progress import TaskUpdater
    from otel_progress.celery import ProgressInstrumentor

    url, task_id = sys.argv[1], sys.argv[2]
    app = Celery("late", broker=url, backend=url)
    ProgressInstrumentor().instrument()

    @app.task(bind=True, name="late.ends_at_exit")
    def ends_at_exit(self):
        updater = TaskUpdater(expected_sections=1)
        with updater(task_name="the only step"):
            time.sleep(0.5)  # the main thread has returned by now: the interpreter shuts down
        return 1

    threading.Thread(target=lambda: ends_at_exit.apply(task_id=task_id)).start()
""")


def test_a_task_ending_during_interpreter_shutdown_writes_its_final_payload(
        redis_server: RedisServer, tmp_path: Path) -> None:
    """The final-write thread pool refuses work once shutdown began; the write is then made
    inline (bounded by our client's timeouts), not lost as an internal error."""
    task_id = f"late-{uuid.uuid4().hex}"
    script = tmp_path / "late.py"
    script.write_text(SCRIPT)
    proc = subprocess.run([sys.executable, str(script), redis_server.url, task_id],
                          capture_output=True, text=True, timeout=30,
                          env={"PYTHONPATH": str(Path(__file__).resolve().parents[1]),
                               "OTEL_PROGRESS_STRICT": "0", "PATH": "/usr/bin:/bin"})
    assert "internal error" not in proc.stderr, proc.stderr
    raw = redis_server.client().get(own_key(task_id))
    assert raw is not None, proc.stderr
    payload = json.loads(raw)
    assert ("succeeded", 100.0) == (payload["state"], payload["percent"])
