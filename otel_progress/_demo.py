"""The demo behind ``otel-progress demo``: the seed TaskUpdater example, its log and span tree.

It needs no server: spans are captured in memory (and also sent to an OTLP backend when
``OTEL_EXPORTER_OTLP_ENDPOINT`` is set), then printed as a tree.
"""

from __future__ import annotations

import json
import os
import time
import uuid

from otel_progress import TaskUpdater


def _sleep(seconds: float, scale: float) -> None:
    time.sleep(seconds * scale)


def seed_task_1(name: str = "TEST", scale: float = 0.05) -> TaskUpdater:
    """The seed's ``new_format_task_1``: two parts, the second calls a helper with 3 subtasks."""
    updater = TaskUpdater(task_uuid=uuid.uuid4(), task_name=name, verbose=1)
    with updater(task_name=name + " - First part"):
        _sleep(1, scale)
        updater.notify("Some notification related to the task")
    with updater(task_name=name + " - Second part"):
        _seed_task_2(updater, scale)
    updater.insert_final_update()
    return updater


def _seed_task_2(updater: TaskUpdater, scale: float) -> None:
    with updater(task_name="My subtask 1 in my task 2"):
        _sleep(1, scale)
        updater.notify("Some notification related to the task")
    with updater(task_name="My subtask 2 in my task 2"):
        _sleep(10, scale)
        1 / 0  # noqa: B018 - the seed's failing subtask
        updater.notify("Some notification related to the task")
    with updater(task_name="My subtask 3 in my task 2"):
        _sleep(1, scale)
        updater.notify("Some notification related to the task")


def run_demo(scale: float = 0.05, as_json: bool = False) -> int:
    """Run the seed example and print its log, status payload and span tree."""
    from otel_progress import configure, force_flush
    from otel_progress.testing import capture_spans

    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        configure(service_name=os.environ.get("OTEL_SERVICE_NAME", "otel-progress-demo"))
    with capture_spans() as spans:
        updater = seed_task_1(scale=scale)
    payload = updater.to_dict()
    print("== The run's log (seed format) ==")
    print(payload["log"])
    print("== Status API ==")
    keys = ("task_name", "task_uuid", "start", "end", "exception", "finished", "status",
            "percent", "jobs", "trace_id")
    summary = {k: payload[k] for k in keys}  # type: ignore[literal-required]
    print(json.dumps(payload if as_json else summary, indent=2))
    print("== The span tree (as Jaeger/Tempo show it) ==")
    print(spans.tree())
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        force_flush()
    return 0
