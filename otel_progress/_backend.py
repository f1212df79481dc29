"""The result backend: otel_progress's own key, every write and every read, each bounded in time.

Writes: the progress of a running task (Celery's ``PROGRESS`` meta, for readers of
``AsyncResult.info``, plus our own key), the ``queued`` payload at publish, and the final payload
at the task end. None of them goes through Celery's retry loop (``RedisBackend.set`` retries 20
times, ~60 s against a Redis that never answers): on Redis they use a client of our own with
short socket timeouts and no retries, and a progress write is a Lua script that refuses to
replace a final state Celery stored, or a final payload of ours (DECISIONS 26). Reads serve
``get_progress`` and, through it, the status app and history. The interface history stores
implement is declared here too.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, Final, Protocol, TypeVar, cast

from celery.backends.base import BaseKeyValueStoreBackend, DisabledBackend
from celery.backends.rpc import RPCBackend

from otel_progress import _history, _lifecycle
from otel_progress._payload import (
    CELERY_FINAL,
    CELERY_STATES,
    FINAL_STATES,
    PRIVATE_KEY,
    SCHEMA_VERSION,
    ChildProgress,
    ChildrenProgress,
    ProgressPayload,
    dumps,
    from_celery,
    iso,
    parse_iso,
    queued,
)
from otel_progress._safety import in_background, log_once, logger, redact, safe_str

KEY_PREFIX: Final = "otel-progress-meta-"
"""Result-backend key prefix of the payload otel_progress owns (``<prefix><task id>``)."""
CHILDREN_PREFIX: Final = "otel-progress-children-"
"""Key of the JSON list of a task's child task ids (the payload lists only the last 100)."""
FINAL_TIMEOUT: Final = 5.0
"""Seconds the task end waits for its final write at most, whatever the backend does."""
WRITE_TIMEOUT: Final = 2.0
"""Socket timeout of one Redis write or read of ours (connect and answer)."""
READ_TIMEOUT: Final = 3.0
"""Seconds a read through a backend without our own client may take."""
QUEUED_PAUSE: Final = 30.0
"""After a failed queued write, publishing skips further ones for this long (no 2 s per
``delay()`` against a dead backend)."""
CANCEL_PREFIX: Final = "otel-progress-cancel-"
"""Key of a task's cancel request (``request_cancel``), read by the flusher of the running task."""
CANCEL_EXPIRES: Final = 86400
"""Seconds a cancel request is kept when the backend has no ``result_expires`` of its own."""
REVOKE_TIMEOUT: Final = 2.0
"""Seconds the task end waits at most for Celery's REVOKED state after a cancel."""
CHILDREN_BATCH: Final = 100
"""Children read per round trip when aggregating a parent's children."""
MAX_CHILDREN: Final = 10_000

_T = TypeVar("_T")


class BackendUnavailable(ConnectionError):
    """The result backend did not answer in time: try again later (the status app's 503)."""


class HistoryStore(Protocol):
    """Where a tracked run's row is kept after the result backend forgot it (issue 12).

    ``otel_progress.history.RedisHistory`` and ``SQLiteHistory`` implement it; any object with
    these three methods can be given to ``ProgressInstrumentor().instrument(history=...)``. Rows
    are dicts with exactly the keys of ``otel_progress.history.ROW_KEYS``. Every method is
    bounded in time; a store that is down raises, and the caller logs once and goes on.
    """

    def record(self, row: Mapping[str, Any]) -> None:
        """Merge a partial row (``task_id``, ``state`` and any other row keys) into the row of
        ``row["task_id"]``: a later attempt, or a later step of the same attempt, wins; the
        earliest ``start`` stays; atomic across processes (no read-modify-write race)."""

    def get(self, task_id: str) -> Any:
        """The row of ``task_id``, or None."""

    def list(
        self, *, state: str | None = None, name: str | None = None, since: float | None = None,
        until: float | None = None, limit: int = 100, cursor: str | None = None,
    ) -> tuple[Sequence[Any], str | None]:
        """Rows newest first by start, and the cursor of the next page (None at the end)."""


HISTORY_URL_ENV: Final = "OTEL_PROGRESS_HISTORY_URL"
"""``redis://host:port/db``, ``sqlite:///relative.db`` or ``sqlite:////absolute/path.db``."""
HISTORY_PAUSE: Final = 30.0
"""After a failed history write, a process skips history writes for this long: a store that is
down costs a task at most one bounded attempt per write, and the process one warning."""

_history_choice: Any = None
"""What ``instrument(history=...)`` chose: None (the default rule), False (off), a store."""
_history_default: dict[str, Any] = {}
_history_paused_until = 0.0


def set_history(value: object) -> None:
    """``instrument(history=...)``: None for the default rule, False for none, a store object or
    a URL string (validated here: a bad URL raises ValueError at instrument time)."""
    global _history_choice, _history_paused_until
    if value is None or value is False:
        _history_choice = value
    elif isinstance(value, str):
        _history_choice = _history.store_from_url(value)
    elif _history.is_store(value):
        _history_choice = value
    else:
        raise TypeError("history must be a store (record/get/list), a URL string, None or False")
    _history_default.clear()
    _history_paused_until = 0.0


def history_for(app: Any) -> HistoryStore | None:
    """The store of ``app``: ``instrument(history=)``, else ``OTEL_PROGRESS_HISTORY_URL``, else
    the Redis result backend's own server (none for any other result backend)."""
    if _history_choice is False:
        return None
    if _history_choice is not None:
        return cast(HistoryStore, _history_choice)
    url = os.environ.get(HISTORY_URL_ENV)
    if url:
        store = _history_default.get(url)
        if store is None:
            store = _history_default[url] = _history.store_from_url(url)
        return cast(HistoryStore, store)
    try:
        backend = app.backend
    except Exception:
        return None
    return _default_store(backend)


def _default_store(backend: Any) -> _history.RedisHistory | None:
    """The history on a Redis result backend's own server (none for any other backend)."""
    if not is_plain_redis(backend):
        return None
    key = _connection_key(backend)
    store = _history_default.get(key)
    if store is None:
        if len(_history_default) > 64:
            _history_default.clear()
        store = _history_default[key] = _history.RedisHistory.from_connection(
            getattr(backend, "connparams", {}))
    return cast(_history.RedisHistory, store)


