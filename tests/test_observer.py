"""Observer: mastf's (state, meta) API, its fixed defects, and the span it records on."""

from __future__ import annotations

import time
from typing import Any

import pytest
from opentelemetry.trace import StatusCode

from otel_progress import Observer, _publish
from otel_progress import _attributes as A
from otel_progress.testing import SpanCapture

MASTF_KEYS = {"pending", "description", "current", "total", "percent"}


class FakeTask:
    """A stand-in with mastf's only contract: ``update_state(state=, meta=)`` and a name."""

    name = "fake.task"

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def update_state(self, state: str, meta: dict[str, Any]) -> None:
        self.calls.append((state, meta))


def test_seed_sequence_gives_34_then_39_percent() -> None:
    """pos=34, update(current=34), update(increment, step=5): 34 % then 39 %."""
    observer = Observer(None)
    observer.pos = 34
    first = observer.update("Some information...", current=34)
    second = observer.update("Further information...", increment=True, step=5)
    assert ("PROGRESS", {"pending": False, "description": "Some information...",
                         "current": 34, "total": 100, "percent": 34.0}) == first
    assert (39, 39.0) == (second[1]["current"], second[1]["percent"])
    assert 39 == observer.pos


def test_success_returns_success_state_and_full_percent() -> None:
    """success(msg) -> ("SUCCESS", meta) with 100 % and the message."""
    state, meta = Observer(None).success("Finished task!")
    assert ("SUCCESS", "Finished task!", 100.0) == (state, meta["description"], meta["percent"])
    assert MASTF_KEYS <= set(meta)


def test_fail_formats_args_and_carries_exc_keys() -> None:
    """fail("x %s", "y") formats (mastf crashed) and adds exc_type/exc_message."""
    state, meta = Observer(None).fail("x %s", "y", exc_type=ValueError)
    assert ("FAILURE", "x y", "ValueError", "x y") == (
        state, meta["description"], meta["exc_type"], meta["exc_message"])


def test_exception_uses_the_exception_type_and_text() -> None:
    """exception(err, msg) -> exc_type is the class name, exc_message its text."""
    state, meta = Observer(None).exception(KeyError("nope"), "An error occurred!")
    assert ("FAILURE", "An error occurred!", "KeyError", "'nope'") == (
        state, meta["description"], meta["exc_type"], meta["exc_message"])


def test_literal_percent_sign_without_args_is_kept() -> None:
    """A '%' in a message without args is not a format string."""
    _, meta = Observer(None).update("100% done, 5%s left")
    assert "100% done, 5%s left" == meta["description"]


def test_bad_format_args_do_not_raise() -> None:
    """A message whose formatting fails keeps the text and appends the args."""
    _, meta = Observer(None).update("%d items", "many")
    assert "%d items many" == meta["description"]


@pytest.mark.parametrize(("current", "total", "expected"), [
    (150, 100, 100.0), (-5, 100, 0.0), (5, 0, 5.0), (1, 3, 33.33), (float("nan"), 100, 0.0),
])
def test_percent_is_clamped_to_0_100(current: float, total: float, expected: float) -> None:
    """Out-of-range, zero totals and NaN never give a percent outside 0..100."""
    _, meta = Observer(None).update("x", current=current, total=total)
    assert expected == meta["percent"]


def test_position_is_never_negative() -> None:
    """Observer(task, position=-3) and pos = -1 clamp to 0."""
    observer = Observer(None, position=-3)
    assert 0 == observer.pos
    observer.pos = 12
    observer.pos = -1
    assert 0 == observer.pos


def test_user_meta_is_merged_into_the_returned_meta() -> None:
    """meta= keys are added, as mastf did."""
    _, meta = Observer(None).update("x", meta={"file": "a.apk"})
    assert "a.apk" == meta["file"]


def test_constructor_rejects_a_non_number_position() -> None:
    """Misuse at construction raises TypeError."""
    with pytest.raises(TypeError):
        Observer(None, position="3")  # type: ignore[arg-type]


