"""Bad input inside a task never raises: clamps, safe text, bounded memory, JSON-safe payload."""

from __future__ import annotations

import decimal
import gc
import json
import math
from typing import Any

import jsonschema
import psutil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from otel_progress import Observer, TaskUpdater
from otel_progress._payload import MAX_PAYLOAD_BYTES, build, dumps, schema
from otel_progress.testing import SpanCapture

WEIRD_NUMBERS = [float("nan"), float("inf"), -float("inf"), -5, 10**30, True, "12", "abc",
                 decimal.Decimal("2.5"), None, [], object()]
WEIRD_IDS = ["nan", "inf", "-inf", "negative", "huge", "bool", "numeric-str", "str", "decimal",
             "none", "list", "object"]  # stable ids: xdist workers must collect the same names


class Unprintable(Exception):
    """An exception whose __str__ and __repr__ raise."""

    def __str__(self) -> str:
        raise RuntimeError("no str for you")

    def __repr__(self) -> str:
        raise RuntimeError("no repr either")


def _valid(payload: Any) -> None:
    jsonschema.validate(payload, schema())
    json.loads(dumps(payload))  # strict JSON: no NaN/inf


@pytest.mark.parametrize("value", WEIRD_NUMBERS, ids=WEIRD_IDS)
def test_progress_with_weird_values_never_raises(value: object) -> None:
    """progress() with NaN, inf, negatives, huge, bool, Decimal, str keeps a valid payload."""
    updater = TaskUpdater(task_name="run")
    with updater(task_name="s"):
        updater.progress(current=value, total=value, percent=value)
        updater.advance(value)  # type: ignore[arg-type]
        payload = updater.to_dict()
    _valid(payload)
    pct = payload["sections"][0]["percent"]
    assert pct is None or 0.0 <= pct <= 100.0


@pytest.mark.parametrize("value", WEIRD_NUMBERS, ids=WEIRD_IDS)
def test_observer_update_with_weird_values_never_raises(value: object) -> None:
    """Observer.update with bad current/total/step returns a clamped meta."""
    observer = Observer(None)
    _, meta = observer.update("x", current=value, total=value)  # type: ignore[arg-type]
    _, meta2 = observer.update("y", step=value)  # type: ignore[arg-type]
    for m in (meta, meta2):
        assert 0.0 <= m["percent"] <= 100.0
        assert not math.isnan(m["percent"])
    _valid(build(observer.run))


def test_percent_over_100_is_clamped_and_never_goes_backwards() -> None:
    """percent=250 -> 100; a later lower percent keeps the high-water mark."""
    updater = TaskUpdater(task_name="run")
    with updater(task_name="s"):
        updater.progress(percent=250)
        assert 100.0 == updater.to_dict()["sections"][0]["percent"]
        updater.progress(percent=10)
        assert 100.0 == updater.to_dict()["sections"][0]["percent"]


def test_explicit_percent_wins_over_current_total() -> None:
    """progress(current=1, total=4, percent=80) -> 80 %."""
    updater = TaskUpdater(task_name="run")
    with updater(task_name="s"):
        updater.progress(current=1, total=4, percent=80)
        assert 80.0 == updater.to_dict()["sections"][0]["percent"]


def test_one_megabyte_message_is_capped_in_event_log_and_payload(spans: SpanCapture) -> None:
    """A 1 MB notification is truncated to the documented maximum everywhere."""
    updater = TaskUpdater(task_name="run")
    with updater(task_name="s"):
        updater.notify("x" * 1_000_000)
    payload = updater.to_dict()
    assert 1000 == len(spans.by_name("s").events[0].name)
    assert 1000 == len(payload["description"])
    assert len(dumps(payload).encode()) <= MAX_PAYLOAD_BYTES


def test_exception_whose_str_raises_is_recorded(spans: SpanCapture) -> None:
    """A failing section whose exception cannot print is still recorded and suppressed."""
    updater = TaskUpdater(task_name="run")
    with updater(task_name="s"):
        raise Unprintable()
    updater.insert_final_update()
    payload = updater.to_dict()
    assert "<unprintable Unprintable>" == payload["exception"]
    assert "Failed" in payload["log"]
    _valid(payload)


@pytest.mark.parametrize("message", [12, None, b"bytes", {"a": 1}, "\ud800 lone surrogate",
                                     "ctrl\x00\x1b[31m", "%s %d %%", ""],
                         ids=["int", "none", "bytes", "dict", "surrogate", "ctrl", "percent",
                              "empty"])
def test_non_str_and_odd_messages_are_safe(message: object, spans: SpanCapture) -> None:
    """Non-str, empty, surrogate and control-character messages give valid UTF-8 text."""
    updater = TaskUpdater(task_name="run")
    with updater(task_name=message):  # type: ignore[arg-type]
        updater.notify(message)
    payload = updater.to_dict()
    _valid(payload)
    payload["log"].encode("utf-8")
    spans.finished()[0].events[0].name.encode("utf-8")