def _riding_row(backend: Any, row: Mapping[str, Any] | None) -> tuple[list[str], str] | None:
    """The keys and argument of ``row``'s record script when the row can ride in the same
    script call as a write of ours to ``backend``: the history is the default one (on the
    result backend's own server) and not paused. None: the row goes its own way, if any."""
    if row is None or _history_choice is not None or os.environ.get(HISTORY_URL_ENV) \
            or time.monotonic() < _history_paused_until or not row.get("task_id"):
        return None
    store = _default_store(backend)
    if store is None:
        return None
    try:
        return store.script_call(row)
    except Exception as exc:  # a row that does not validate: written by no one, said once
        log_once("history-row", "otel_progress: history row not written (%s)", safe_str(exc, 200))
        return None


def _row_written(ok: Any) -> None:
    """After a script that carried a row: warn once and pause, as history_record does."""
    global _history_paused_until
    if not ok:
        _history_paused_until = time.monotonic() + HISTORY_PAUSE
        log_once("history-write", "otel_progress: cannot write the task history (the record "
                 "script failed); tasks go on, history writes pause for %.0f s at a time",
                 HISTORY_PAUSE)


def history_record(app: Any, row: Mapping[str, Any], store: HistoryStore | None = None) -> None:
    """Merge ``row`` into the app's history: one bounded attempt, never an exception; after a
    failure the process warns once and pauses its history writes for HISTORY_PAUSE."""
    global _history_paused_until
    if time.monotonic() < _history_paused_until:
        return
    try:
        store = store if store is not None else history_for(app)
        if store is None or not row.get("task_id"):
            return
        store.record(row)
    except Exception as exc:
        _history_paused_until = time.monotonic() + HISTORY_PAUSE
        log_once("history-write", "otel_progress: cannot write the task history (%s: %s); tasks "
                 "go on, history writes pause for %.0f s at a time", type(exc).__name__,
                 safe_str(exc, 200), HISTORY_PAUSE)


def history_row(app: Any, task_id: str) -> Any:
    """The history row of ``task_id`` or None; BackendUnavailable when the store fails."""
    store = history_for(app)
    if store is None:
        return None
    try:
        return store.get(task_id)
    except Exception as exc:
        raise BackendUnavailable(f"the task history did not answer: {safe_str(exc, 200)}") \
            from exc


def reconcile_rows(app: Any, rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows whose run is not final, checked against Celery's state (what the reader can tell:
    a SIGKILLed child, a hard time limit, a revoke the worker did not see): a final state
    Celery stored is written back to the row. Unchanged when the backend does not answer."""
    open_rows = [r for r in rows if r.get("state") not in FINAL_STATES]
    if not open_rows or not has_result_backend(getattr(app, "backend", None)):
        return list(rows)
    try:
        readings = _read_many(app, [str(r["task_id"]) for r in open_rows], READ_TIMEOUT)
    except Exception:
        return list(rows)
    fixed: dict[str, dict[str, Any]] = {}
    for row, reading in zip(open_rows, readings, strict=True):
        celery = reading.celery or {}
        status = str(celery.get("status") or "")
        if status not in CELERY_FINAL:
            continue
        state: str = CELERY_STATES[status]
        if state == "succeeded" and reading.ours is not None:
            state = str(reading.ours.get("state") or state)
            if state not in FINAL_STATES:
                state = "succeeded"
        exc_type, exc_message = _exc_facts(celery.get("result"))
        change: dict[str, Any] = {
            "task_id": row["task_id"], "task_name": row.get("task_name"), "state": state,
            "attempt": 0, "end": iso(parse_iso(celery.get("date_done")) or time.time()),
        }
        if state in ("failed", "revoked"):
            change.update(exc_type=exc_type, exc_message=exc_message)
        history_record(app, change)
        fixed[str(row["task_id"])] = {**row, **{k: v for k, v in change.items()
                                                if k not in ("attempt",)}}
    return [fixed.get(str(r["task_id"]), r) for r in rows]


def public_part(payload: Any) -> Any:
    """``payload`` without its private part (what anyone but otel_progress may read)."""
    if isinstance(payload, dict) and PRIVATE_KEY in payload:
        return {key: value for key, value in payload.items() if key != PRIVATE_KEY}
    return payload


def own_key(task_id: str) -> str:
    """Backend key of otel_progress's payload for ``task_id``."""
    return KEY_PREFIX + task_id


def _kv(backend: Any, key: str) -> Any:
    """``key`` as the key-value backend wants it (bytes for the filesystem backend, ...)."""
    key_t = getattr(backend, "key_t", None)
    return key_t(key) if callable(key_t) else key


OWN_ROW_STATE: Final = "OTEL_PROGRESS"
"""The state of otel_progress's own row in a database result backend (SQLAlchemy,
django-celery-results): not a Celery state, so no query for tasks' states counts it; it expires
(``result_expires`` cleanup) like every row."""


def _keeps_rows(backend: Any) -> bool:
    """A result backend that stores by task id but has no key-value interface (SQLAlchemy's
    ``db+``, django-celery-results, ...): otel_progress keeps its final payload in a row of its
    own, under the pseudo task id ``own_key(task_id)``."""
    return (has_result_backend(backend) and not isinstance(backend, RPCBackend)
            and not isinstance(backend, BaseKeyValueStoreBackend))


def has_result_backend(backend: Any) -> bool:
    """False for Celery's DisabledBackend (no ``result_backend`` configured): nowhere to write."""
    return not isinstance(backend, DisabledBackend)


# --- a bounded Redis client per backend ---------------------------------------------------------
_PROGRESS_LUA: Final = """
local function final_celery(raw)
  if not raw then return false end
  local ok, meta = pcall(cjson.decode, raw)
  if not ok or type(meta) ~= 'table' then return false end
  local s = meta['status']
  return s == 'SUCCESS' or s == 'FAILURE' or s == 'REVOKED' or s == 'IGNORED' or s == 'REJECTED'
end
local function final_ours(raw)
  if not raw then return false end
  local ok, p = pcall(cjson.decode, raw)
  if not ok or type(p) ~= 'table' then return false end
  local s = p['state']
  return s == 'succeeded' or s == 'failed' or s == 'revoked'
end
if final_celery(redis.call('GET', KEYS[1])) or final_ours(redis.call('GET', KEYS[2])) then
  return 0
end
local ttl = tonumber(ARGV[3])
if ttl > 0 then
  redis.call('SET', KEYS[2], ARGV[2], 'EX', ttl)
  if ARGV[1] ~= '' then redis.call('SET', KEYS[1], ARGV[1], 'EX', ttl) end
else
  redis.call('SET', KEYS[2], ARGV[2])
  if ARGV[1] ~= '' then redis.call('SET', KEYS[1], ARGV[1]) end
end
if ARGV[1] ~= '' then redis.call('PUBLISH', KEYS[1], ARGV[1]) end
return 1
"""
"""KEYS: Celery's meta key, our key. ARGV: Celery meta ('' = ours only), our payload, expiry."""

