"""The documentation: the API reference builds with warnings as errors, and every migration
guide's before/after runs (eager mode) with the after keeping what the frontend read."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import otel_progress
import otel_progress.celery
from otel_progress import _attributes as A
from tests.support import REPO_ROOT, child_environment
from tests.support.otlp_receiver import OtlpGrpcReceiver

STANDINS = REPO_ROOT / "tests" / "support" / "standins"
"""``mastf`` is not on PyPI: the "before" of the mastf guide runs against a stand-in."""
GUIDES = REPO_ROOT / "docs" / "migration"


def _pairs(guide: Path) -> list[tuple[str, str]]:
    """The (before, after) code of a guide: ```python blocks whose first line is ``# before``
    or ``# after`` (the convention of every guide in docs/migration), in order."""
    blocks = re.findall(r"```python\n(# (before|after)\n.*?)```", guide.read_text(), re.S)
    befores = [code for code, kind in blocks if kind == "before"]
    afters = [code for code, kind in blocks if kind == "after"]
    assert len(befores) == len(afters), f"{guide.name}: unpaired examples"
    return list(zip(befores, afters, strict=True))


def _blocks(guide: Path) -> dict[str, str]:
    """The first before/after pair of a guide, by side."""
    before, after = _pairs(guide)[0]
    return {"before": before, "after": after}


def _run(code: str, tmp_path: Path, env: dict[str, str]) -> list[str]:
    """Run a guide's block as a script in a fresh interpreter; its stdout lines."""
    script = tmp_path / "block.py"
    script.write_text(code)
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60, env=child_environment(env), check=False)
    assert 0 == proc.returncode, f"{code}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    return proc.stdout.splitlines()


@pytest.mark.slow
def test_the_api_reference_builds_with_warnings_as_errors(tmp_path: Path) -> None:
    """mkdocs build --strict succeeds and documents every public name of the package."""
    proc = subprocess.run(
        # no -q: it silences the warnings that --strict counts, and the build would pass
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False,
        env=child_environment(),
    )
    output = proc.stdout + proc.stderr
    assert (0, []) == (proc.returncode, [line for line in output.splitlines()
                                         if line.startswith(("WARNING", "ERROR"))]), output
    html = (tmp_path / "site" / "api" / "index.html").read_text()
    public = [f"otel_progress.{name}" for name in otel_progress.__all__ if name != "__version__"]
    public += [f"otel_progress.celery.{name}" for name in otel_progress.celery.__all__]
    assert [] == [name for name in public if f'id="{name}"' not in html]


def test_every_migration_guide_has_a_before_and_an_after() -> None:
    """Each docs/migration/*.md holds runnable before/after pairs, ours among them."""
    guides = sorted(GUIDES.glob("*.md"))
    assert {"mastf-observer.md", "update-state.md"} <= {g.name for g in guides}
    assert [] == [g.name for g in guides if not _pairs(g)]


@pytest.mark.slow
def test_mastf_guide_after_returns_the_same_meta_and_exports_spans(tmp_path: Path) -> None:
    """mastf Observer -> otel_progress Observer: the returned meta keeps every mastf key and
    value the frontend read; the task's spans reach an OTLP receiver."""
    blocks = _blocks(GUIDES / "mastf-observer.md")
    before = json.loads(_run(blocks["before"], tmp_path, {"PYTHONPATH": str(STANDINS)})[-1])
    with OtlpGrpcReceiver() as receiver:
        lines = _run(blocks["after"], tmp_path, {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
                                                 "OTEL_METRICS_EXPORTER": "none"})
        spans = receiver.wait_for_spans(lambda s: any(x.name.startswith("run/") for x in s))
    after: dict[str, Any] = json.loads(lines[-2])
    assert before == {key: after[key] for key in before}
    assert "succeeded 100.0" == lines[-1]
    run = next(s for s in spans if s.name.startswith("run/"))
    assert ["Scanning app.apk", "Scanning lib.so", "Scan finished"] == [
        e.name for e in run.events]
    assert "scanner" == run.resource["service.name"]


@pytest.mark.slow
def test_update_state_guide_after_reports_the_same_and_exports_spans(tmp_path: Path) -> None:
    """Hand-rolled update_state -> TaskUpdater: same result and 100 %, and one section span."""
    blocks = _blocks(GUIDES / "update-state.md")
    before = json.loads(_run(blocks["before"], tmp_path, {})[-1])
    with OtlpGrpcReceiver() as receiver:
        lines = _run(blocks["after"], tmp_path, {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
                                                 "OTEL_METRICS_EXPORTER": "none"})
        spans = receiver.wait_for_spans(lambda s: {"import rows"} <= {x.name for x in s})
    assert before == json.loads(lines[-1])
    section = next(s for s in spans if s.name == "import rows")
    run = next(s for s in spans if s.span_id == section.parent_span_id)
    assert (100.0, "succeeded") == (section.attributes[A.PERCENT],
                                    section.attributes[A.SECTION_STATE])
    assert run.name.startswith("run/")
