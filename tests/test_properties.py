"""Property-based tests (hypothesis, bounded examples) over the public API's inputs, and the
status endpoint fuzzed against a real server (issue 11, "Bad input").

Outcome asserted for every example: no exception reaches the caller (bad values inside a task
are clamped or ignored, DECISIONS 10), the payload is JSON (no NaN), at most 16 KiB, its percent
within 0..100; the endpoint answers only 200/400/401/403/404/405/503, never a traceback.
"""

from __future__ import annotations

import json
import math
import string
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from celery import Celery
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from otel_progress import Observer, TaskUpdater
from otel_progress._payload import MAX_PAYLOAD_BYTES, dumps
from otel_progress.testing import strict
from otel_progress.web import create_app
from tests.support.redis_server import RedisServer
from tests.support.web import Prefixes, UvicornServer

EXAMPLES = settings(max_examples=150, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow,
                                           HealthCheck.function_scoped_fixture])
"""Bounded and reproducible: the same examples on every run (CI time is fixed)."""


class Raising:
    """An object whose ``__str__`` and ``__repr__`` both raise."""

    def __str__(self) -> str:
        raise RuntimeError("no str")

    def __repr__(self) -> str:
        raise RuntimeError("no repr")


class RaisingError(Exception):
    """An exception whose ``__str__`` and ``__repr__`` raise."""

    def __str__(self) -> str:
        raise RuntimeError("no str")

    def __repr__(self) -> str:
        raise RuntimeError("no repr")


def _numbers() -> st.SearchStrategy[Any]:
    extras: list[st.SearchStrategy[Any]] = [
        st.floats(allow_nan=True, allow_infinity=True), st.integers(),
        st.integers(min_value=10**300, max_value=10**400), st.booleans(), st.none(),
        st.decimals(allow_nan=True, allow_infinity=True), st.fractions(),
        st.text(max_size=20), st.just(Raising()), st.just([1, 2]), st.just({"a": 1}),
    ]
    try:
        import numpy as np
    except ImportError:
        pass
    else:
        extras += [st.sampled_from([np.float64("nan"), np.int64(7), np.float32(3.5),
                                    np.float64("inf")])]
    return st.one_of(*extras)


NUMBERS = _numbers()
TEXT = st.one_of(
    st.text(max_size=200),  # lone surrogates, control characters included
    st.text(alphabet="%sd\x00\n\t\x1b", max_size=50),
    st.sampled_from(["", "%", "%s %d", "\ud800", "a" * 5000]),
    st.integers(), st.none(), st.binary(max_size=20), st.just(Raising()),
)
ATTRIBUTES = st.dictionaries(
    st.text(min_size=1, max_size=20),
    st.one_of(st.none(), st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
              st.lists(st.lists(st.integers(), max_size=3), max_size=3),
              st.lists(st.one_of(st.integers(), st.text(max_size=5)), max_size=4),
              st.just(Raising()), st.floats(), st.text(max_size=50), st.integers()),
    max_size=5)


def _check(payload: Any) -> None:
    """JSON without NaN, at most 16 KiB, percent in 0..100, the state vocabulary."""
    text = json.dumps(payload, allow_nan=False)
    assert len(dumps(payload).encode("utf-8")) <= MAX_PAYLOAD_BYTES
    assert 0.0 <= payload["percent"] <= 100.0 and math.isfinite(payload["percent"])
    assert payload["state"] in ("queued", "running", "retrying", "succeeded", "failed",
                                "revoked")
    assert isinstance(text, str)


@pytest.fixture(autouse=True)
def _lenient() -> Iterator[None]:
    """Bad input is the caller's: it is logged once, not an internal error (strict stays on)."""
    with strict(True):
        yield


@EXAMPLES
@given(current=NUMBERS, total=NUMBERS, percent=NUMBERS, step=NUMBERS)
def test_progress_inputs_never_raise_and_keep_a_valid_payload(
        current: Any, total: Any, percent: Any, step: Any) -> None:
    """progress()/advance() with NaN, inf, huge, bool, Decimal, Fraction, numpy, str, objects."""
    updater = TaskUpdater(task_name="props")
    with updater(task_name="numbers"):
        updater.progress(current=current, total=total, percent=percent)
        updater.advance(step)
        _check(updater.to_dict())
    updater.insert_final_update()
    _check(updater.to_dict())


@EXAMPLES
@given(message=TEXT, name=TEXT, attributes=ATTRIBUTES)
def test_messages_names_and_attribute_values_never_raise(
        message: Any, name: Any, attributes: dict[str, Any]) -> None:
    """Empty, huge, surrogate, control, % and non-str text; values OTel does not accept."""
    updater = TaskUpdater(task_name="props")
    with updater(task_name=name):
        updater.notify(message, **attributes)
    with updater(task_name="fails"):
        raise RaisingError()
    updater.insert_final_update()
    _check(updater.to_dict())


@EXAMPLES
@given(message=TEXT, args=st.lists(TEXT, max_size=3), current=NUMBERS, total=NUMBERS,
       step=NUMBERS, meta=ATTRIBUTES)
def test_observer_inputs_never_raise(message: Any, args: list[Any], current: Any, total: Any,
                                     step: Any, meta: dict[str, Any]) -> None:
    """Observer.update/fail/exception with any message, args, numbers and meta."""
    observer = Observer(None)
    observer.update(message, *args, current=current, total=total, meta=meta)
    observer.update(message, step=step)
    observer.exception(RaisingError(), message)
    _check(observer.update("after")[1] | {"state": "failed"})