_FINAL_LUA: Final = """
local raw = redis.call('GET', KEYS[1])
if raw then
  local ok, p = pcall(cjson.decode, raw)
  if ok and type(p) == 'table' and tonumber(p['attempt'])
      and tonumber(p['attempt']) > tonumber(ARGV[3]) then
    return 0
  end
end
local ttl = tonumber(ARGV[2])
if ttl > 0 then redis.call('SET', KEYS[1], ARGV[1], 'EX', ttl)
else redis.call('SET', KEYS[1], ARGV[1]) end
return 1
"""
"""KEYS: our key. ARGV: our final payload, expiry, its attempt. A retried task's next attempt can
finish (on another pool child) before the attempt that raised Retry has made its own final
write: the earlier attempt's payload never replaces a later one's."""


_QUEUED_LUA: Final = """
local ttl = tonumber(ARGV[2])
local set
if ttl > 0 then set = redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ttl)
else set = redis.call('SET', KEYS[1], ARGV[1], 'NX') end
if set then return 1 end
return 0
"""
"""KEYS: our key. ARGV: the queued payload, expiry. Written only if nothing of ours is there."""


def _with_row(script: str) -> str:
    """``script``, then the history's record script in the same call: one round trip where the
    default history lives on the result backend's own server (the row's keys follow the
    script's own, its one argument is the last but one; the last is how many keys are the
    script's). A failing row never undoes the script's write: the reply is {written, row ok}."""
    return (
        "local function own(KEYS, ARGV)\n" + script + "\nend\n"
        "local function row(KEYS, ARGV)\n" + _history.RECORD_LUA + "\nend\n"
        "local n = tonumber(ARGV[#ARGV])\n"
        "local ok_keys, row_keys, own_args = {}, {}, {}\n"
        "for i = 1, #KEYS do if i <= n then ok_keys[#ok_keys + 1] = KEYS[i] "
        "else row_keys[#row_keys + 1] = KEYS[i] end end\n"
        "for i = 1, #ARGV - 2 do own_args[i] = ARGV[i] end\n"
        "local written = own(ok_keys, own_args)\n"
        "local row_ok = pcall(row, row_keys, {ARGV[#ARGV - 1]})\n"
        "return {written, row_ok and 1 or 0}\n"
    )


_FINAL_ROW_LUA: Final = _with_row(_FINAL_LUA)
_QUEUED_ROW_LUA: Final = _with_row(_QUEUED_LUA)


class _Redis:
    """Our own connection pool to a Redis result backend: short timeouts, no retries."""

    def __init__(self, backend: Any) -> None:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        params = dict(backend.connparams)
        for key in ("socket_timeout", "socket_connect_timeout"):
            given = params.get(key)
            params[key] = min(float(given), WRITE_TIMEOUT) if given else WRITE_TIMEOUT
        params["retry_on_timeout"] = False
        params["retry"] = Retry(NoBackoff(), 0)
        params.pop("max_connections", None)
        # Blocking: the 33rd concurrent caller (a status app's threadpool holds 40) waits for a
        # free connection, bounded by the same timeout, instead of failing at once with "Too
        # many connections" (which read as 503s under 50 polling clients).
        pool = redis.BlockingConnectionPool(  # type: ignore[no-untyped-call]
            max_connections=32, timeout=params["socket_timeout"], **params)
        self.client = redis.Redis(connection_pool=pool)
        self.script = self.client.register_script(_PROGRESS_LUA)
        self.final_script = self.client.register_script(_FINAL_LUA)
        self.final_row_script = self.client.register_script(_FINAL_ROW_LUA)
        self.queued_script = self.client.register_script(_QUEUED_LUA)
        self.queued_row_script = self.client.register_script(_QUEUED_ROW_LUA)
        self.loaded = False
        self.json = backend.serializer == "json"


_clients: dict[str, _Redis | None] = {}
_clients_lock = threading.Lock()


def is_plain_redis(backend: Any) -> bool:
    """True for Celery's Redis result backend (not Sentinel), without importing redis-py.

    ``celery.backends.redis`` needs redis-py, which a user of RabbitMQ and ``rpc://`` or a
    database backend need not install: it is imported only once the application loaded it,
    as any Redis backend object has.
    """
    if "celery.backends.redis" not in sys.modules:
        return False
    from celery.backends.redis import RedisBackend, SentinelBackend

    return isinstance(backend, RedisBackend) and not isinstance(backend, SentinelBackend)


def _connection_key(backend: Any) -> str:
    """What ``backend``'s connection is made of, as one key (our client, its history store).

    Celery makes a backend object per thread: key by the connection, not by id() (a collected
    backend's id can be reused by one with other settings). The key is kept on the backend
    object: computing it cost ~20 us per status read and per history write."""
    key = getattr(backend, "_otel_progress_key", None)
    if key is None:
        params: Any = getattr(backend, "connparams", {})
        key = repr((sorted(params.items(), key=str), getattr(backend, "serializer", None)))
        with contextlib.suppress(Exception):  # a backend class with __slots__: recompute
            backend._otel_progress_key = key
    return str(key)


_generation = 0
"""Bumped in a forked child: a client remembered on a backend object from before is not its."""


def _redis(backend: Any) -> _Redis | None:
    """Our client for ``backend`` when it is a plain Redis backend, else None (remembered on
    the backend object: a task end asks several times, and the checks cost ~3 us each)."""
    remembered = getattr(backend, "_otel_progress_client", None)
    if remembered is not None and remembered[0] == _generation:
        return cast(_Redis | None, remembered[1])
    client = _client_for(backend)
    with contextlib.suppress(Exception):  # a backend class with __slots__: ask again next time
        backend._otel_progress_client = (_generation, client)
    return client


def _client_for(backend: Any) -> _Redis | None:
    if not is_plain_redis(backend):
        return None
    key = _connection_key(backend)
    client = _clients.get(key, False)
    if client is False:
        with _clients_lock:
            try:
                client = _Redis(backend)
            except Exception as exc:
                log_once("redis-client", "otel_progress: no bounded Redis client (%s); using "
                         "Celery's", safe_str(exc, 200))
                client = None
            if len(_clients) > 64:
                _clients.clear()
            _clients[key] = client
    return client  # type: ignore[return-value]


