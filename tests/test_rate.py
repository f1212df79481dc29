"""Rate and ETA in the payload: elapsed_s, a smoothed rate and eta_s, per run and per section."""

from __future__ import annotations

import math
import time

import jsonschema
import pytest

from otel_progress import TaskUpdater, _rate, track
from otel_progress._payload import comparable, from_celery, schema
from otel_progress._run import Node


def _node(start: float = 1000.0) -> Node:
    node = Node("n", None)
    node.start = start
    return node


def test_rate_is_seeded_with_the_average_since_the_start() -> None:
    """The first sample's rate is the value over the time since the node started."""
    node = _node()
    assert 10.0 == _rate._sample(node, "items", 20.0, 1002.0)


def test_rate_follows_a_steady_speed_exactly() -> None:
    """Samples at a constant speed keep the rate at that speed."""
    node = _node()
    rates = [_rate._sample(node, "items", 10.0 * s, 1000.0 + s) for s in (1, 2, 3, 4)]
    assert [10.0, 10.0, 10.0, 10.0] == rates


def test_rate_decays_exponentially_while_progress_stalls() -> None:
    """After a stall of TAU seconds the rate is 1/e of what it was (time-aware smoothing)."""
    node = _node()
    _rate._sample(node, "items", 10.0, 1001.0)
    stalled = _rate._sample(node, "items", 10.0, 1001.0 + _rate.TAU)
    assert math.isclose(10.0 / math.e, stalled, rel_tol=1e-9)


def test_samples_closer_than_min_dt_keep_the_rate() -> None:
    """Two payloads built at once do not turn a burst into a huge rate."""
    node = _node()
    _rate._sample(node, "items", 10.0, 1001.0)
    assert 10.0 == _rate._sample(node, "items", 500.0, 1001.0 + _rate.MIN_DT / 2)


def test_section_eta_is_what_is_left_over_the_rate() -> None:
    """A section at 20 of 100 items after 2 s at 10 items/s has 8 s left."""
    node = _node(time.time() - 2.0)
    node.current, node.total = 20, 100
    elapsed, rate, eta = _rate.section(node, node.start + 2.0)
    assert (2.0, 10.0, 8.0) == (elapsed, rate, eta)


def test_payload_carries_elapsed_rate_and_eta_per_run_and_section() -> None:
    """Top level and every section carry elapsed_s, rate and eta_s; the payload is valid."""
    updater = TaskUpdater(task_name="t", expected_sections=2)
    with updater(task_name="first"):
        updater.progress(current=1, total=4)
        time.sleep(0.06)
        payload = updater.to_dict()
    jsonschema.validate(payload, schema())
    section = payload["sections"][0]
    assert [float, float, float] == [type(payload[k]) for k in ("elapsed_s", "rate", "eta_s")]
    assert [float, float, float] == [type(section[k]) for k in ("elapsed_s", "rate", "eta_s")]


def test_a_section_that_reported_nothing_has_no_rate_and_no_eta() -> None:
    """A section without any progress reads rate null and eta_s null."""
    updater = TaskUpdater(task_name="t")
    with updater(task_name="quiet"):
        section = updater.to_dict()["sections"][0]
    assert (None, None) == (section["rate"], section["eta_s"])
    assert isinstance(section["elapsed_s"], float)


def test_a_run_without_progress_is_indeterminate_with_no_eta() -> None:
    """Before anything is known the payload is indeterminate and eta_s is null."""
    updater = TaskUpdater(task_name="t")
    with updater(task_name="quiet"):
        payload = updater.to_dict()
    assert (True, None) == (payload["indeterminate"], payload["eta_s"])


def test_a_run_with_known_section_progress_reports_a_numeric_eta() -> None:
    """Without expected_sections, one section reporting progress gives a numeric eta_s."""
    updater = TaskUpdater(task_name="t")
    with updater(task_name="work"):
        updater.progress(current=1, total=4)
        time.sleep(0.06)
        payload = updater.to_dict()
    assert (False, float) == (payload["indeterminate"], type(payload["eta_s"]))
    assert payload["eta_s"] > 0


def test_run_rate_is_percent_per_second_without_items_of_its_own() -> None:
    """A run whose progress comes from sections has its rate in percent/s of the overall."""
    updater = TaskUpdater(task_name="t", expected_sections=1)
    with updater(task_name="work"):
        updater.progress(current=1, total=2)
        time.sleep(0.2)
        payload = updater.to_dict()
    elapsed = payload["elapsed_s"]
    assert elapsed is not None and payload["rate"] is not None
    assert math.isclose(50.0 / elapsed, payload["rate"], rel_tol=0.01)  # the first sample


def test_run_rate_is_items_per_second_when_the_run_counts_items() -> None:
    """A run counting items of its own (track() outside any section) has an items/s rate."""
    updater = TaskUpdater(task_name="t")
    loop = track(range(1000), updater=updater)
    for index in loop:
        if index == 500:
            payload = updater.to_dict()
            break
    assert (500, 1000) == (payload["current"], payload["total"])
    assert payload["rate"] is not None and payload["rate"] > 100  # items, not percent


def test_a_succeeded_run_has_eta_zero() -> None:
    """Once the run finished successfully nothing is left: eta_s 0."""
    updater = TaskUpdater(task_name="t")
    with updater(task_name="work"):
        updater.progress(current=1, total=1)
    updater.insert_final_update()
    payload = updater.to_dict()
    assert (0.0, 0.0) == (payload["eta_s"], payload["sections"][0]["eta_s"])


def test_clock_keys_do_not_count_as_a_change() -> None:
    """Payloads that differ only in updated, elapsed_s, rate and eta_s compare equal."""
    updater = TaskUpdater(task_name="t")
    with updater(task_name="work"):
        updater.progress(current=1, total=4)
        first = updater.to_dict()
        time.sleep(0.06)
        second = updater.to_dict()
        updater.advance()
        third = updater.to_dict()
    assert first["elapsed_s"] != second["elapsed_s"]
    assert comparable(first) == comparable(second)
    assert comparable(second) != comparable(third)


@pytest.mark.parametrize(("celery_state", "eta"), [("SUCCESS", 0.0), ("FAILURE", None)])
def test_celery_ending_the_task_closes_the_eta(celery_state: str, eta: float | None) -> None:
    """A payload Celery ended (no final write of ours) reads eta_s 0 on success, else null."""
    updater = TaskUpdater(task_name="t")
    with updater(task_name="work"):
        updater.progress(current=1, total=4)
        time.sleep(0.06)
        payload = dict(updater.to_dict())
    closed = from_celery(payload, celery_state, exc_type="WorkerLostError", exc_message="x")
    assert closed is not None
    assert eta == closed["eta_s"]