@pytest.mark.parametrize(("kwargs", "error"), [
    ({"task_name": 5}, TypeError), ({"verbose": "yes"}, TypeError),
    ({"suppress_exceptions": 1}, TypeError), ({"expected_sections": 0}, ValueError),
    ({"expected_sections": 1.5}, TypeError), ({"expected_sections": True}, TypeError),
])
def test_wrong_constructor_arguments_raise_clearly(kwargs: dict[str, Any],
                                                   error: type[Exception]) -> None:
    """Misuse at construction is the one place a caller's mistake raises (DECISIONS 10)."""
    with pytest.raises(error):
        TaskUpdater(**kwargs)


def test_nesting_depth_1000_keeps_a_small_valid_payload() -> None:
    """1,000 nested sections: no RecursionError, the payload tree is capped, under 16 KiB."""
    updater = TaskUpdater(task_name="deep")
    sections = [updater(task_name=f"level {i}") for i in range(1000)]
    for section in sections:
        section.__enter__()
    _check(updater.to_dict())
    for section in reversed(sections):
        section.__exit__(None, None, None)
    updater.insert_final_update()
    payload = updater.to_dict()
    _check(payload)
    assert {"finished": 1, "total": 1} == payload["jobs"]


def test_one_hundred_thousand_sections_keep_a_small_valid_payload() -> None:
    """100,000 sections: head and tail kept with an omitted marker, under 16 KiB."""
    updater = TaskUpdater(task_name="many")
    for i in range(100_000):
        with updater(task_name=f"s{i}"):
            pass
    updater.insert_final_update()
    payload = updater.to_dict()
    _check(payload)
    assert (100_000, "…") == (payload["jobs"]["total"], payload["sections"][10]["name"])


# --- the status endpoint, fuzzed against a real server ------------------------------------------
ALLOWED = {200, 204, 400, 401, 403, 404, 405, 503}
"""The issue's list, plus 204: the documented answer to a CORS preflight from a listed origin."""
HEADER_NAMES = st.sampled_from(["X-Forwarded-For", "Forwarded", "Origin", "Accept",
                                "Access-Control-Request-Headers", "Cookie", "X-Anything",
                                "Authorization", "Content-Type", "Range"])
HEADER_VALUES = st.text(alphabet=string.printable.replace("\r", "").replace("\n", "")
                        .replace("\x0b", "").replace("\x0c", ""), max_size=60).map(str.strip)
"""What a client can send (h11 refuses control characters and surrounding blanks)."""
IDS = st.one_of(st.text(max_size=300), st.text(alphabet=string.printable, max_size=260),
                st.sampled_from(["", "%", "a/b", "0/", "x" * 255, "x" * 256])).filter(
    lambda text: text not in (".", ".."))
"""Task ids to put in a path; ``.``/``..`` are dot segments every client resolves away."""


@pytest.fixture(scope="module")
def fuzz_server(redis_server: RedisServer) -> Iterator[UvicornServer]:
    """The status app over the session's Redis (/ok, anonymous; /auth, a hook refusing one id)
    and over a Redis that is down (/down): every kind of answer is reachable."""
    up = Celery("fuzz_up", broker=redis_server.url, backend=redis_server.url,
                set_as_current=False)
    down = Celery("fuzz_down", broker="memory://", backend="redis://127.0.0.1:1/0",
                  set_as_current=False)
    apps = {
        "/ok": create_app(up, allow_anonymous=True, include_result=True, cors_origins=["*"]),
        "/auth": create_app(up, authorize=lambda request, task_id: task_id != "deny"),
        "/down": create_app(down, allow_anonymous=True),
    }
    with UvicornServer(Prefixes(apps)) as server:
        yield server
    up.close()
    down.close()


@pytest.mark.slow
@settings(max_examples=300, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(prefix=st.sampled_from(["/ok", "/auth", "/down"]),
       route=st.sampled_from(["/tasks/{}", "/tasks/{}/view", "/static/otel-progress.js",
                              "/x{}", "/tasks/{}/x"]),  # all under the prefix
       task_id=IDS,
       method=st.sampled_from(["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]),
       headers=st.dictionaries(HEADER_NAMES, HEADER_VALUES, max_size=4),
       query=st.dictionaries(st.sampled_from(["format", "x", "callback", "format[]"]),
                             st.text(max_size=30), max_size=3))
@example(prefix="/down", route="/tasks/{}", task_id="t1", method="GET", headers={}, query={})
@example(prefix="/ok", route="/tasks/{}", task_id="t\u00e9", method="GET", headers={}, query={})
@example(prefix="/auth", route="/tasks/{}", task_id="deny", method="GET", headers={}, query={})
@example(prefix="/ok", route="/tasks/{}", task_id="t1", method="OPTIONS",
         headers={"Origin": "http://a"}, query={})
def test_the_status_endpoint_answers_only_documented_codes_and_never_a_traceback(
        fuzz_server: UvicornServer, prefix: str, route: str, task_id: str, method: str,
        headers: dict[str, str], query: dict[str, str]) -> None:
    """Any id, method, header and query: a documented status, no-store, never a traceback."""
    path = prefix + route.format(quote(task_id, safe=""))
    response = httpx.request(method, fuzz_server.url + path, params=query,
                             headers=headers, timeout=15)
    body = response.text
    event(f"status {response.status_code}")  # --hypothesis-show-statistics: what was reached
    assert (True, False, "no-store") == (
        response.status_code in ALLOWED, "Traceback" in body,
        response.headers.get("cache-control"))
    kind = response.headers.get("content-type", "")
    if method != "HEAD" and response.status_code != 204 and kind.startswith("application/json"):
        json.loads(body)
    assert kind.split(";")[0] in ("application/json", "text/html", "text/javascript")