def reset_after_fork() -> None:
    """A forked child must not share the parent's sockets."""
    global _clients_lock, _pool, _queued_paused_until, _generation
    _generation += 1
    _clients.clear()
    _clients_lock = threading.Lock()
    _pool = None
    _queued_paused_until = 0.0
    _closing.clear()
    _reconciled.clear()


def _expires(backend: Any) -> int:
    expires = getattr(backend, "expires", None)
    try:
        return max(int(expires), 0) if expires else 0
    except (TypeError, ValueError):
        return 0


def _celery_meta(backend: Any, task_id: str, state: str, payload: ProgressPayload,
                 request: Any) -> Any:
    """The bytes Celery itself would store for ``update_state(state, meta=payload)``."""
    meta = backend._get_result_meta(result=payload, state=state, traceback=None, request=request)
    return backend.encode(meta)


# --- a bounded call for backends without our own client ---------------------------------------
_pool: ThreadPoolExecutor | None = None


def bounded(call: Callable[[], _T], timeout: float) -> _T:
    """Run ``call`` on a helper thread and wait at most ``timeout``; BackendUnavailable after."""
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="otel-progress-backend")
    future = _pool.submit(call)
    try:
        return future.result(timeout)
    except FutureTimeout:
        raise BackendUnavailable(f"the result backend did not answer in {timeout:.0f} s") from None


# --- writes -----------------------------------------------------------------------------------
class TaskTarget:
    """Where one Celery task's payload is written: its backend, id and request context."""

    def __init__(self, task: Any, task_id: str, request: Any) -> None:
        self.task = task
        self.task_id = task_id
        self.request = request  # the request context: rpc:// needs its reply_to off-thread
        self.label = task_id
        self.history_started = False

    def _row(self, payload: ProgressPayload, *, final: bool) -> dict[str, Any]:
        """The run's history row (the flusher's first write, and the final write)."""
        parent = getattr(self.request, "parent_id", None)
        change = _history.change_from_payload(payload, final=final,
                                              parent_id=str(parent) if parent else None)
        change["task_id"] = self.task_id
        change["task_name"] = safe_str(getattr(self.task, "name", None) or change["task_name"])
        private: Any = cast(Any, payload).get(PRIVATE_KEY) or {}
        if final and private.get("open_spans"):
            # a dying child's last write (billiard's SIGTERM: a hard time limit, a terminating
            # revoke): its SystemExit is not the task's error; the main process records that
            change.pop("exc_type", None)
            change.pop("exc_message", None)
        return change

    def _history(self, payload: ProgressPayload, *, final: bool) -> None:
        history_record(getattr(self.task, "app", None), self._row(payload, final=final))

    def progress(self, state: str, payload: ProgressPayload, children: Sequence[str],
                 text: str | None = None) -> bool:
        """Write running progress, unless a final state is already stored; True if written.
        ``text``: the payload's JSON when the caller has it (``_payload.build_text``)."""
        if not self.history_started:  # the run's start, off the task's thread
            self.history_started = True
            self._history(payload, final=False)
        backend = self.task.backend
        client = _redis(backend)
        public = public_part(payload)  # Celery's meta is what AsyncResult.info shows anyone
        if client is not None:
            celery_key = backend.get_key_for_task(self.task_id)
            meta = _celery_meta(backend, self.task_id, state, public, self.request)
            if not client.json:  # pickle & co.: Lua cannot read Celery's meta, check it here
                raw = client.client.get(celery_key)
                if raw is not None and _status(backend, raw) in CELERY_FINAL:
                    return False
            if not client.loaded:
                _load_scripts(client)
            written = bool(client.script(
                keys=[celery_key, own_key(self.task_id)],
                args=[meta if client.json else b"", text or dumps(payload), _expires(backend)],
            ))
            if written and not client.json:
                client.client.set(celery_key, meta, ex=_expires(backend) or None)
        else:
            written = _write_checked(backend, self.task_id, state, payload, self.request)
        if written and children:
            _write_children(backend, self.task_id, children)
        return written

    def cancel_requested(self) -> bool:
        """Whether a cancel request is stored for this task (the flusher asks, once per write
        interval, never the hot path). False where the backend has no keys (rpc://, database)."""
        return cancel_requested(self.task.backend, self.task_id)

    def final(self, payload: ProgressPayload, children: Sequence[str],
              text: str | None = None) -> None:
        """The last write: our key (unless a later attempt of the task wrote it, on Redis);
        PROGRESS meta where the backend has no keys; then the run's history row, in the same
        script call where the default history shares the result backend's server."""
        row: dict[str, Any] | None = None
        rode = False
        try:
            row = self._row(payload, final=True)
            rode = self._final(payload, children, row, text)
        finally:
            if row is not None and not rode:
                history_record(getattr(self.task, "app", None), row)

    def inline_safe(self, children: Sequence[str]) -> bool:
        """Whether the final write is one call of our own bounded client (socket timeouts of
        WRITE_TIMEOUT, no retries: connect and answer stay under FINAL_TIMEOUT), so the task's
        thread may make it itself instead of handing it to the final-writer thread."""
        backend = self.task.backend
        client = _redis(backend)
        if client is None or not client.loaded or children:
            return False
        if _history_choice is False:
            return True
        return _history_choice is None and not os.environ.get(HISTORY_URL_ENV) \
            and time.monotonic() >= _history_paused_until

    def _final(self, payload: ProgressPayload, children: Sequence[str],
               row: Mapping[str, Any] | None, text: str | None = None) -> bool:
        """Write the final payload; True if ``row`` went in the same call."""
        backend = self.task.backend
        client = _redis(backend)
        rode = False
        if client is not None:
            if not client.loaded:
                _load_scripts(client)
            riding = _riding_row(backend, row)
            args: list[Any] = [text or dumps(payload), _expires(backend), payload["attempt"]]
            if riding is not None:
                rode = True  # a failing call is not retried as a separate history write
                keys, arg = riding
                reply = client.final_row_script(keys=[own_key(self.task_id), *keys],
                                                args=[*args, arg, 1])
                _row_written(reply[1])
            else:
                client.final_script(keys=[own_key(self.task_id)], args=args)
        elif isinstance(backend, BaseKeyValueStoreBackend):
            backend.set(_kv(backend, own_key(self.task_id)), dumps(payload))
        else:
            # rpc://, database: the PROGRESS meta for a reader polling right now; Celery's
            # final state replaces it, and the reader then closes the payload from Celery's.
            backend.store_result(self.task_id, payload, "PROGRESS", request=self.request)
            if _keeps_rows(backend):
                # a database keeps what it is given: the final payload also goes into a row of
                # its own, read by any process afterwards (rpc:// has no such place)
                backend.store_result(own_key(self.task_id), payload, OWN_ROW_STATE)
        if children:
            _write_children(backend, self.task_id, children)
        return rode