def test_attribute_values_otel_does_not_accept_become_text(spans: SpanCapture) -> None:
    """notify(**attrs) with dicts, None, huge ints, mixed lists: all recorded as text."""
    updater = TaskUpdater(task_name="run")
    with updater(task_name="s"):
        updater.notify("m", d={"a": 1}, n=None, big=10**40, mixed=[1, "a"], ok=[1, 2])
    attrs = dict(spans.by_name("s").events[0].attributes or {})
    assert ("{'a': 1}", "None", str(10**40), "[1, 'a']", (1, 2)) == (
        attrs["d"], attrs["n"], attrs["big"], attrs["mixed"], attrs["ok"])


def test_deep_nesting_is_capped_in_the_payload() -> None:
    """50 levels of nesting: the payload tree stops at the depth cap with a marker."""
    updater = TaskUpdater(task_name="run")
    stack = [updater(task_name=f"level {i}") for i in range(50)]
    for section in stack:
        section.__enter__()
    payload = updater.to_dict()
    for section in reversed(stack):
        section.__exit__(None, None, None)
    node: Any = payload["sections"][0]
    depth = 1
    while node.get("children") and "omitted" not in node["children"][0]:
        node = node["children"][0]
        depth += 1
    assert 6 == depth
    _valid(payload)


def test_ten_thousand_sections_keep_the_payload_small() -> None:
    """10,000 sections: the tree keeps head and tail with an omitted marker, under 16 KiB."""
    updater = TaskUpdater(task_name="run")
    for i in range(10_000):
        with updater(task_name=f"s{i}"):
            pass
    payload = updater.to_dict()
    names = [s["name"] for s in payload["sections"]]
    assert ["s0", "s9", "…", "s9990", "s9999"] == [names[0], names[9], names[10], names[11],
                                                   names[-1]]
    assert 9980 == payload["sections"][10]["omitted"]
    assert {"finished": 10_000, "total": 10_000} == payload["jobs"]
    assert len(dumps(payload).encode()) <= MAX_PAYLOAD_BYTES


def test_a_million_notifications_stay_in_bounded_memory() -> None:
    """1,000,000 notifications in one section: memory and log stay bounded."""
    process = psutil.Process()
    updater = TaskUpdater(task_name="run")
    with updater(task_name="s"):
        for i in range(10_000):
            updater.notify(f"warm-up {i}")
        gc.collect()
        before = process.memory_info().rss
        for i in range(1_000_000):
            updater.notify(f"notification {i}")
        gc.collect()
        grown = process.memory_info().rss - before
    assert grown < 20_000_000, f"RSS grew by {grown} bytes"
    log = updater.to_dict()["log"]
    assert "notification 999999" in log and "lines omitted" in log


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    current=st.one_of(st.none(), st.integers(), st.floats(allow_nan=True), st.text(max_size=5)),
    total=st.one_of(st.none(), st.integers(), st.floats(allow_nan=True), st.booleans()),
    percent=st.one_of(st.none(), st.floats(allow_nan=True), st.decimals(allow_nan=False)),
    message=st.text(max_size=50),
    name=st.text(max_size=30),
)
def test_any_progress_input_keeps_a_valid_payload(
        current: object, total: object, percent: object, message: str, name: str) -> None:
    """Property: any progress/message/name combination gives a schema-valid JSON payload."""
    updater = TaskUpdater(task_name="run")
    with updater(task_name=name):
        updater.progress(current=current, total=total, percent=percent)
        updater.notify(message)
    updater.insert_final_update()
    _valid(updater.to_dict())


def test_bad_input_is_logged_once_per_updater(caplog: pytest.LogCaptureFixture) -> None:
    """NaN a thousand times logs one warning per updater, not one per call."""
    first, second = TaskUpdater(task_name="a"), TaskUpdater(task_name="b")
    for updater in (first, second):
        for _ in range(1000):
            updater.progress(percent=float("nan"))
    assert 2 == sum("NaN" in r.getMessage() for r in caplog.records)


def test_payload_without_an_sdk_has_null_trace_ids(tmp_path: Any) -> None:
    """No SDK tracer provider: the payload is still built; trace_id/span_id are null."""
    import subprocess
    import sys

    script = (
        "from otel_progress import TaskUpdater\n"
        "u = TaskUpdater(task_name='x')\n"
        "with u(task_name='s'):\n    u.notify('m')\n"
        "u.insert_final_update()\n"
        "d = u.to_dict()\n"
        "print(d['trace_id'], d['span_id'], d['jobs'], d['status'])\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=60, check=True)
    assert "None None {'finished': 1, 'total': 1} 1" == out.stdout.strip()


def test_observer_meta_values_that_are_not_json_are_published_as_text() -> None:
    """meta={"when": datetime, "ratio": nan} keeps a valid payload with the log intact."""
    import datetime

    observer = Observer(None)
    observer.update("x", meta={"when": datetime.date(2026, 1, 2), "ratio": float("nan"),
                               "ok": [1, 2]})
    payload: Any = build(observer.run)
    _valid(payload)
    assert ("2026-01-02", "nan", [1, 2]) == (payload["when"], payload["ratio"], payload["ok"])
