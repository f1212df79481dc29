"""Real-process test support: OTLP receivers, Redis, Celery workers, and child Python scripts.

``run_python`` runs a script in a fresh interpreter, so a test can use the global OTel providers
(settable once per process) and measure how long the process takes to exit.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["REPO_ROOT", "ScriptResult", "run_python"]

REPO_ROOT = Path(__file__).resolve().parents[2]
RESULT_PREFIX = "RESULT "
"""A child script reports to the test by printing this prefix and a JSON object."""


@dataclass(frozen=True)
class ScriptResult:
    """How a child script ended: exit code, output, wall time, and its RESULT line."""

    returncode: int
    stdout: str
    stderr: str
    wall_s: float
    ended_at: float
    """``time.time()`` in the parent when the child had exited."""

    @property
    def result(self) -> dict[str, Any]:
        """The JSON object of the script's last ``RESULT`` line."""
        lines = [line for line in self.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
        if not lines:
            raise AssertionError(f"no RESULT line\nstdout:\n{self.stdout}\nstderr:\n{self.stderr}")
        value: dict[str, Any] = json.loads(lines[-1][len(RESULT_PREFIX):])
        return value

    def describe(self) -> str:
        """Everything the child said, for assertion messages."""
        return (
            f"rc={self.returncode} wall={self.wall_s:.2f}s\n"
            f"--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}"
        )


def child_environment(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The test's environment without OTEL_* variables, the repo importable, plus ``env``."""
    clean = {key: value for key, value in os.environ.items() if not key.startswith("OTEL_")}
    clean["PYTHONPATH"] = os.pathsep.join(
        [str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    clean["PYTHONUNBUFFERED"] = "1"
    clean["OTEL_PROGRESS_STRICT"] = "1"  # internal errors raise in child processes too
    clean.update(env or {})
    return clean


def run_python(
    code: str, tmp_path: Path, *, env: Mapping[str, str] | None = None, timeout: float = 60.0
) -> ScriptResult:
    """Run ``code`` (dedented) as a script in a new interpreter; kill it after ``timeout``."""
    script = tmp_path / f"script_{time.monotonic_ns()}.py"
    script.write_text(textwrap.dedent(code))
    started = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, str(script)], cwd=tmp_path, env=child_environment(env),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        stdout, stderr = process.communicate(timeout=10)
        raise AssertionError(
            f"script still running after {timeout} s, killed (pid {process.pid})\n"
            f"--- stdout\n{stdout}\n--- stderr\n{stderr}"
        ) from None
    return ScriptResult(
        returncode=process.returncode, stdout=stdout, stderr=stderr,
        wall_s=time.monotonic() - started, ended_at=time.time(),
    )