# --- the final write, riding in Celery's own store of the task's state ----------------------
class _Rider:
    """A task's final write waiting for Celery to store the task's state on the same thread."""

    __slots__ = ("arg", "keys", "payload", "script", "target")

    def __init__(self, target: TaskTarget, payload: ProgressPayload, script: Any,
                 keys: list[str], arg: list[Any]) -> None:
        self.target = target
        self.payload = payload
        self.script = script
        self.keys = keys
        self.arg = arg


_riders = threading.local()
"""This thread's final writes waiting for Celery's store (meta key -> rider): Celery stores the
task's state on the thread that ran it, right after the task-end hook."""
_original_set: Any = None


def _pending() -> dict[bytes, _Rider]:
    pending: dict[bytes, _Rider] | None = getattr(_riders, "pending", None)
    if pending is None:
        pending = _riders.pending = {}
    return pending


def defer_final(target: TaskTarget, payload: ProgressPayload, children: Sequence[str],
                text: str | None = None) -> bool:
    """Hand the final write to Celery's own store of the task's state: one MULTI/EXEC holds our
    final payload (and the history row), then Celery's state, so a reader never sees the state
    without the payload and the task end makes no round trip of its own. False where that
    cannot be: not a plain Redis backend, our scripts not loaded, children to list, a history
    of its own; the caller then writes at once. A rider Celery does not take (the result is
    ignored, the store never comes) is written at the task's postrun (:func:`write_pending`)."""
    if _original_set is None or not target.inline_safe(children):
        return False
    backend = target.task.backend
    client = _redis(backend)
    if client is None:
        return False
    write_pending()  # a rider a previous task on this thread left: written now, never lost
    row = target._row(payload, final=True)
    riding = _riding_row(backend, row)
    if riding is None and _history_choice is not False:
        return False  # a row that cannot ride: the ordinary final write records it
    args: list[Any] = [text or dumps(payload), _expires(backend), payload["attempt"]]
    if riding is not None:
        keys, arg = riding
        rider = _Rider(target, payload, client.final_row_script,
                       [own_key(target.task_id), *keys], [*args, arg, 1])
    else:
        rider = _Rider(target, payload, client.final_script, [own_key(target.task_id)], args)
    _pending()[_key_bytes(backend.get_key_for_task(target.task_id))] = rider
    return True


def _key_bytes(key: Any) -> bytes:
    return key if isinstance(key, bytes) else str(key).encode()


def write_pending() -> None:
    """Write this thread's riders Celery did not take, with our own bounded client: the final
    write is made whatever Celery does."""
    pending = _pending()
    while pending:
        _key, rider = pending.popitem()
        try:
            rider.target.final(rider.payload, [])
        except Exception as exc:
            warn_write_failed(rider.target.label, exc)


def _set_riding(self: Any, key: Any, value: Any, *args: Any, **kwargs: Any) -> Any:
    """``RedisBackend.set`` with this thread's rider for ``key`` in Celery's own transaction."""
    pending: dict[bytes, _Rider] | None = getattr(_riders, "pending", None)
    rider = pending.pop(_key_bytes(key), None) if pending else None
    limit = getattr(self, "_MAX_STR_VALUE_SIZE", None)
    if rider is not None and limit is not None and isinstance(value, str) and len(value) > limit:
        assert pending is not None
        pending[_key_bytes(key)] = rider  # Celery refuses the value: postrun writes ours
        rider = None
    if rider is None:
        return _original_set(self, key, value, *args, **kwargs)
    expires = kwargs.pop("expires", None) if "expires" in kwargs else (args[0] if args else None)

    def store(key: Any, value: Any, expires: Any) -> None:
        """What Celery's ``_set`` does (SETEX or SET, then PUBLISH), after our write."""
        if expires is None:
            expires = self.expires
        with self.client.pipeline() as pipe:
            pipe.evalsha(rider.script.sha, len(rider.keys), *rider.keys, *rider.arg)
            if expires:
                pipe.setex(key, expires, value)
            else:
                pipe.set(key, value)
            pipe.publish(key, value)
            replies = pipe.execute(raise_on_error=False)
        for reply in replies[1:]:
            if isinstance(reply, Exception):
                raise reply  # Celery's own commands: as its own _set would
        ours = replies[0]
        if isinstance(ours, Exception):  # e.g. NOSCRIPT after a Redis restart: write it alone
            client = _redis(self)
            if client is not None:
                client.loaded = False
            rider.target.final(rider.payload, [])
        elif isinstance(ours, list) and len(ours) == 2:
            _row_written(ours[1])

    return self.ensure(store, (key, value, expires), **kwargs)


def patch_celery_store() -> None:
    """Let final writes ride in ``RedisBackend.set`` (install); undone by unpatch."""
    global _original_set
    if _original_set is not None:
        return
    try:
        from celery.backends.redis import RedisBackend
    except ImportError:  # pragma: no cover - the module imports redis-py lazily
        return
    _original_set = RedisBackend.__dict__["set"]
    RedisBackend.set = _set_riding  # type: ignore[method-assign]


def unpatch_celery_store() -> None:
    """Restore Celery's own ``RedisBackend.set``; riders still pending are written now."""
    global _original_set
    write_pending()
    if _original_set is None:
        return
    from celery.backends.redis import RedisBackend

    RedisBackend.set = _original_set  # type: ignore[method-assign]
    _original_set = None


def cancel_requested(backend: Any, task_id: str) -> bool:
    """Whether ``backend`` holds a cancel request for ``task_id`` (2 s socket timeout on Redis)."""
    client = _redis(backend)
    if client is not None:
        return bool(client.client.exists(CANCEL_PREFIX + task_id))
    if isinstance(backend, BaseKeyValueStoreBackend):
        return backend.get(_kv(backend, CANCEL_PREFIX + task_id)) is not None
    return False


