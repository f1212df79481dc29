"""The seed examples, the README example and the demo run as documented."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

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
    """`otel-progress demo` prints the seed log, the status API and the span tree."""
    out = subprocess.run([sys.executable, "-m", "otel_progress.cli", "demo", "--scale", "0"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert 0 == out.returncode, out.stderr
    assert "\tTask Finished - 3 out of 4 jobs finished" in out.stdout
    assert '"status": 0' in out.stdout
    assert re.search(r"└── My subtask 3 in my task 2  \[UNSET\]", out.stdout)
    assert "ZeroDivisionError: division by zero" in out.stdout
