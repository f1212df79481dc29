"""The status reader every adapter shares: (task id, query, request facts, a decision) → answer.

No web framework here. An adapter turns its request into :class:`Facts`, asks :meth:`Reader.check`
(the id's format, before anything else), then runs the user's ``authorize`` hook and hands its
result to :meth:`Reader.gate` (before any lookup), then :meth:`Reader.lookup` (the blocking backend
read; async adapters run it in a thread). :meth:`Reader.answer` does the three in that order for
synchronous frameworks. Each step returns an :class:`Answer` (status, headers, body) that the
adapter copies into its own response type, so every framework answers byte for byte the same.

What the answers promise: 400 for a malformed id, 403 for a refused request, 404 for an id never
tracked and an unknown one alike, 503 with ``Retry-After`` when the result backend does not
answer, never a 500; no traceback, args, kwargs or result unless opted in; ``Cache-Control:
no-store``, ``X-Content-Type-Options: nosniff`` and the right ``Content-Type`` on every answer.
"""

from __future__ import annotations

import ipaddress
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal, Protocol

from otel_progress._backend import (
    READ_TIMEOUT,
    BackendUnavailable,
    bounded,
    history_for,
    read,
    reconcile_rows,
    request_cancel,
)
from otel_progress._history import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    STATES,
    BadQuery,
    is_store,
    parse_time,
    store_from_url,
)
from otel_progress._payload import (
    CELERY_FINAL,
    CELERY_STATES,
    FINAL_STATES,
    PRIVATE_KEY,
    iso,
    parse_iso,
)
from otel_progress._safety import log_once, redact_json, safe_str
from otel_progress.web import STALE_AFTER, STATIC_DIR, WRITE_INTERVAL, _page

__all__ = [
    "FORMATS", "MAX_TASK_ID", "RETRY_AFTER", "STALE_AFTER", "STATIC_DIR", "WRITE_INTERVAL",
    "Answer", "Facts", "Policy", "Reader", "policy_of", "valid_task_id",
]

MAX_TASK_ID: Final = 255
"""Longest task id accepted (printable ASCII only); anything else is a 400."""
RETRY_AFTER: Final = 2
"""``Retry-After`` seconds of a 503 (the result backend did not answer)."""
FORMATS: Final = ("otel-progress", "celery-progress")
"""Values of the ``format`` query parameter (the first is the default)."""
WIDGET_FILE: Final = "otel-progress.js"
SCHEDULED_TIMEOUT: Final = 1.0
"""Seconds a ``control.inspect().scheduled()`` broadcast waits for workers (a RETRY's ETA)."""
SCHEDULED_MISS_TTL: Final = 5.0
"""Seconds an ETA nobody reported is not asked for again (one broadcast per task at most then)."""
_CACHE_SIZE: Final = 1024

CANCEL_HEADER: Final = "X-OTel-Progress"
"""A header that, like a JSON body, makes ``POST /tasks/<id>/cancel`` safe from CSRF."""
JSON_TYPE: Final = "application/json"
TEXT_TYPE: Final = "text/plain; charset=utf-8"
HTML_TYPE: Final = "text/html; charset=utf-8"
JS_TYPE: Final = "text/javascript; charset=utf-8"
_BASE_HEADERS: Final = (("Cache-Control", "no-store"), ("X-Content-Type-Options", "nosniff"))
_PAGE_CSP: Final = (
    "default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'self' "
    "'unsafe-inline'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'self'"
)
"""The view page runs no inline script (the widget mounts itself from data attributes)."""

_OUR_TO_CELERY: Final = {
    "queued": "PENDING", "running": "PROGRESS", "retrying": "RETRY", "succeeded": "SUCCESS",
    "failed": "FAILURE", "revoked": "REVOKED",
}

Policy = Literal["authorize", "anonymous", "loopback", "deny"]
"""Who may read when: ``authorize`` (the hook decides), ``anonymous`` (everyone), ``loopback``
(no hook: clients on 127.0.0.0/8 and ::1 only, the standalone app's default), ``deny`` (no hook:
nobody, the framework adapters' default)."""


