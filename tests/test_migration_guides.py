"""The migration guides (docs/migration/*.md): each before/after pair runs as written and the
two halves print the same thing."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.support import run_python

GUIDES = Path(__file__).resolve().parents[1] / "docs" / "migration"


def _pairs(guide: str) -> list[tuple[str, str]]:
    text = (GUIDES / guide).read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(# (before|after)\n.*?)```", text, re.S)
    befores = [code for code, kind in blocks if kind == "before"]
    afters = [code for code, kind in blocks if kind == "after"]
    assert len(befores) == len(afters) and befores, f"{guide}: unpaired examples"
    return list(zip(befores, afters, strict=True))


CASES = [(guide, index) for guide in ("celery-progress.md", "tqdm.md")
         for index in range(len(_pairs(guide)))]


@pytest.mark.parametrize(("guide", "index"), CASES)
def test_before_and_after_run_and_print_the_same(guide: str, index: int, tmp_path: Path) -> None:
    """The 'before' code (celery-progress / tqdm) and its 'after' both run and agree."""
    before, after = _pairs(guide)[index]
    old, new = run_python(before, tmp_path), run_python(after, tmp_path)
    assert (0, 0) == (old.returncode, new.returncode), old.describe() + new.describe()
    assert old.stdout.strip() and old.stdout == new.stdout, old.describe() + new.describe()


def test_the_after_code_changes_only_the_import_for_celery_progress() -> None:
    """celery-progress → compat: the task code differs in the import line alone."""
    (before, after), = _pairs("celery-progress.md")
    changed = [(a, b) for a, b in zip(before.splitlines(), after.splitlines(), strict=True)
               if a != b]
    assert [("# before", "# after"),
            ("from celery_progress.backend import ProgressRecorder",
             "from otel_progress.compat.celery_progress import ProgressRecorder")] == changed
