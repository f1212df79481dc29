"""track(): tqdm-style loop reporting, as its own section or inside the current one."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

import otel_progress
from otel_progress import TaskUpdater, track
from otel_progress import _attributes as A
from otel_progress.testing import SpanCapture


def _section(updater: TaskUpdater, index: int = 0) -> dict[str, object]:
    return dict(updater.to_dict()["sections"][index])


def _items(count: int) -> Iterator[int]:
    yield from range(count)


def test_track_yields_every_item_unchanged() -> None:
    """The loop sees exactly the iterable's items, in order."""
    updater = TaskUpdater(task_name="t")
    assert ["a", "b", "c"] == list(updater.track(["a", "b", "c"], description="letters"))


def test_track_with_description_is_a_section_with_len_as_total(spans: SpanCapture) -> None:
    """With a description the items count in a section of that name, total from len()."""
    updater = TaskUpdater(task_name="import")
    seen = []
    for _row in updater.track(range(4), description="rows"):
        seen.append(_section(updater))
    updater.insert_final_update()
    assert [0.0, 25.0, 50.0, 75.0] == [s["percent"] for s in seen]
    assert ["running"] * 4 == [s["state"] for s in seen]
    span = spans.by_name("rows")
    assert (4, 4, 100.0) == (span.attributes[A.CURRENT], span.attributes[A.TOTAL],
                             span.attributes[A.PERCENT])
    assert "succeeded" == _section(updater)["state"]


def test_track_without_description_counts_in_the_current_section() -> None:
    """Without a description the items count in the section that is open around the loop."""
    updater = TaskUpdater(task_name="t")
    with updater(task_name="outer"):
        for _ in updater.track(range(10)):
            pass
        inside = _section(updater)
    assert (50.0, []) == (updater.to_dict()["percent"], inside["children"])
    assert 100.0 == inside["percent"]


def test_two_loops_in_one_section_add_up() -> None:
    """Two untitled loops in one section add their items and totals."""
    updater = TaskUpdater(task_name="t")
    with updater(task_name="both"):
        for _ in updater.track(range(3)):
            pass
        loop = updater.track(range(1))
        next(loop)
        middle = updater._innermost().counters()
        list(loop)
    assert (3, 4, 75.0) == middle


def test_total_argument_wins_over_len(spans: SpanCapture) -> None:
    """An explicit total replaces len() (e.g. a loop that stops early on purpose)."""
    updater = TaskUpdater(task_name="t")
    loop = updater.track(range(100), total=10, description="first ten")
    for index in loop:
        if index == 5:
            break
    del loop
    span = spans.by_name("first ten")
    assert (5, 10, 50.0) == (span.attributes[A.CURRENT], span.attributes[A.TOTAL],
                             span.attributes[A.PERCENT])


def test_a_generator_without_len_has_no_total_and_no_eta() -> None:
    """An iterable without len() counts items, with no total, so the section has no ETA."""
    updater = TaskUpdater(task_name="t")
    for _ in updater.track(_items(3), description="stream"):
        pass
    with updater(task_name="after"):
        for _ in updater.track(_items(2), description="stream 2"):
            section = updater.to_dict()["sections"][1]["children"][0]
    assert (None, None) == (section["percent"], section["eta_s"])
    assert isinstance(section["rate"], float)


def test_module_track_reports_to_the_latest_updater() -> None:
    """otel_progress.track() without an updater reports to the updater made in this context."""
    updater = TaskUpdater(task_name="t")
    with updater(task_name="outer"):
        for _ in track(range(2), description="inner loop"):
            pass
    assert ["inner loop"] == [c["name"] for c in _section(updater)["children"]]  # type: ignore[attr-defined]


def test_module_track_outside_any_updater_is_a_run_of_its_own(spans: SpanCapture) -> None:
    """With no updater anywhere, track() opens a run named by its description, ended after."""
    otel_progress._track._latest.set(None)
    for _ in track(range(3), description="standalone"):
        pass
    gc.collect()
    assert "standalone  [OK]  100%\n└── standalone  [UNSET]  100%" == spans.tree()


def test_a_loop_left_early_closes_its_section_as_interrupted(spans: SpanCapture) -> None:
    """break (or an exception in the body) closes the section at its count, interrupted."""
    updater = TaskUpdater(task_name="t")
    with pytest.raises(ValueError, match="body"):
        for index in updater.track(range(10), description="loop"):
            if index == 3:
                raise ValueError("body")
    section = _section(updater)
    assert ("succeeded", "GeneratorExit") == (section["state"], section["interrupted"])
    span = spans.by_name("loop")
    assert (3, "GeneratorExit") == (span.attributes[A.CURRENT], span.attributes[A.INTERRUPTED])


def test_an_iterable_that_raises_fails_the_section_and_the_error_passes() -> None:
    """An exception from the iterable itself fails the section and reaches the loop."""
    def broken() -> Iterator[int]:
        yield 1
        raise OSError("disk gone")

    updater = TaskUpdater(task_name="t")
    with pytest.raises(OSError, match="disk gone"):
        for _ in updater.track(broken(), description="read"):
            pass
    section = _section(updater)
    assert ("failed", "OSError") == (section["state"], section["error_type"])


def test_track_of_a_non_iterable_raises_type_error_at_once() -> None:
    """Misuse fails where it is written: track(5) raises TypeError before any loop."""
    with pytest.raises(TypeError):
        track(5)  # type: ignore[arg-type]


def test_a_bad_total_is_ignored_and_len_is_not_used() -> None:
    """A non-number or non-positive total is ignored (logged once): no total, no crash."""
    updater = TaskUpdater(task_name="t")
    for _ in updater.track([1, 2], total="many", description="odd"):  # type: ignore[arg-type]
        pass
    for _ in updater.track([1, 2], total=0, description="zero"):
        pass
    assert [100.0, 100.0] == [s["percent"] for s in updater.to_dict()["sections"]]


def test_the_per_item_path_is_one_add_on_the_section() -> None:
    """Each item adds 1 to the section's counter: 10,000 items read current 10,000."""
    updater = TaskUpdater(task_name="t")
    with updater(task_name="many"):
        for _ in updater.track(range(10_000)):
            pass
        assert (10_000, 10_000, 100.0) == updater._innermost().counters()