@dataclass(frozen=True)
class Answer:
    """One HTTP answer: status, headers (Content-Type included) and body bytes."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes

    @property
    def content_type(self) -> str:
        """The ``Content-Type`` header (frameworks that take it apart from the others)."""
        return next(v for k, v in self.headers if k == "Content-Type")

    def header_dict(self) -> dict[str, str]:
        """Headers as a dict (every name appears once)."""
        return dict(self.headers)


class Headers(Protocol):
    """Case-insensitive request headers (Starlette's, Werkzeug's, Django's ``request.headers``)."""

    def get(self, key: str, /) -> Any: ...


@dataclass(frozen=True)
class Facts:
    """What the reader needs to know of a request, whatever the framework."""

    client_host: str | None = None
    """The peer's address (``request.client.host``, ``REMOTE_ADDR``)."""
    origin: str | None = None
    """The ``Origin`` header, for CORS."""
    forwarded: bool = False
    """The request carries ``Forwarded``/``X-Forwarded-For``: a proxy relayed it, so a loopback
    peer address says nothing about the client."""
    request_headers: str | None = None
    """``Access-Control-Request-Headers`` of a preflight."""
    json_body: bool = False
    """``Content-Type: application/json``: a cross-site form cannot send it (CSRF, cancel)."""
    custom_header: bool = False
    """The request carries ``X-OTel-Progress`` (CANCEL_HEADER): only script sends it, and a
    foreign origin's script needs a CORS preflight first."""

    @classmethod
    def from_headers(cls, client_host: str | None, headers: Headers) -> Facts:
        """Facts from the peer address and a case-insensitive header mapping."""
        return cls(
            client_host=client_host,
            origin=headers.get("origin"),
            forwarded=bool(headers.get("forwarded") or headers.get("x-forwarded-for")),
            request_headers=headers.get("access-control-request-headers"),
            json_body=str(headers.get("content-type") or "").split(";")[0].strip().lower()
            == JSON_TYPE,
            custom_header=bool(headers.get(CANCEL_HEADER)),
        )


def policy_of(authorize: object, allow_anonymous: bool, *, default: Policy) -> Policy:
    """The access policy from the options (the hook wins over ``allow_anonymous``)."""
    if authorize is not None:
        if not callable(authorize):
            raise TypeError("authorize must be a callable (request, task_id) -> bool")
        return "authorize"
    return "anonymous" if allow_anonymous else default


def valid_task_id(task_id: object) -> bool:
    """1 to 255 printable ASCII characters (space to ``~``)."""
    return (isinstance(task_id, str) and 0 < len(task_id) <= MAX_TASK_ID
            and all(" " <= ch <= "~" for ch in task_id))


def _is_loopback(host: str | None) -> bool:
    if not host:
        return False
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def _json_bytes(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False,
                      default=safe_str).encode("utf-8")


def _json_safe(value: object) -> Any:
    """A Celery result as JSON can carry it (anything else becomes capped text)."""
    try:
        return json.loads(json.dumps(value, allow_nan=False, default=safe_str))
    except (TypeError, ValueError, RecursionError):
        return safe_str(value)


@dataclass
class _EtaCache:
    """ETAs of retried tasks as workers reported them, keyed by (task id, attempt); bounded."""

    hits: OrderedDict[tuple[str, int], tuple[str | None, float]] = field(
        default_factory=OrderedDict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def get(self, key: tuple[str, int]) -> tuple[bool, str | None]:
        with self.lock:
            entry = self.hits.get(key)
            if entry is None:
                return False, None
            value, expires = entry
            if value is None and time.monotonic() > expires:
                del self.hits[key]
                return False, None
            return True, value

    def put(self, key: tuple[str, int], value: str | None) -> None:
        with self.lock:
            self.hits[key] = (value, time.monotonic() + SCHEDULED_MISS_TTL)
            self.hits.move_to_end(key)
            while len(self.hits) > _CACHE_SIZE:
                self.hits.popitem(last=False)


class Reader:
    """Answers for one Celery app under one access policy (shared by every route of an app)."""

    def __init__(
        self,
        celery_app: Any,
        *,
        policy: Policy,
        trace_url: str | None = None,
        include_traceback: bool = False,
        include_result: bool = False,
        cors_origins: Iterable[str] | None = None,
        stale_after: float = STALE_AFTER,
        timeout: float = READ_TIMEOUT,
        clock: Callable[[], float] = time.time,
        history: object = None,
    ) -> None:
        if policy not in ("authorize", "anonymous", "loopback", "deny"):
            raise ValueError(f"unknown policy {policy!r}")
        if trace_url is not None and not isinstance(trace_url, str):
            raise TypeError("trace_url must be a string with a {trace_id} placeholder")
        if isinstance(cors_origins, str):
            raise TypeError("cors_origins must be a list of origins, not one string")
        self.app = celery_app
        self.policy: Policy = policy
        self.trace_url = trace_url
        self.include_traceback = bool(include_traceback)
        self.include_result = bool(include_result)
        self.cors_origins = frozenset(o.rstrip("/") for o in (cors_origins or ()))
        self.stale_after = float(stale_after)
        self.timeout = float(timeout)
        self.clock = clock
        if isinstance(history, str):
            history = store_from_url(history)
        elif history is not None and history is not False and not is_store(history):
            raise TypeError("history must be a store (record/get/list), a URL, None or False")
        self.history = history
        """The store ``GET /tasks`` lists (None: the app's, as its workers choose; False: none)."""
        self._etas = _EtaCache()
        self._widget: bytes | None = None
        self.cancellable = False
        """The view page shows the widget's cancel button (``create_app(cancellable=True)``)."""

    # --- the three steps, in order -------------------------------------------------------------
    def check(self, task_id: object, params: Mapping[str, str] | None = None,
              facts: Facts | None = None) -> Answer | None:
        """Step 1, before anything else: a 400 for a malformed id or format, else None."""
        if not valid_task_id(task_id):
            return self.error(400, "malformed task id", facts)
        fmt = (params or {}).get("format", FORMATS[0])
        if fmt not in FORMATS:
            return self.error(400, "unknown format", facts)
        return None

    def gate(self, facts: Facts, decision: object = None) -> Answer | None:
        """Step 2, before any lookup: a 403 unless the policy (or the hook's ``True``) allows.

        ``decision`` is what the ``authorize`` hook returned (under the ``authorize`` policy).
        Only ``True`` allows: a truthy object, a coroutine nobody awaited or an exception
        (see :meth:`decide`) is a refusal. The 403 says nothing about the task.
        """
        if self.policy == "anonymous":
            return None
        if self.policy == "authorize" and decision is True:
            return None
        if self.policy == "loopback" and not facts.forwarded and _is_loopback(facts.client_host):
            return None
        return self.error(403, "forbidden", facts)

    def decide(self, hook: Callable[..., object] | None, request: object,
               task_id: str | None) -> object:
        """Run ``hook(request, task_id)`` (``task_id=None`` for the list); an exception is logged
        once and refuses (False)."""
        if hook is None:
            return None
        try:
            result = hook(request, task_id)
        except Exception as exc:
            return self.hook_failed(exc)
        if hasattr(result, "__await__"):
            close = getattr(result, "close", None)
            if callable(close):
                close()  # no "coroutine was never awaited" warning: we refuse it on purpose
            log_once("web.authorize-async", "otel_progress: the authorize hook returned an "
                     "awaitable here; this framework needs a plain function; refusing")
            return False
        return result

    def hook_failed(self, exc: BaseException) -> bool:
        """An authorize hook that raised: logged once, and the request is refused."""
        log_once("web.authorize", "otel_progress: the authorize hook raised %s: %s; refusing",
                 type(exc).__name__, safe_str(exc, 200))
        return False

    def lookup(self, task_id: str, params: Mapping[str, str] | None = None,
               facts: Facts | None = None) -> Answer:
        """Step 3 (blocking: run it in a thread under asyncio): 200, 404 or 503."""
        facts = facts or Facts()
        try:
            payload = read(self.app, task_id, timeout=self.timeout)
        except BackendUnavailable as exc:
            log_once("web.backend-down", "otel_progress: the result backend did not answer (%s);"
                     " the status app answers 503 until it does", safe_str(exc, 200))
            return self.unavailable(facts)
        except Exception as exc:
            log_once("web.read", "otel_progress: reading a task failed (%s: %s); answering 503",
                     type(exc).__name__, safe_str(exc, 200))
            return self.unavailable(facts)
        if payload is None:
            return self.error(404, "not found", facts)
        try:
            body = self.shape(task_id, dict(payload), (params or {}).get("format", FORMATS[0]))
            data = _json_bytes(redact_json(body))  # Celery's traceback and result too
        except Exception as exc:  # never a 500: the payload came from a worker we do not control
            log_once("web.shape", "otel_progress: cannot answer for a payload (%s: %s); "
                     "answering 503", type(exc).__name__, safe_str(exc, 200))
            return self.unavailable(facts)
        return Answer(200, self._headers(JSON_TYPE, facts), data)

    def answer(self, task_id: object, params: Mapping[str, str] | None, facts: Facts,
               authorize: Callable[[], object] | None = None) -> Answer:
        """The three steps in order, for synchronous frameworks; ``authorize`` is a thunk."""
        refused = self.check(task_id, params, facts)
        if refused is not None:
            return refused
        assert isinstance(task_id, str)
        decision = None
        if authorize is not None:
            decision = self.decide(lambda _request, _task_id: authorize(), None, task_id)
        refused = self.gate(facts, decision)
        if refused is not None:
            return refused
        return self.lookup(task_id, params, facts)

    # --- cancel ---------------------------------------------------------------------------------
    def cancel_check(self, facts: Facts) -> Answer | None:
        """CSRF: a cancel needs a JSON body or the ``X-OTel-Progress`` header (a plain form post
        from another site has neither), else 400. Before the authorize hook runs."""
        if facts.json_body or facts.custom_header:
            return None
        return self.error(400, f"a cancel needs Content-Type: {JSON_TYPE} or the "
                               f"{CANCEL_HEADER} header", facts)

    def cancel(self, task_id: str, facts: Facts | None = None) -> Answer:
        """``POST /tasks/<id>/cancel`` after check, cancel_check and gate (blocking): 202 with
        ``{task_id, cancel_requested: true, state}``; 404 untracked; 409 already final (nothing
        stored); 501 a backend that cannot hold the request (rpc://, database); 503."""
        facts = facts or Facts()
        try:
            payload = read(self.app, task_id, children=False, timeout=self.timeout)
            if payload is None:
                return self.error(404, "not found", facts)
            state = str(payload.get("state") or "running")
            if state in FINAL_STATES:
                return Answer(409, self._headers(JSON_TYPE, facts), _json_bytes(
                    {"error": "the task has finished", "state": state}))
            if not request_cancel(self.app, task_id, timeout=self.timeout):
                return self.error(501, "this result backend cannot hold a cancel request", facts)
        except BackendUnavailable as exc:
            log_once("web.backend-down", "otel_progress: the result backend did not answer (%s);"
                     " the status app answers 503 until it does", safe_str(exc, 200))
            return self.unavailable(facts)
        except Exception as exc:
            log_once("web.cancel", "otel_progress: a cancel failed (%s: %s); answering 503",
                     type(exc).__name__, safe_str(exc, 200))
            return self.unavailable(facts)
        return Answer(202, self._headers(JSON_TYPE, facts), _json_bytes(
            {"task_id": task_id, "cancel_requested": True, "state": state}))

    # --- the other routes ---------------------------------------------------------------------
    def view(self, task_id: str, facts: Facts | None = None) -> Answer:
        """The HTML page that shows ``task_id`` with the widget (after check and gate)."""
        html = _page.render(task_id, trace_url=self.trace_url, cancellable=self.cancellable)
        headers = (("Content-Type", HTML_TYPE), *_BASE_HEADERS,
                   ("Content-Security-Policy", _PAGE_CSP), ("Referrer-Policy", "no-referrer"))
        return Answer(200, headers, html.encode("utf-8"))

    def widget(self, facts: Facts | None = None) -> Answer:
        """``otel-progress.js`` (public: it holds no task data)."""
        if self._widget is None:
            self._widget = (STATIC_DIR / WIDGET_FILE).read_bytes()
        return Answer(200, self._headers(JS_TYPE, facts, cors=False), self._widget)

    def preflight(self, facts: Facts, methods: str = "GET, HEAD, OPTIONS") -> Answer:
        """A CORS preflight (``OPTIONS``): 204 for a listed origin, else 403 (CORS is off)."""
        origin = self._allowed_origin(facts)
        if origin is None:
            return self.error(403, "forbidden")
        headers = [*self._headers(JSON_TYPE, facts),
                   ("Access-Control-Allow-Methods", methods),
                   ("Access-Control-Max-Age", "600")]
        if facts.request_headers:
            headers.append(("Access-Control-Allow-Headers", safe_str(facts.request_headers, 500)))
        return Answer(204, tuple(headers), b"")

    # --- the history routes ----------------------------------------------------------------
    def store(self) -> Any:
        """The history store this reader lists from, or None."""
        if self.history is False:
            return None
        return self.history if self.history is not None else history_for(self.app)

    def list_query(self, params: Mapping[str, str],
                   facts: Facts | None = None) -> Answer | dict[str, Any]:
        """``GET /tasks``'s query as keyword arguments of ``store.list()``, or a 400.

        ``state`` (one of the six states), ``name`` (a task name), ``since``/``until`` (ISO-8601,
        epoch seconds, or ``30d``/``12h``/``15m`` ago), ``limit`` (1 to 500, default 100),
        ``cursor`` (the ``next_cursor`` of the previous page). Other parameters are ignored.
        """
        query: dict[str, Any] = {"limit": DEFAULT_LIMIT}
        try:
            state = params.get("state")
            if state:
                if state not in STATES:
                    raise BadQuery("unknown state")
                query["state"] = state
            name = params.get("name")
            if name:
                if not valid_task_id(name):
                    raise BadQuery("malformed name")
                query["name"] = name
            for key in ("since", "until"):
                value = params.get(key)
                if value:
                    query[key] = parse_time(value, self.clock())
            limit = params.get("limit")
            if limit:
                if not limit.isdigit() or not 1 <= int(limit) <= MAX_LIMIT:
                    raise BadQuery("bad limit")
                query["limit"] = int(limit)
            cursor = params.get("cursor")
            if cursor:
                if len(cursor) > 1024 or not valid_task_id(cursor[:255]):
                    raise BadQuery("malformed cursor")
                query["cursor"] = cursor
        except BadQuery as exc:
            return self.error(400, safe_str(exc, 200), facts)
        return query

    def list_lookup(self, query: Mapping[str, Any], facts: Facts | None = None) -> Answer:
        """``GET /tasks`` after check and gate (blocking): ``{"tasks": [row, ...],
        "next_cursor": str | null}``, newest first; 404 without a history; 503 when it fails."""
        try:
            store = self.store()
        except Exception as exc:
            log_once("web.history", "otel_progress: no task history (%s)", safe_str(exc, 200))
            store = None
        if store is None:
            return self.error(404, "no task history", facts)
        try:
            rows, cursor = bounded(lambda: store.list(**query), self.timeout)
        except BadQuery as exc:
            return self.error(400, safe_str(exc, 200), facts)
        except Exception as exc:
            log_once("web.history-down", "otel_progress: the task history did not answer (%s: "
                     "%s); answering 503", type(exc).__name__, safe_str(exc, 200))
            return self.unavailable(facts)
        rows = reconcile_rows(self.app, [dict(r) for r in rows])
        return Answer(200, self._headers(JSON_TYPE, facts),
                      _json_bytes({"tasks": rows, "next_cursor": cursor}))

    def log_lookup(self, task_id: str, facts: Facts | None = None) -> Answer:
        """``GET /tasks/<id>/log`` after check and gate (blocking): the seed log as text/plain,
        from the live payload or the history row; 404 for an id never tracked; 503."""
        try:
            payload = read(self.app, task_id, children=False, timeout=self.timeout)
        except Exception as exc:
            log_once("web.log", "otel_progress: reading a task's log failed (%s: %s); "
                     "answering 503", type(exc).__name__, safe_str(exc, 200))
            return self.unavailable(facts)
        if payload is None:
            return self.error(404, "not found", facts)
        text = safe_str(payload.get("log") or "", 64 * 1024)
        return Answer(200, self._headers(TEXT_TYPE, facts), text.encode("utf-8"))

    def error(self, status: int, message: str, facts: Facts | None = None) -> Answer:
        """A JSON error that says nothing about any task: ``{"error": message}``."""
        headers = self._headers(JSON_TYPE, facts)
        if status == 503:
            headers += (("Retry-After", str(RETRY_AFTER)),)
        return Answer(status, headers, _json_bytes({"error": message}))

    def unavailable(self, facts: Facts | None = None) -> Answer:
        """503 with ``Retry-After``: the result backend did not answer in time."""
        return self.error(503, "result backend unavailable", facts)

    # --- the payload as the frontend reads it -------------------------------------------------
    def shape(self, task_id: str, payload: dict[str, Any], fmt: str) -> dict[str, Any]:
        """The payload with ``stale``/``retry_at``, minus what was not opted in; or the
        celery-progress envelope."""
        for key in ("args", "kwargs", "result", "env", "environ", PRIVATE_KEY):  # never shown
            payload.pop(key, None)  # (a caller's meta may carry them; the last is ours alone)
        if not self.include_traceback:
            payload.pop("traceback", None)
        state = payload.get("state")
        now = self.clock()
        if state == "retrying":
            payload["retry_at"] = self._retry_at(task_id, payload)
        payload["stale"] = self._stale(payload, now)
        want_result = self.include_result and state in FINAL_STATES
        want_traceback = (self.include_traceback and state in ("failed", "revoked")
                          and not payload.get("traceback"))
        result_known, result = False, None
        if want_result or want_traceback:
            meta = self._celery_meta(task_id)
            if want_traceback:
                payload["traceback"] = _text_or_none(meta.get("traceback"))
            if want_result:
                result_known = True
                result = _json_safe(meta.get("result")) if state == "succeeded" and meta.get(
                    "status") in CELERY_FINAL else payload.get("exc_message") or payload.get(
                    "exception")
                payload["result"] = result
        if fmt == "celery-progress":
            return self._celery_progress(payload, now, result_known, result)
        return payload

    def _stale(self, payload: Mapping[str, Any], now: float) -> bool:
        """Not final, and the payload stopped changing: ``updated`` (or, for a retry, the time it
        was due) is older than ``stale_after``. A queued task waits in a queue: never stale."""
        state = payload.get("state")
        if state not in ("running", "retrying"):
            return False
        since = parse_iso(payload.get("updated"))
        if state == "retrying":
            due = parse_iso(payload.get("retry_at"))
            if due is not None:
                since = due if since is None else max(since, due)
        return since is not None and now - since > self.stale_after

    def _retry_at(self, task_id: str, payload: Mapping[str, Any]) -> str | None:
        """When the retry is due, ISO-8601 UTC: the ETA of the retry's own task message.

        Celery keeps it nowhere in the result backend (the RETRY meta holds the exception and a
        traceback, not the countdown); the message's ``eta`` is held by the worker that reserved
        it, and ``control.inspect().scheduled()`` reports it. Asked once per task and attempt
        (a miss is asked again after SCHEDULED_MISS_TTL); a payload that already carries
        ``retry_at`` is believed.
        """
        given = payload.get("retry_at")
        if isinstance(given, str) and parse_iso(given) is not None:
            return given
        attempt = payload.get("attempt")
        key = (task_id, attempt if isinstance(attempt, int) else 0)
        known, value = self._etas.get(key)
        if known:
            return value
        value = self._scheduled_eta(task_id)
        self._etas.put(key, value)
        return value

    def _scheduled_eta(self, task_id: str) -> str | None:
        control = getattr(self.app, "control", None)
        if control is None:
            return None
        try:
            replies = bounded(lambda: control.inspect(timeout=SCHEDULED_TIMEOUT).scheduled(),
                              SCHEDULED_TIMEOUT + self.timeout)
        except Exception as exc:
            log_once("web.scheduled", "otel_progress: cannot ask workers for a retry's ETA "
                     "(%s: %s); retry_at reads null", type(exc).__name__, safe_str(exc, 200))
            return None
        for entries in (replies or {}).values():
            for entry in entries or ():
                request = entry.get("request") if isinstance(entry, dict) else None
                if isinstance(request, dict) and request.get("id") == task_id:
                    return _utc(entry.get("eta"))
        return None

    def _celery_meta(self, task_id: str) -> dict[str, Any]:
        """Celery's own meta of the task (opted-in result and traceback only), or ``{}``."""
        try:
            meta = bounded(lambda: self.app.backend.get_task_meta(task_id), self.timeout)
        except Exception as exc:
            log_once("web.result", "otel_progress: cannot read a task's result (%s: %s)",
                     type(exc).__name__, safe_str(exc, 200))
            return {}
        return meta if isinstance(meta, dict) else {}

    def _celery_progress(self, payload: Mapping[str, Any], now: float, result_known: bool,
                         result: Any) -> dict[str, Any]:
        """celery-progress's envelope, so its JavaScript works by changing only the URL.

        ``success``: null while running, true for ``succeeded``, false for ``failed`` and
        ``revoked`` (our verdict: ``fail()`` then ``return`` reads false). Like celery-progress,
        a RETRY answers ``complete: true, success: false, state: "RETRY"`` with ``result:
        {next_retry_seconds, message}`` (its script keeps polling) and IGNORED answers
        ``complete: true, success: null, state: "IGNORED"``.
        """
        state = payload.get("state")
        celery_state = payload.get("celery_state")
        shown = _OUR_TO_CELERY.get(str(state), "PROGRESS")
        if isinstance(celery_state, str) and CELERY_STATES.get(celery_state, "running") == state:
            shown = celery_state  # RECEIVED, STARTED, IGNORED, REJECTED, custom: as Celery says
        envelope: dict[str, Any] = {
            "complete": state in FINAL_STATES,
            "success": None if state not in FINAL_STATES else state == "succeeded",
            "state": shown,
            "progress": {
                "pending": bool(payload.get("pending")),
                "current": payload.get("current", 0),
                "total": payload.get("total", 100),
                "percent": payload.get("percent", 0.0),
                "description": payload.get("description", ""),
            },
        }
        if shown == "IGNORED":
            envelope["success"] = None
        if state == "retrying":
            due = parse_iso(payload.get("retry_at"))
            envelope["complete"] = True
            envelope["success"] = False
            envelope["result"] = {
                "next_retry_seconds": max(0, round(due - now)) if due is not None else "Unknown",
                "message": safe_str(payload.get("description") or "retrying", 50),
            }
        elif result_known:
            envelope["result"] = result
        return envelope

    # --- headers -------------------------------------------------------------------------------
    def _allowed_origin(self, facts: Facts | None) -> str | None:
        if facts is None or not facts.origin or not self.cors_origins:
            return None
        origin = facts.origin.rstrip("/")
        if origin in self.cors_origins:
            return origin
        return "*" if "*" in self.cors_origins else None

    def _cors(self, facts: Facts | None) -> tuple[tuple[str, str], ...]:
        origin = self._allowed_origin(facts)
        if origin is None:
            return ()
        if origin == "*":
            return (("Access-Control-Allow-Origin", "*"),)
        return (("Access-Control-Allow-Origin", origin), ("Access-Control-Allow-Credentials",
                                                           "true"), ("Vary", "Origin"))

    def _headers(self, content_type: str, facts: Facts | None = None, *,
                 cors: bool = True) -> tuple[tuple[str, str], ...]:
        headers = (("Content-Type", content_type), *_BASE_HEADERS)
        return headers + self._cors(facts) if cors else headers


def _text_or_none(value: object) -> str | None:
    return None if value is None else safe_str(value, 64 * 1024)


def _utc(value: object) -> str | None:
    """Celery's ETA (ISO-8601, any offset) as ours: UTC with a ``Z``."""
    return iso(parse_iso(value))
