"""Packaging: the sdist and wheel build, pass ``twine check``, carry their data files, and the
wheel installed into a fresh virtualenv runs the demo; the CHANGELOG keeps Keep a Changelog's
form."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from otel_progress import __version__
from tests.support import REPO_ROOT

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

CHANGE_TYPES = ("Added", "Changed", "Deprecated", "Removed", "Fixed", "Security")


def _env() -> dict[str, str]:
    """The environment without this checkout on PYTHONPATH or OTEL_* variables."""
    return {k: v for k, v in os.environ.items()
            if k != "PYTHONPATH" and not k.startswith(("OTEL_", "VIRTUAL_ENV"))}


def _check(cmd: list[str], *, cwd: Path, timeout: float) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True,
                          timeout=timeout, check=False)
    assert 0 == proc.returncode, f"{cmd}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """``python -m build`` of a copy of the checkout (the build writes egg-info beside it)."""
    base = tmp_path_factory.mktemp("packaging")
    source = base / "src"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO_ROOT,
                           capture_output=True, text=True, check=True).stdout.splitlines()
    for name in files:
        if (REPO_ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO_ROOT / name, source / name)
    _check([sys.executable, "-m", "build", "--sdist", "--wheel", "--outdir", str(base / "dist"),
            str(source)], cwd=base, timeout=180)
    yield base / "dist"


def test_sdist_and_wheel_pass_twine_check(dist: Path) -> None:
    """One sdist and one wheel of this version; ``twine check --strict`` passes both."""
    names = sorted(p.name for p in dist.iterdir())
    assert [f"otel_progress-{__version__}-py3-none-any.whl",
            f"otel_progress-{__version__}.tar.gz"] == names
    out = _check([sys.executable, "-m", "twine", "check", "--strict", *map(str, dist.iterdir())],
                 cwd=dist, timeout=60)
    assert 2 == out.count("PASSED"), out


def test_the_wheel_carries_the_data_files_and_the_entry_points(dist: Path) -> None:
    """py.typed, the JSON schema, the widget, the CLI script and the instrumentor entry point."""
    wheel = next(dist.glob("*.whl"))
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        entry_points = zf.read(f"otel_progress-{__version__}.dist-info/entry_points.txt").decode()
    assert {"otel_progress/py.typed", "otel_progress/schema/progress-v1.json",
            "otel_progress/web/static/otel-progress.js"} <= names
    assert "otel-progress = otel_progress.cli:main" in entry_points
    assert "otel_progress = otel_progress.celery:ProgressInstrumentor" in entry_points


def test_the_sdist_carries_the_readme_changelog_and_docs(dist: Path) -> None:
    """The sdist has what a packager rebuilds from: README, CHANGELOG, pyproject, the package."""
    sdist = next(dist.glob("*.tar.gz"))
    with tarfile.open(sdist) as tf:
        names = {name.split("/", 1)[1] for name in tf.getnames() if "/" in name}
    assert {"README.md", "CHANGELOG.md", "pyproject.toml", "docs/api.md",
            "otel_progress/__init__.py", "otel_progress/web/static/otel-progress.js"} <= names


def test_the_wheel_in_a_fresh_virtualenv_runs_the_demo(dist: Path, tmp_path: Path) -> None:
    """A new virtualenv, the wheel and its dependencies from the index, then otel-progress
    demo: it finishes, every seed outcome printed, nothing imported from this checkout."""
    venv = tmp_path / "venv"
    _check([sys.executable, "-m", "uv", "venv", "-q", "--python", sys.executable, str(venv)],
           cwd=tmp_path, timeout=60)
    python = venv / "bin" / "python"
    wheel = next(dist.glob("*.whl"))
    _check([sys.executable, "-m", "uv", "pip", "install", "-q", "--python", str(python),
            str(wheel)], cwd=tmp_path, timeout=180)
    where = _check([str(python), "-c", "import otel_progress; print(otel_progress.__file__)"],
                   cwd=tmp_path, timeout=30)
    assert str(venv) in where and str(REPO_ROOT) not in where, where
    out = _check([str(venv / "bin" / "otel-progress"), "demo", "--scale", "0.02"],
                 cwd=tmp_path, timeout=90)
    assert re.search(r"new_format_task_1.*fail|fail.*new_format_task_1", out, re.S), out
    assert "Time spent" in out, out


def test_the_changelog_keeps_the_keep_a_changelog_form() -> None:
    """Title, the format line, Unreleased first, then versions; change types from the form."""
    text = (REPO_ROOT / "CHANGELOG.md").read_text()
    assert text.startswith("# Changelog\n")
    assert "[Keep a Changelog](https://keepachangelog.com/" in text
    releases = re.findall(r"^## (.+)$", text, flags=re.M)
    assert "[Unreleased]" == releases[0]
    assert [] == [r for r in releases[1:]
                  if not re.fullmatch(r"\[\d+\.\d+\.\d+\] - \d{4}-\d{2}-\d{2}", r)]
    types = re.findall(r"^### (\w+)", text, flags=re.M)
    assert [] == [t for t in types if t not in CHANGE_TYPES]