def request_cancel(app: Any, task_id: str, timeout: float = READ_TIMEOUT) -> bool:
    """Store a cancel request for ``task_id``; False when the backend cannot hold one (rpc://,
    database). Raises :class:`BackendUnavailable` when the backend does not answer in time."""
    backend = app.backend
    key = CANCEL_PREFIX + task_id
    expires = _expires(backend) or CANCEL_EXPIRES
    client = _redis(backend)
    if client is not None:
        try:
            client.client.set(key, b"1", ex=expires)
        except Exception as exc:
            raise BackendUnavailable(safe_str(exc, 200)) from exc
        return True
    if not isinstance(backend, BaseKeyValueStoreBackend):
        return False
    try:
        bounded(lambda: backend.set(_kv(backend, key), b"1"), timeout)
    except BackendUnavailable:
        raise
    except Exception as exc:
        raise BackendUnavailable(safe_str(exc, 200)) from exc
    return True


def mark_revoked(task: Any, task_id: str, reason: str, timeout: float = REVOKE_TIMEOUT) -> None:
    """Celery's REVOKED state for a task a cancel stopped, waited for at most ``timeout``
    (Celery's own write retries for a minute against a Redis that does not answer)."""
    try:
        request = task.request
        bounded(lambda: task.backend.mark_as_revoked(task_id, reason, request=request), timeout)
    except Exception as exc:
        log_once("mark-revoked", "otel_progress: cannot store REVOKED for cancelled task %s "
                 "(%s); the payload still reads revoked", task_id, safe_str(exc, 200))


def _load_scripts(client: _Redis) -> None:
    """Once per process: no NOSCRIPT round trip on a write."""
    pipe = client.client.pipeline(transaction=False)
    for script in (_PROGRESS_LUA, _FINAL_LUA, _FINAL_ROW_LUA, _QUEUED_LUA, _QUEUED_ROW_LUA):
        pipe.script_load(script)
    pipe.execute()
    client.loaded = True


def _status(backend: Any, raw: Any) -> str | None:
    try:
        meta = backend.decode(raw)
    except Exception:
        return None
    return meta.get("status") if isinstance(meta, dict) else None


def _write_checked(backend: Any, task_id: str, state: str, payload: ProgressPayload,
                   request: Any) -> bool:
    """Check-then-write for backends without a Lua script: skip when a final state is stored."""
    if isinstance(backend, BaseKeyValueStoreBackend):
        raw = backend.get(backend.get_key_for_task(task_id))
        if raw and _status(backend, raw) in CELERY_FINAL:
            return False
        own = _decode(backend, backend.get(_kv(backend, own_key(task_id))))
        if own is not None and own.get("state") in FINAL_STATES:
            return False
        backend.set(_kv(backend, own_key(task_id)), dumps(payload))
    backend.store_result(task_id, public_part(payload), state, request=request)
    return True


def _write_children(backend: Any, task_id: str, children: Sequence[str]) -> None:
    value = json.dumps(list(children[-MAX_CHILDREN:]))
    client = _redis(backend)
    if client is not None:
        client.client.set(CHILDREN_PREFIX + task_id, value, ex=_expires(backend) or None)
    elif isinstance(backend, BaseKeyValueStoreBackend):
        backend.set(_kv(backend, CHILDREN_PREFIX + task_id), value)


_queued_paused_until = 0.0


def write_queued(app: Any, task_id: str, task_name: str,
                 row: Mapping[str, Any] | None = None) -> None:
    """Record a published task as ``queued`` (only if nothing of ours is stored for it yet), and
    its history ``row`` if given: one script call where the default history shares the result
    backend's server, else the history's own write."""
    global _queued_paused_until
    backend = app.backend
    rode = False
    if has_result_backend(backend) and time.monotonic() >= _queued_paused_until:
        payload = dumps(queued(task_id, task_name))
        try:
            client = _redis(backend)
            if client is not None:
                if not client.loaded:
                    _load_scripts(client)
                riding = _riding_row(backend, row)
                expires = _expires(backend)
                if riding is not None:
                    rode = True
                    keys, arg = riding
                    reply = client.queued_row_script(keys=[own_key(task_id), *keys],
                                                     args=[payload, expires, arg, 1])
                    _row_written(reply[1])
                else:
                    client.queued_script(keys=[own_key(task_id)], args=[payload, expires])
            elif isinstance(backend, BaseKeyValueStoreBackend) and (
                backend.get(_kv(backend, own_key(task_id))) is None
            ):
                backend.set(_kv(backend, own_key(task_id)), payload)
        except Exception as exc:
            _queued_paused_until = time.monotonic() + QUEUED_PAUSE
            log_once("queued-write", "otel_progress: cannot record queued task %s (%s); queued "
                     "tracking pauses for %.0f s", task_id, safe_str(exc, 200), QUEUED_PAUSE)
    if row is not None and not rode:
        history_record(app, row)


# --- reads ------------------------------------------------------------------------------------
def _decode(backend: Any, raw: Any) -> dict[str, Any] | None:
    if raw is None:
        return None
    value: Any = None
    try:
        value = json.loads(raw)
    except Exception:
        try:
            value = backend.decode(raw)
        except Exception:
            return None
    return value if isinstance(value, dict) and value.get("schema") == SCHEMA_VERSION else None


def _exc_facts(result: Any) -> tuple[str | None, str | None]:
    """Exception type name and message from Celery's stored result (any serializer)."""
    if isinstance(result, BaseException):
        return type(result).__name__, safe_str(result)
    if isinstance(result, dict) and "exc_type" in result:
        message = result.get("exc_message")
        if isinstance(message, (list, tuple)):
            message = " ".join(safe_str(m) for m in message)
        return safe_str(result.get("exc_type"), 200), safe_str(message or "")
    return None, None