def test_span_outside_celery_gets_events_attributes_and_ok(spans: SpanCapture) -> None:
    """Outside Celery the observer opens its own span; success sets OK and ends it."""
    observer = Observer(None)
    observer.update("step one", current=10)
    observer.update("step one", current=20)  # same message: no second event
    observer.update("step two", current=50)
    observer.success("done")
    span = spans.by_name("Task")
    assert ["step one", "step two", "done"] == [e.name for e in span.events]
    assert {A.PERCENT: 100.0, A.CURRENT: 100, A.TOTAL: 100} == {
        k: (span.attributes or {})[k] for k in (A.PERCENT, A.CURRENT, A.TOTAL)}
    assert StatusCode.OK == span.status.status_code


def test_fail_sets_error_with_the_failure_recorded(spans: SpanCapture) -> None:
    """fail(): span ERROR with an exception event of the given type."""
    Observer(FakeTask()).fail("Test not passed", exc_type=ValueError)
    span = spans.by_name("fake.task")
    assert (StatusCode.ERROR, "Test not passed") == (span.status.status_code,
                                                     span.status.description)
    event = next(e for e in span.events if e.name == "exception")
    assert ("ValueError", "Test not passed") == (
        (event.attributes or {})["exception.type"], (event.attributes or {})["exception.message"])


def test_exception_records_the_error_itself(spans: SpanCapture) -> None:
    """exception(err): the very error is recorded on the span, status ERROR."""
    try:
        raise ZeroDivisionError("division by zero")
    except ZeroDivisionError as err:
        Observer(None).exception(err, "An error occurred!")
    span = spans.by_name("Task")
    event = next(e for e in span.events if e.name == "exception")
    assert "ZeroDivisionError" == (event.attributes or {})["exception.type"]
    assert StatusCode.ERROR == span.status.status_code


def test_update_state_is_called_through_the_coalescing_flusher() -> None:
    """A given task gets update_state(PROGRESS, payload) from the flusher, not per call."""
    _publish.set_min_interval(0.05)
    task = FakeTask()
    observer = Observer(task)
    for i in range(1000):
        observer.update("working", current=i, total=1000)
    deadline = time.monotonic() + 5
    while not task.calls and time.monotonic() < deadline:
        time.sleep(0.01)
    assert task.calls, "the flusher never wrote"
    assert len(task.calls) < 50
    state, payload = task.calls[-1]
    assert "PROGRESS" == state
    assert {"pending", "description", "current", "total", "percent", "schema", "state",
            "trace_id"} <= set(payload)


def test_terminal_call_reaches_update_state_with_the_failure() -> None:
    """After fail(), the next write carries state failed and the mastf exc keys."""
    _publish.set_min_interval(0.05)
    task = FakeTask()
    Observer(task).fail("broken")
    deadline = time.monotonic() + 5
    while not any(m.get("state") == "failed" for _, m in task.calls) \
            and time.monotonic() < deadline:
        time.sleep(0.01)
    meta = next(m for _, m in task.calls if m.get("state") == "failed")
    assert ("RuntimeError", "broken", 100.0) == (meta["exc_type"], meta["exc_message"],
                                                 meta["percent"])


def test_observer_none_is_a_no_op_sink() -> None:
    """Observer(None) works and publishes nowhere."""
    observer = Observer(None)
    observer.update("x")
    assert _publish.publisher_of(observer.run) is None


def test_failing_update_state_never_reaches_the_task(caplog: pytest.LogCaptureFixture) -> None:
    """A backend that raises is logged once; the observer keeps working."""

    class Broken(FakeTask):
        def update_state(self, state: str, meta: dict[str, Any]) -> None:
            raise ConnectionError("redis down")

    _publish.set_min_interval(0.02)
    observer = Observer(Broken())
    for i in range(5):
        observer.update("x", current=i)
        time.sleep(0.03)
    assert ("PROGRESS", 5) == (observer.update("y")[0], observer.pos)
    warnings = [r for r in caplog.records if "cannot publish progress" in r.getMessage()]
    assert 1 == len(warnings)


