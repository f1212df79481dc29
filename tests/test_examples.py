"""The seed examples, the README example and the demo run as documented."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from otel_progress.testing import SpanCapture

ROOT = Path(__file__).resolve().parent.parent


def _load(path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.setattr(time, "sleep", lambda _s: None)  # the seed sleeps 14 s
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_seed_task_updater_example_runs_as_the_seed_shows(
        monkeypatch: pytest.MonkeyPatch, spans: SpanCapture) -> None:
    """examples/seed_task_updater.py: subtask 3 runs after 2 fails; the exception re-raises."""
    module = _load(ROOT / "examples" / "seed_task_updater.py", monkeypatch)
    module.new_format_task("54bf5712", "first")
    with pytest.raises(ZeroDivisionError):
        module.new_format_task_1()
    assert "My subtask 3 in my task 2" in spans.names()
    run = spans.by_name("TEST")
    assert ["TEST - First part", "TEST - Second part"] == [
        s.name for s in spans.children_of(run)]


def test_seed_observer_example_returns_meta_for_the_frontend(
        monkeypatch: pytest.MonkeyPatch, spans: SpanCapture) -> None:
    """examples/seed_observer.py: the eager task returns mastf's success meta."""
    module = _load(ROOT / "examples" / "seed_observer.py", monkeypatch)
    meta = module.my_shared_task.apply().get()
    assert ("Finished task!", 100.0, False) == (meta["description"], meta["percent"],
                                                meta["pending"])
    span_events = [e.name for s in spans.finished() for e in s.events]
    assert ["Some information...", "Further information...", "Finished task!"] == span_events


def test_readme_example_runs(tmp_path: Path) -> None:
    """The README's Python example executes as written."""
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert blocks, "README has no python example"
    script = tmp_path / "readme_example.py"
    script.write_text(blocks[0])
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=120, cwd=ROOT)
    assert 0 == out.returncode, out.stderr


def test_demo_command_prints_log_payload_and_span_tree() -> None:
    """`otel-progress demo` runs the seeds on a worker and prints the seed log and span tree."""
    out = subprocess.run([sys.executable, "-m", "otel_progress.cli", "demo", "--scale", "0"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert 0 == out.returncode, out.stderr
    assert "\tTask Finished - 3 out of 4 jobs finished" in out.stdout
    assert "TaskUpdater seed: failed" in out.stdout
    assert re.search(r"└── My subtask 3 in my task 2  \[UNSET\]", out.stdout)
    assert "ZeroDivisionError: division by zero" in out.stdout


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_fanout_example_runs_two_workers_as_one_trace(
        redis_server: Any, otlp_receiver: Any) -> None:
    """examples/celery_fanout: the parent reports 4/4 children and the spans form one trace."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(REDIS_URL=redis_server.url, OTEL_EXPORTER_OTLP_ENDPOINT=otlp_receiver.endpoint,
               OTEL_EXPORTER_OTLP_INSECURE="true", OTEL_BSP_SCHEDULE_DELAY="100",
               OTEL_METRICS_EXPORTER="none", PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-m", "examples.celery_fanout.run"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=150)
    assert 0 == out.returncode, out.stdout + out.stderr
    assert "children: 4/4 finished, 100%" in out.stdout
    trace_id = re.search(r"trace id ([0-9a-f]{32})", out.stdout)
    assert trace_id, out.stdout
    spans = otlp_receiver.wait_for_spans(
        lambda s: sum(x.name == "run/fanout.scan_file" for x in s) == 4, timeout=20)
    assert {trace_id.group(1)} == {s.trace_id for s in spans if "scan" in s.name}


def test_demo_sends_its_spans_to_an_otlp_endpoint_when_set(otlp_receiver: Any) -> None:
    """With OTEL_EXPORTER_OTLP_ENDPOINT set, the demo's span tree reaches that backend."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(OTEL_EXPORTER_OTLP_ENDPOINT=otlp_receiver.endpoint, OTEL_METRICS_EXPORTER="none",
               OTEL_SERVICE_NAME="demo-test")
    out = subprocess.run([sys.executable, "-m", "otel_progress.cli", "demo", "--scale", "0"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)
    assert 0 == out.returncode, out.stderr
    spans = otlp_receiver.wait_for_spans(6, timeout=10)  # the run, 2 parts, 3 subtasks
    assert {"run/demo.new_format_task_1", "TEST - First part", "TEST - Second part",
            "My subtask 1 in my task 2", "My subtask 2 in my task 2",
            "My subtask 3 in my task 2"} <= {s.name for s in spans}
    assert {"demo-test"} == {s.resource["service.name"] for s in spans
                             if s.name == "run/demo.new_format_task_1"}