class Reading:
    """What the backend holds of one task: our payload and Celery's own meta."""

    __slots__ = ("celery", "ours")

    def __init__(self, ours: dict[str, Any] | None, celery: dict[str, Any] | None) -> None:
        self.ours = ours
        self.celery = celery

    def payload(self) -> dict[str, Any] | None:
        """Our payload reconciled with Celery's state; None when otel_progress never tracked it."""
        celery = self.celery or {}
        ours = self.ours
        result = celery.get("result")
        status = str(celery.get("status") or "PENDING")
        if ours is None:
            if isinstance(result, dict) and result.get("schema") == SCHEMA_VERSION:
                ours = result  # PROGRESS meta (or the final payload on rpc:// and databases)
            else:
                return None
        exc_type, exc_message = _exc_facts(result) if status in CELERY_FINAL else (None, None)
        return from_celery(ours, status, exc_type=exc_type, exc_message=exc_message,
                           date_done=celery.get("date_done"))

    def dead_spans(self) -> bool:
        """Celery ended the task, our payload still says running and lists open spans: the
        process that ran it died with them (their originals were never exported)."""
        ours, celery = self.ours, self.celery or {}
        if not ours or not _open_spans(ours):
            return False
        exc_type = _exc_facts(celery.get("result"))[0]
        return celery.get("status") == "REVOKED" or (
            celery.get("status") == "FAILURE" and exc_type in DEATHS)


# --- post-mortem span closure -------------------------------------------------------------------
CLOSED_PREFIX: Final = "otel-progress-closed-"
"""Key that marks a task's dead spans as exported (set once, by whoever exports them)."""
POST_MORTEM_DELAY: Final = 1.0
"""Seconds between learning of a death and reading the payload: a child killed by SIGTERM (a
revoke, billiard's hard time limit) may still be making its own final write, which wins."""
DEATHS: Final = frozenset({"WorkerLostError", "TimeLimitExceeded"})
"""Celery's exception types for a process that died with its task (a FAILURE of another type
had a living process end its own spans)."""
_closing: OrderedDict[str, None] = OrderedDict()
"""Tasks whose dead spans this process is ending (or ended)."""
_reconciled: OrderedDict[str, None] = OrderedDict()
"""Tasks whose history row this process's reads already ended from Celery's state."""
_closing_lock = threading.Lock()


def _first_time(seen: OrderedDict[str, None], task_id: str) -> bool:
    """True the first time ``task_id`` is seen in ``seen`` (bounded: oldest forgotten)."""
    with _closing_lock:
        if task_id in seen:
            return False
        seen[task_id] = None
        while len(seen) > MAX_REMEMBERED:
            seen.popitem(last=False)
        return True


def _open_spans(payload: dict[str, Any]) -> list[dict[str, Any]]:
    private = payload.get(PRIVATE_KEY)
    spans = private.get("open_spans") if isinstance(private, dict) else None
    return [s for s in spans if isinstance(s, dict)] if isinstance(spans, list) else []


def claim_post_mortem(backend: Any, task_id: str) -> bool:
    """True for exactly one claimer of ``task_id``'s dead spans (on Redis: across processes)."""
    key = CLOSED_PREFIX + task_id
    client = _redis(backend)
    if client is not None:
        return bool(client.client.set(key, "1", nx=True, ex=_expires(backend) or 86400))
    if isinstance(backend, BaseKeyValueStoreBackend):  # check-then-set: best effort
        if backend.get(_kv(backend, key)) is not None:
            return False
        backend.set(_kv(backend, key), "1")
    return True  # elsewhere: once per process (``_closing``)


def post_mortem_later(app: Any, task_id: str, error_type: str, message: str,
                      died_at: float) -> None:
    """In the background, after POST_MORTEM_DELAY: if ``task_id``'s payload still lists open
    spans (a final payload of a normal end lists none), export them ended at ``died_at``, ERROR with
    ``error_type``, once (:func:`claim_post_mortem`). Nothing here waits on the caller's thread:
    the main worker process and the status app call it."""
    if not _lifecycle.post_mortem_ready():
        return
    if not _first_time(_closing, task_id):
        return

    def close() -> None:
        time.sleep(POST_MORTEM_DELAY)
        ours = _read_many(app, [task_id], READ_TIMEOUT)[0].ours
        # Open spans in a running payload (the last progress write) or in a dying child's final
        # one; a normal final payload lists none.
        if ours is None or not (spans := _open_spans(ours)):
            return
        if claim_post_mortem(app.backend, task_id):
            sent = _lifecycle.export_post_mortem(spans, died_at, safe_str(error_type, 200),
                                                 redact(safe_str(message)),
                                                 safe_str(ours.get("task_name") or ""))
            logger.info("otel_progress: ended %d span(s) of %s left open by a dead process "
                        "(%s)", sent, task_id, error_type)

    in_background(close, "otel_progress-post-mortem")


_last_seen: OrderedDict[str, dict[str, Any]] = OrderedDict()
MAX_REMEMBERED: Final = 1000
"""Payloads remembered per process for backends that keep no key of ours (rpc://, database)."""


_final_seen: OrderedDict[str, dict[str, Any]] = OrderedDict()


def _keep(store: OrderedDict[str, dict[str, Any]], task_id: str, value: dict[str, Any]) -> None:
    store[task_id] = value
    store.move_to_end(task_id)
    while len(store) > MAX_REMEMBERED:
        store.popitem(last=False)


def _watch_rpc(backend: Any) -> None:
    """rpc:// delivers each state once, to whoever drains the reply queue first (often
    ``AsyncResult.get()``): watch the messages so the reader still knows the final state and the
    last payload afterwards."""
    consumer = backend.result_consumer
    if getattr(consumer, "_otel_progress_watched", False):
        return
    original = consumer.on_state_change

    def on_state_change(meta: Any, message: Any) -> Any:
        with guard_quiet():
            if isinstance(meta, dict) and meta.get("task_id"):
                task_id = str(meta["task_id"])
                if meta.get("status") in CELERY_FINAL:
                    _keep(_final_seen, task_id, meta)
                else:
                    _remember(task_id, meta)
        return original(meta, message)

    consumer.on_state_change = on_state_change
    consumer._otel_progress_watched = True
    # ``AsyncResult.state`` polls the reply queue itself (basic_get) and keeps only the latest
    # message: a final PROGRESS payload followed by SUCCESS would pass unseen. Watch that path
    # too (a private generator of Celery's rpc backend; left alone where it is absent).
    slurp = getattr(backend, "_slurp_from_queue", None)
    if callable(slurp):

        def watched_slurp(*args: Any, **kwargs: Any) -> Iterator[Any]:
            for message in slurp(*args, **kwargs):
                with guard_quiet():
                    meta = message.payload
                    if (isinstance(meta, dict) and meta.get("task_id")
                            and meta.get("status") not in CELERY_FINAL):
                        _remember(str(meta["task_id"]), meta)
                yield message

        backend._slurp_from_queue = watched_slurp