def test_finished_run_outside_celery_stops_publishing() -> None:
    """After the final state is written, the flusher lets go of the run."""
    _publish.set_min_interval(0.02)
    task = FakeTask()
    observer = Observer(task)
    observer.success("done")
    deadline = time.monotonic() + 5
    publisher = _publish.publisher_of(observer.run)
    assert publisher is not None
    while not publisher.closed and time.monotonic() < deadline:
        time.sleep(0.01)
    writes = len(task.calls)
    time.sleep(0.1)
    assert (True, writes) == (publisher.closed, len(task.calls))
    assert "succeeded" == task.calls[-1][1]["state"]


def test_update_shows_its_keyword_options_to_inspect_and_help() -> None:
    """``update``'s real signature (msg, *args, keyword-only options with their defaults) is
    what ``inspect``, ``help()`` and the docs show, though the body takes ``**options``."""
    import inspect

    signature = inspect.signature(Observer.update)
    options = {name: (p.kind, p.default) for name, p in signature.parameters.items()
               if p.kind is inspect.Parameter.KEYWORD_ONLY}
    assert ("update", ["self", "msg", "args"], {
        "current": (inspect.Parameter.KEYWORD_ONLY, None),
        "increment": (inspect.Parameter.KEYWORD_ONLY, True),
        "step": (inspect.Parameter.KEYWORD_ONLY, 1),
        "total": (inspect.Parameter.KEYWORD_ONLY, 100),
        "state": (inspect.Parameter.KEYWORD_ONLY, "PROGRESS"),
        "meta": (inspect.Parameter.KEYWORD_ONLY, None),
    }) == (Observer.update.__name__, list(signature.parameters)[:3], options)


def test_update_rejects_an_unknown_keyword_like_a_plain_function() -> None:
    """A misspelt option is the caller's bug: a TypeError naming it, as Python gives, before
    anything is recorded (the position does not move)."""
    observer = Observer(None)
    observer.update("a", current=3)
    with pytest.raises(TypeError, match=r"unexpected keyword argument 'curent'"):
        observer.update("b", curent=5)  # type: ignore[call-arg]
    assert (3, "PROGRESS") == (observer.pos, observer.update("c", increment=False)[0])


def test_update_with_and_without_options_agree() -> None:
    """The no-options fast path gives what the same call with every default spelt out gives,
    below 100, at 100 and past it, and from a float position."""
    fast, spelt = Observer(None), Observer(None)
    calls: list[tuple[object, tuple[object, ...]]] = [
        ("x", ()), ("x", ()), ("y", ()), ("file %s", ("a.txt",)), ("file %s", ("a.txt",)),
        ("%d%% done", (5,)), (42, ()), ("y", ()),
    ]
    for start in (0, 98, 99, 150, 2.5, 10**15 - 1, 10**400):  # and at the clamp
        fast.pos = spelt.pos = start
        for msg, args in calls:
            assert fast.update(msg, *args) == spelt.update(
                msg, *args, current=None, increment=True, step=1, total=100,
                state="PROGRESS", meta=None)
            assert (fast.run.description, fast.run.node.current) == (
                spelt.run.description, spelt.run.node.current)
            assert fast.pos <= 10**15  # the documented clamp, on both paths


def test_update_typed_signature_and_runtime_options_agree() -> None:
    """The signature type checkers read (the class's ``TYPE_CHECKING`` ``update``) names the
    same options, annotations and defaults as the runtime one (``_update_options``)."""
    import ast
    import inspect

    from otel_progress import _observer

    tree = ast.parse(inspect.getsource(_observer))
    stub = next(node for node in ast.walk(tree)
                if isinstance(node, ast.FunctionDef) and node.name == "update")
    typed = [(a.arg, ast.unparse(a.annotation) if a.annotation else None,
              eval(ast.unparse(d), vars(_observer)) if d is not None else None)
             for a, d in zip(stub.args.kwonlyargs, stub.args.kw_defaults, strict=True)]
    runtime = [(p.name, p.annotation, p.default)
               for p in inspect.signature(_observer._update_options).parameters.values()]
    assert runtime == typed
