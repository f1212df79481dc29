"""The three web examples run with their one command: Redis, a worker, the app, one task."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support import REPO_ROOT, child_environment

pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]


@pytest.mark.parametrize("example", ["web_fastapi", "web_flask", "web_django"])
def test_web_example_runs_a_task_to_its_end(example: str) -> None:
    """`python -m examples.<example> --check`: the seed task reads final over HTTP, page and
    widget are served."""
    env = child_environment({})
    env.pop("REDIS_URL", None)
    out = subprocess.run([sys.executable, "-m", f"examples.{example}", "--check", "--port", "0"],
                         cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert (0, True) == (out.returncode, "check ok" in out.stdout), out.stdout + out.stderr
    assert "/progress/tasks/" in out.stdout


def test_django_history_admin_lists_filters_searches_and_exports() -> None:
    """`python -m examples.django_history --check`: log in, list, filter, search, export."""
    env = child_environment({})
    env.pop("REDIS_URL", None)
    out = subprocess.run([sys.executable, "-m", "examples.django_history", "--check", "--port",
                          "0"], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                         timeout=120)
    assert (0, True) == (out.returncode, "check ok" in out.stdout), out.stdout + out.stderr
    checked = [line.split()[-1] for line in out.stdout.splitlines() if line.startswith("  ")]
    assert ["ok"] * 7 == checked  # list, filter, search by id and by name, csv, json, log