class guard_quiet:
    """Swallow any error of the watcher: it must never break Celery's own result delivery."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return exc[0] is not None and issubclass(exc[0], Exception)  # type: ignore[arg-type]


def _remember(task_id: str, meta: Any) -> dict[str, Any] | None:
    """On rpc:// and database backends Celery's final state replaces the PROGRESS meta that
    held our payload: the reader keeps the last payload it saw, to close it from Celery's state."""
    result = meta.get("result") if isinstance(meta, dict) else None
    if isinstance(result, dict) and result.get("schema") == SCHEMA_VERSION:
        _keep(_last_seen, task_id, result)
        return None  # the meta itself carries it
    return _last_seen.get(task_id)


def _read_many(app: Any, task_ids: Sequence[str], timeout: float) -> list[Reading]:
    backend = app.backend
    client = _redis(backend)
    if client is not None:
        keys: list[str] = []
        for task_id in task_ids:
            keys += [own_key(task_id), backend.get_key_for_task(task_id)]
        try:
            raws = client.client.mget(keys)
        except Exception as exc:
            raise BackendUnavailable(safe_str(exc, 200)) from exc
        out = []
        for i in range(0, len(raws), 2):
            celery = None
            if raws[i + 1] is not None:
                try:
                    celery = backend.decode(raws[i + 1])
                except Exception:
                    celery = None
            out.append(Reading(_decode(backend, raws[i]), celery))
        return out

    def read_all() -> list[Reading]:
        readings = []
        for task_id in task_ids:
            ours = None
            meta = backend.get_task_meta(task_id)
            if isinstance(backend, BaseKeyValueStoreBackend):
                ours = _decode(backend, backend.get(_kv(backend, own_key(task_id))))
            else:
                if meta.get("status") not in CELERY_FINAL and task_id in _final_seen:
                    meta = _final_seen[task_id]
                ours = _remember(task_id, meta)
                if meta.get("status") in CELERY_FINAL and _keeps_rows(backend):
                    row = backend.get_task_meta(own_key(task_id)).get("result")
                    if isinstance(row, dict) and row.get("schema") == SCHEMA_VERSION:
                        ours = row
            readings.append(Reading(ours, meta))
        return readings

    if isinstance(backend, RPCBackend):  # its reply queue is this thread's: read here
        _watch_rpc(backend)
        return read_all()
    try:
        return bounded(read_all, timeout)
    except BackendUnavailable:
        raise
    except Exception as exc:
        raise BackendUnavailable(safe_str(exc, 200)) from exc


def read(app: Any, task_id: str, *, children: bool = True,
         timeout: float = READ_TIMEOUT) -> ProgressPayload | None:
    """The payload of ``task_id`` reconciled with Celery's state, or None if never tracked.

    The private part is stripped (this is what frontends get); a task Celery ended while our
    payload still says running gets its dead spans ended (:func:`post_mortem_later`).
    Raises :class:`BackendUnavailable` when the backend does not answer in time.
    """
    reading = _read_many(app, [task_id], timeout)[0]
    payload = reading.payload()
    if payload is None:
        row = history_row(app, task_id)  # the result backend forgot it; the history did not
        return None if row is None else _history.payload_from_row(row)  # type: ignore[return-value]
    if payload.get("state") in FINAL_STATES and (
            reading.ours is None or reading.ours.get("state") not in FINAL_STATES) \
            and _first_time(_reconciled, task_id):
        # Celery ended it without our final write (a killed child, a revoke): as the reader
        # can tell, the history row ends too (once per process, not at every poll)
        change = _history.change_from_payload(payload, final=True)
        change.update(task_id=task_id, attempt=0)
        history_record(app, change)
    if reading.dead_spans():
        celery = reading.celery or {}
        exc_type, exc_message = _exc_facts(celery.get("result"))
        status = str(celery.get("status"))
        post_mortem_later(app, task_id, exc_type or ("Terminated" if status == "REVOKED"
                                                     else status), exc_message or status,
                          parse_iso(celery.get("date_done")) or time.time())
    payload.pop(PRIVATE_KEY, None)
    if children and payload.get("children"):
        ids = _children_ids(app, task_id, payload["children"])
        payload["children_progress"] = _children_progress(app, ids, timeout)
    return payload  # type: ignore[return-value]


def _children_ids(app: Any, task_id: str, listed: Sequence[str]) -> list[str]:
    backend = app.backend
    raw = None
    try:
        client = _redis(backend)
        if client is not None:
            raw = client.client.get(CHILDREN_PREFIX + task_id)
        elif isinstance(backend, BaseKeyValueStoreBackend):
            raw = backend.get(_kv(backend, CHILDREN_PREFIX + task_id))
    except Exception as exc:
        raise BackendUnavailable(safe_str(exc, 200)) from exc
    if raw:
        try:
            ids = json.loads(raw)
            if isinstance(ids, list):
                return [str(i) for i in ids]
        except ValueError:
            pass
    return list(listed)


def _children_progress(app: Any, ids: Sequence[str], timeout: float) -> ChildrenProgress:
    """Aggregate every child, read in batches: count by state, mean percent (final = 100)."""
    tasks: list[ChildProgress] = []
    for start in range(0, len(ids), CHILDREN_BATCH):
        batch = ids[start:start + CHILDREN_BATCH]
        for child_id, reading in zip(batch, _read_many(app, batch, timeout), strict=True):
            child = reading.payload()
            if child is None:
                tasks.append(ChildProgress(id=child_id, state="queued", percent=0.0))
                continue
            state = child.get("state", "running")
            pct = 100.0 if state in FINAL_STATES else float(child.get("percent") or 0.0)
            tasks.append(ChildProgress(id=child_id, state=state, percent=pct))
    finished = sum(1 for t in tasks if t["state"] in FINAL_STATES)
    failed = sum(1 for t in tasks if t["state"] == "failed")
    percent = round(sum(t["percent"] for t in tasks) / len(tasks), 2) if tasks else 0.0
    return ChildrenProgress(total=len(ids), finished=finished, failed=failed, percent=percent,
                            tasks=tasks[:MAX_LISTED_CHILDREN])


MAX_LISTED_CHILDREN: Final = 100
"""Children listed one by one in ``children_progress.tasks`` (all are counted)."""


def warn_write_failed(label: str, exc: BaseException) -> None:
    """One warning per task for a failed write: the task goes on."""
    logger.warning(
        "otel_progress: cannot publish progress of %s (%s: %s); the task goes on, later writes "
        "are retried silently", label, type(exc).__name__, safe_str(exc, 200),
    )
