"""The producer side of a common-setups test, run as ``python -m tests.apps.setups_drive``.

It sends ``setups.steps`` (or runs it, in eager mode, while a thread reads), samples
``AsyncResult.state`` and ``get_progress()`` every 50 ms while the task runs, then prints one
``RESULT {json}`` line: the task id, what was seen mid-task, the return value and the final
payload. A child process keeps Django, gevent and the global providers out of the test's own.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from typing import Any

from otel_progress import force_flush
from otel_progress.celery import get_progress
from tests.apps.setups_app import app, migrate_django, steps


def _sample(task_id: str, result: Any, done: threading.Event, seen: list[dict[str, Any]],
            deadline: float) -> None:
    while not done.is_set() and time.monotonic() < deadline:
        _sample_once(task_id, result, seen)
        time.sleep(0.05)


def _sample_once(task_id: str, result: Any, seen: list[dict[str, Any]]) -> None:
    state = result.state if result is not None else None
    payload = get_progress(task_id, app=app)
    seen.append({"celery_state": state,
                 "state": payload and payload["state"],
                 "percent": payload and payload["percent"]})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=20)
    parser.add_argument("--delay", type=float, default=0.1)
    parser.add_argument("--migrate", action="store_true", help="only migrate the Django db")
    parser.add_argument("--read", metavar="TASK_ID", help="only read a task's payload, once")
    args = parser.parse_args()
    if args.migrate:
        migrate_django()
        return
    if args.read:
        print("RESULT " + json.dumps({"final": get_progress(args.read, app=app)}), flush=True)
        return
    seen: list[dict[str, Any]] = []
    done = threading.Event()
    deadline = time.monotonic() + 60
    if app.conf.task_always_eager:
        task_id = "eager-" + str(time.time_ns())
        reader = threading.Thread(target=_sample, args=(task_id, None, done, seen, deadline))
        reader.start()
        value = steps.apply_async((args.count, args.delay), task_id=task_id).get()
        done.set()
        reader.join(10)
    else:
        # one thread reads: rpc://'s reply queue belongs to the thread that consumes it
        result = steps.delay(args.count, args.delay)
        task_id = result.id
        while not result.ready() and time.monotonic() < deadline:
            _sample_once(task_id, result, seen)
            time.sleep(0.05)
        value = result.get(timeout=30)
    final = get_progress(task_id, app=app)
    force_flush()
    print("RESULT " + json.dumps({"task_id": task_id, "value": value, "seen": seen,
                                  "final": final}), flush=True)


if __name__ == "__main__":
    main()
