"""The task history index: one row per tracked run, kept after the result backend forgot it.

Two stores implement :class:`otel_progress._backend.HistoryStore`: :class:`RedisHistory` (a hash
per run with an expiry, sorted sets by time, by state and by name, every write one Lua script,
so workers never race a read-modify-write) and :class:`SQLiteHistory` (WAL mode, one connection
per process, each write one ``BEGIN IMMEDIATE`` transaction). Writers hand a *partial* row: the
store merges it by one rule, the same in both (:func:`merge`):

- a change wins when its attempt is later, or the same attempt and its step is not earlier
  (queued < running < retrying < succeeded/failed < revoked): a dying child's late ``running``
  never replaces a final row, and Celery's REVOKED stands over everything;
- ``start`` is the earliest start seen (a retried run's row starts with its first attempt);
  ``task_name``, ``parent_id`` and ``trace_id`` are filled where the row has none;
- ``duration_s`` is ``end - start``; a row is listed by ``start`` (by the time it was first
  recorded while it has none, i.e. queued), newest first, and kept ``retention_s`` after that.

No Celery and no OpenTelemetry here: the Celery rooms call the stores, the upper rooms read them.
"""

from __future__ import annotations

import base64
import csv
import datetime as _dt
import io
import json
import math
import os
import re
import sqlite3
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import IO, Any, Final, TypedDict

from otel_progress._payload import COMPACT, SCHEMA_VERSION, iso, parse_iso
from otel_progress._safety import MAX_NAME, safe_str

STATES: Final = ("queued", "running", "retrying", "succeeded", "failed", "revoked")
"""The one state vocabulary (DECISIONS 7)."""
FINAL: Final = frozenset({"succeeded", "failed", "revoked"})
RANKS: Final = {"queued": 0, "running": 1, "retrying": 2, "succeeded": 3, "failed": 3,
                "revoked": 4}
"""Steps of one attempt: a change replaces the row only from the same step on (or a later
attempt). Revoked ranks highest: Celery's REVOKED wins over any verdict of ours."""
ROW_KEYS: Final = ("task_id", "task_name", "state", "attempt", "start", "end", "duration_s",
                   "jobs_finished", "jobs_total", "exc_type", "exc_message", "trace_id",
                   "parent_id", "log")
"""The keys of a row, in this order: JSON objects, CSV columns and the dicts stores return."""
STICKY: Final = ("task_name", "parent_id", "trace_id")
"""Filled where the row has none, whichever change brings them; never erased."""
APPLIED: Final = ("end", "jobs_finished", "jobs_total", "exc_type", "exc_message", "log",
                  "trace_id")
"""Set by a change that wins (``state`` and ``attempt`` too); absent keys stay as they were."""
DEFAULT_RETENTION_S: Final = 30 * 86400.0
"""Rows are kept 30 days after their start by default (DECISIONS 22)."""
DEFAULT_MAX_ROWS: Final = 1_000_000
"""Rows a store keeps at most; beyond it the oldest go first."""
MAX_LOG: Final = 8192
"""Characters of the seed log a row keeps (the payload's log is bounded below this already)."""
MAX_EXC_MESSAGE: Final = 1000
MAX_LIMIT: Final = 500
"""Rows one ``list()`` call returns at most."""
DEFAULT_LIMIT: Final = 100
TIMEOUT: Final = 2.0
"""Seconds one store call may take (socket timeout, SQLite busy timeout)."""
TRIM_EVERY: Final = 1.0
"""Seconds between two retention trims of one store object (SQLite: one indexed DELETE; Redis:
the script drops index entries past the retention; a shorter retention trims ten times in it)."""
CSV_DANGEROUS: Final = ("=", "+", "-", "@", "\t", "\r", "'")
"""Leading characters a CSV cell is prefixed with ``'`` for: spreadsheet formulas (``= + - @``,
tab, CR, per OWASP), and ``'`` itself so the documented reader can undo the prefix exactly."""

Row = dict[str, Any]


class HistoryRow(TypedDict):
    """One run as the index keeps it (times ISO-8601 UTC with ``Z``, as in the payload)."""

    task_id: str
    task_name: str
    state: str
    attempt: int
    start: str | None
    end: str | None
    duration_s: float | None
    jobs_finished: int
    jobs_total: int
    exc_type: str | None
    exc_message: str | None
    trace_id: str | None
    parent_id: str | None
    log: str


class BadQuery(ValueError):
    """A list query the store cannot answer: an unknown state, a malformed cursor, a bad limit."""


# --- rows --------------------------------------------------------------------------------------
_DEFAULTS: Final[dict[str, Any]] = {
    "task_name": "", "state": "queued", "attempt": 1, "start": None, "end": None,
    "duration_s": None, "jobs_finished": 0, "jobs_total": 0, "exc_type": None,
    "exc_message": None, "trace_id": None, "parent_id": None, "log": "",
}


def complete(row: Mapping[str, Any]) -> Row:
    """``row`` with exactly ROW_KEYS, in order (missing ones at their defaults)."""
    return {key: row.get(key, _DEFAULTS.get(key)) for key in ROW_KEYS}


def _text(value: object, limit: int) -> str | None:
    if value is None:
        return None
    text = safe_str(value, limit)
    return text or None


def clean(change: Mapping[str, Any]) -> Row:
    """A writer's partial row, validated and capped (what a store merges)."""
    task_id = change.get("task_id")
    if not isinstance(task_id, str) or not task_id:
        raise ValueError("a history row needs a task_id")
    state = change.get("state")
    if state not in RANKS:
        raise ValueError(f"unknown state {state!r}; one of {', '.join(STATES)}")
    out: Row = {"task_id": safe_str(task_id, 255), "state": state}
    for key, value in change.items():
        if key in ("task_id", "state"):
            continue
        if key == "task_name":
            if value is not None:
                out[key] = safe_str(value, MAX_NAME)
        elif key in ("parent_id", "trace_id", "exc_type"):
            out[key] = _text(value, 255)
            if key == "parent_id" and out[key] == out["task_id"]:
                out[key] = None  # retry() re-publishes a task from itself: not its parent
        elif key == "exc_message":
            out[key] = _text(value, MAX_EXC_MESSAGE)
        elif key == "log":
            text = safe_str(value or "", MAX_LOG * 2)
            out[key] = text if len(text) <= MAX_LOG else "\t… trimmed …\n" + text[-MAX_LOG:]
        elif key in ("attempt", "jobs_finished", "jobs_total"):
            out[key] = max(int(value or 0), 0)
        elif key in ("start", "end"):
            ts = parse_iso(value) if not isinstance(value, (int, float)) else float(value)
            out[key] = ts  # a float here; ISO in the row
    return out


def merge(current: Row | None, change: Row, now: float) -> tuple[Row, float, bool]:
    """(the merged row with internal ``_start``/``_end``/``_rank`` floats, its index time,
    whether the change won). The rule the Redis script follows too."""
    row: Row = dict(current) if current else {"task_id": change["task_id"], "_first": now}
    attempt = int(change.get("attempt") or 0)
    cur_attempt = row.get("attempt")
    cur_rank = row.get("_rank")
    if attempt == 0:
        attempt = int(cur_attempt or 1)
    rank = RANKS[change["state"]]
    wins = current is None or attempt > int(cur_attempt or 0) or (
        attempt == int(cur_attempt or 0) and rank >= int(cur_rank if cur_rank is not None else -1))
    if wins:
        row["state"] = change["state"]
        row["attempt"] = attempt
        row["_rank"] = rank
        for key in APPLIED:
            if key in change:
                if key == "end":
                    row["_end"] = change["end"]
                else:
                    row[key] = change[key]
    for key in STICKY:
        if change.get(key) and not row.get(key):
            row[key] = change[key]
    start = change.get("start")
    if start is not None and (row.get("_start") is None or start < row["_start"]):
        row["_start"] = start
    row["start"] = iso(row.get("_start"))
    row["end"] = iso(row.get("_end"))
    if row.get("_start") is not None and row.get("_end") is not None:
        row["duration_s"] = round(max(row["_end"] - row["_start"], 0.0), 3)
    else:
        row["duration_s"] = None
    key = row["_start"] if row.get("_start") is not None else row.get("_first", now)
    return row, float(key), wins


# --- cursors and query values --------------------------------------------------------------------
def encode_cursor(score: float, task_id: str) -> str:
    """An opaque cursor: where the next page starts (after this row, newest first)."""
    raw = json.dumps([1, repr(float(score)), task_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, str]:
    """(score, task id) of a cursor; :class:`BadQuery` for anything this store did not make."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        version, score, task_id = json.loads(raw)
        value = float(score)
        if version != 1 or not isinstance(task_id, str) or not math.isfinite(value):
            raise ValueError
    except (ValueError, TypeError, UnicodeDecodeError):
        raise BadQuery("malformed cursor") from None
    return value, task_id


_DURATION: Final = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_EPOCH: Final = re.compile(r"^\d{9,}(?:\.\d+)?$")
_UNITS: Final = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 7 * 86400.0}


def parse_time(text: str, now: float | None = None) -> float:
    """A point in time: ``30d`` / ``12h`` / ``15m`` / ``90s`` / ``2w`` ago, ISO-8601 (a date
    or a date and time; without an offset it is UTC) or epoch seconds. :class:`BadQuery`
    otherwise."""
    if _EPOCH.match(text):
        return float(text)
    match = _DURATION.match(text)
    if match:
        return (time.time() if now is None else now) - float(match[1]) * _UNITS[match[2]]
    try:
        value = _dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise BadQuery(f"not a duration (30d, 12h) or ISO-8601 time: {text!r}") from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=_dt.timezone.utc)
    return value.timestamp()


def check_query(state: str | None, limit: int) -> None:
    """:class:`BadQuery` for an unknown state or a limit outside 1..MAX_LIMIT."""
    if state is not None and state not in RANKS:
        raise BadQuery(f"unknown state {state!r}; one of {', '.join(STATES)}")
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise BadQuery(f"limit must be 1 to {MAX_LIMIT}")


# --- Redis -------------------------------------------------------------------------------------
RECORD_LUA: Final = """
local c = cjson.decode(ARGV[1])
local h = KEYS[1]
local id = c['id']
local cur = redis.call('HMGET', h, '_attempt', '_rank', '_start', '_first', 'state')
local cur_attempt = tonumber(cur[1])
local cur_rank = tonumber(cur[2])
local start_s = cur[3]
local first_s = cur[4]
local old_state = cur[5]
local attempt = c['attempt']
local rank = c['rank']
if attempt == 0 then attempt = cur_attempt or 1 end
local wins = (cur_attempt == nil) or attempt > cur_attempt
  or (attempt == cur_attempt and rank >= (cur_rank or -1))
local set = {}
local fresh = cur_attempt == nil and not first_s  -- no row yet: nothing to read back below
if not first_s then
  first_s = c['now']
  set[#set + 1] = '_first'; set[#set + 1] = first_s
  set[#set + 1] = 'task_id'; set[#set + 1] = id
end
local state = old_state
if wins then
  state = cjson.encode(c['state'])
  set[#set + 1] = '_attempt'; set[#set + 1] = tostring(attempt)
  set[#set + 1] = '_rank'; set[#set + 1] = tostring(rank)
  set[#set + 1] = 'attempt'; set[#set + 1] = tostring(attempt)
  set[#set + 1] = 'state'; set[#set + 1] = state
  for _, kv in ipairs(c['apply']) do set[#set + 1] = kv[1]; set[#set + 1] = kv[2] end
  if c['end'] ~= '' then set[#set + 1] = '_end'; set[#set + 1] = c['end'] end
end
if fresh then
  for _, kv in ipairs(c['fill']) do set[#set + 1] = kv[1]; set[#set + 1] = kv[2] end
elseif #c['fill'] > 0 then
  local names = {}
  for k, kv in ipairs(c['fill']) do names[k] = kv[1] end
  local have = redis.call('HMGET', h, unpack(names))
  for k, kv in ipairs(c['fill']) do
    local v = have[k]
    if (not v) or v == 'null' or v == '""' then set[#set + 1] = kv[1]; set[#set + 1] = kv[2] end
  end
end
if c['start'] ~= '' and ((not start_s) or tonumber(c['start']) < tonumber(start_s)) then
  start_s = c['start']
  set[#set + 1] = '_start'; set[#set + 1] = start_s
  set[#set + 1] = 'start'; set[#set + 1] = cjson.encode(c['start_iso'])
end
local names = {'task_name', 'state', 'attempt', 'start', 'end', 'duration_s', 'jobs_finished',
               'jobs_total', 'exc_type', 'exc_message', 'trace_id', 'parent_id', 'log'}
local vals = {}
if fresh then  -- the row is what this change sets: one HSET, nothing read back
  local m = {}
  for i = 1, #set, 2 do m[set[i]] = set[i + 1] end
  if start_s and m['_end'] then
    local d = tonumber(m['_end']) - tonumber(start_s)
    if d < 0 then d = 0 end
    m['duration_s'] = string.format('%.3f', d)
    set[#set + 1] = 'duration_s'; set[#set + 1] = m['duration_s']
  end
  for k, n in ipairs(names) do vals[k] = m[n] end
else
  if #set > 0 then redis.call('HSET', h, unpack(set)) end
  set = {}
  local end_s = redis.call('HGET', h, '_end')
  if start_s and end_s then
    local d = tonumber(end_s) - tonumber(start_s)
    if d < 0 then d = 0 end
    redis.call('HSET', h, 'duration_s', string.format('%.3f', d))
  end
  vals = redis.call('HMGET', h, unpack(names))
end
local parts = {'{"task_id":' .. cjson.encode(id)}
for k, n in ipairs(names) do parts[#parts + 1] = '"' .. n .. '":' .. (vals[k] or 'null') end
set[#set + 1] = 'row'; set[#set + 1] = table.concat(parts, ',') .. '}'
redis.call('HSET', h, unpack(set))
local key_s = start_s or first_s
local retention = tonumber(c['retention'])
local prefix = c['prefix']
redis.call('ZADD', KEYS[2], key_s, id)
if old_state and old_state ~= state then
  redis.call('ZREM', prefix .. 'state:' .. cjson.decode(old_state), id)
end
redis.call('ZADD', prefix .. 'state:' .. cjson.decode(state), key_s, id)
redis.call('ZADD', KEYS[3], key_s, id)
redis.call('EXPIREAT', h, math.ceil(tonumber(key_s) + retention))
if c['trim'] == 1 then
  local cutoff = '(' .. string.format('%.6f', tonumber(c['now']) - retention)
  local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', cutoff, 'LIMIT', 0, 1000)
  for _, member in ipairs(expired) do
    redis.call('DEL', prefix .. 'row:' .. member)
    redis.call('ZREM', KEYS[2], member)
  end
  for _, s in ipairs({'queued', 'running', 'retrying', 'succeeded', 'failed', 'revoked'}) do
    redis.call('ZREMRANGEBYSCORE', prefix .. 'state:' .. s, '-inf', cutoff)
  end
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', cutoff)
end
local max_rows = c['max_rows']
local n = redis.call('ZCARD', KEYS[2])
if n > max_rows then
  local old = redis.call('ZRANGE', KEYS[2], 0, n - max_rows - 1)
  for _, member in ipairs(old) do
    redis.call('DEL', prefix .. 'row:' .. member)
    for _, s in ipairs({'queued', 'running', 'retrying', 'succeeded', 'failed', 'revoked'}) do
      redis.call('ZREM', prefix .. 'state:' .. s, member)
    end
  end
  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, n - max_rows - 1)
end
if wins then return 1 end
return 0
"""
"""KEYS: the row's hash, the time index, the name index. ARGV: one JSON object (one argument:
packing two dozen arguments cost redis-py as much as the round trip) with the task ``id``,
``attempt`` (0 = the stored one), ``rank``, ``state``, ``start``/``end`` (the seconds as the
strings Python wrote: Lua would print a float with 14 digits; '' = none), ``start_iso``,
``now``, ``retention``, ``prefix``, ``apply`` and ``fill`` (``[field, JSON value]`` pairs set
when the change wins, and where the row has none), ``max_rows`` and ``trim`` (1: drop rows
past the retention now; once per :data:`TRIM_EVERY` per store, the row's own expiry and the
readers' retention filter cover the time between). The state indexes (``<prefix>state:<s>``)
are touched only for the row's old and new state."""


def _json(value: object) -> str:
    return COMPACT.encode(value)


class RedisHistory:
    """The history in Redis: a hash per run with an expiry, sorted sets by time, state and name.

    ::

        from otel_progress.history import RedisHistory

        store = RedisHistory("redis://127.0.0.1:6379/0", retention_s=7 * 86400.0)
        rows, cursor = store.list(state="failed", since=time.time() - 86400)

    Every write is one Lua script (merge, indexes, expiry, retention and the row bound in one
    atomic step); every call has a 2 s socket timeout and no retries. Keys start with
    ``key_prefix`` (default ``otel-progress-history:``). Not for Redis Cluster (the script
    touches the keys of rows it trims).
    """

    def __init__(self, url: str, *, retention_s: float = DEFAULT_RETENTION_S,
                 max_rows: int = DEFAULT_MAX_ROWS, key_prefix: str = "otel-progress-history:",
                 timeout: float = TIMEOUT) -> None:
        if not isinstance(url, str) or not url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"RedisHistory needs a redis:// URL, not {url!r}")
        self._init(retention_s, max_rows, key_prefix, timeout)
        self.url = url
        self._params: dict[str, Any] | None = None

    @classmethod
    def from_connection(cls, params: Mapping[str, Any], *,
                        retention_s: float = DEFAULT_RETENTION_S,
                        max_rows: int = DEFAULT_MAX_ROWS) -> RedisHistory:
        """A store on the server ``redis.Redis(**params)`` would reach (the result backend's)."""
        store = cls.__new__(cls)
        store._init(retention_s, max_rows, "otel-progress-history:", TIMEOUT)
        store.url = f"redis://{params.get('host', '127.0.0.1')}:{params.get('port', 6379)}/" \
                    f"{params.get('db', 0)}"
        store._params = dict(params)
        return store

    def _init(self, retention_s: float, max_rows: int, key_prefix: str, timeout: float) -> None:
        retention = float(retention_s)
        if not retention > 0 or not math.isfinite(retention):
            raise ValueError("retention_s must be a positive number of seconds")
        if isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 1:
            raise ValueError("max_rows must be a positive int")
        self.retention_s = retention
        self.max_rows = max_rows
        self.prefix = str(key_prefix)
        self.timeout = float(timeout)
        self._client: Any = None
        self._script: Any = None
        self._trimmed = 0.0
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"RedisHistory({self.url!r}, retention_s={self.retention_s})"

    def _redis(self) -> Any:
        """One bounded client per process (redis-py's pool re-opens its sockets after a fork)."""
        if self._client is None:
            with self._lock:
                if self._client is None:
                    import redis
                    from redis.backoff import NoBackoff
                    from redis.retry import Retry

                    options: dict[str, Any] = {
                        "socket_timeout": self.timeout, "socket_connect_timeout": self.timeout,
                        "retry": Retry(NoBackoff(), 0),  # no retries: one bounded attempt
                    }
                    if self._params is not None:
                        params = {k: v for k, v in self._params.items()
                                  if k not in ("max_connections", "retry_on_timeout")}
                        params.update(options)
                        client = redis.Redis(**params)
                    else:
                        client = redis.Redis.from_url(self.url, **options)
                    self._script = client.register_script(RECORD_LUA)
                    client.script_load(RECORD_LUA)  # once: no NOSCRIPT round trip on a write
                    self._client = client
        return self._client

    def _row_key(self, task_id: str) -> str:
        return f"{self.prefix}row:{task_id}"

    def _index(self, kind: str, value: str = "") -> str:
        return f"{self.prefix}{kind}{value}"

    def script_call(self, row: Mapping[str, Any]) -> tuple[list[str], str]:
        """The keys and the one argument of :data:`RECORD_LUA` that merge ``row`` (the result
        backend's final write runs the same script in its own round trip, ``_backend``)."""
        change = clean(row)
        now = time.time()
        trim = now - self._trimmed >= min(TRIM_EVERY, self.retention_s / 10)
        if trim:
            self._trimmed = now
        start = change.get("start")
        end = change.get("end")
        applied = [[k, _json(iso(change[k]) if k == "end" else change[k])]
                   for k in APPLIED if k in change]
        filled = [[k, _json(change[k])] for k in STICKY if change.get(k)]
        filled += [[k, _json(v)] for k, v in (("task_name", ""), ("log", ""),
                                              ("jobs_finished", 0), ("jobs_total", 0))
                   if k not in change]
        task_id = change["task_id"]
        arg = _json({
            "id": task_id, "attempt": int(change.get("attempt") or 0),
            "rank": RANKS[change["state"]], "state": change["state"],
            "start": repr(start) if start is not None else "", "start_iso": iso(start) or "",
            "end": repr(end) if end is not None else "", "now": repr(now),
            "retention": repr(self.retention_s), "prefix": self.prefix, "apply": applied,
            "fill": filled, "max_rows": self.max_rows, "trim": 1 if trim else 0,
        })
        keys = [self._row_key(task_id), self._index("time"),
                self._index("name:", change.get("task_name") or "")]
        return keys, arg

    def record(self, row: Mapping[str, Any]) -> None:
        """Merge a partial row into the index (one atomic script)."""
        keys, arg = self.script_call(row)
        client = self._redis()
        self._script(keys=keys, args=[arg], client=client)

    def get(self, task_id: str) -> HistoryRow | None:
        """The row of ``task_id``, or None (never tracked, or expired)."""
        row, start, first = self._redis().hmget(self._row_key(task_id), "row", "_start", "_first")
        key = start or first
        if row is None or key is None:
            return None
        return self._decode(row, float(key), time.time())

    def _decode(self, raw: bytes | None, key: float, now: float) -> HistoryRow | None:
        """The row the script keeps whole (one JSON string: one reply element per row)."""
        if raw is None or key < now - self.retention_s:
            return None  # gone, or expired with its index entry not trimmed yet
        return complete(json.loads(raw))  # type: ignore[return-value]

    def list(self, *, state: str | None = None, name: str | None = None,
             since: float | None = None, until: float | None = None, limit: int = DEFAULT_LIMIT,
             cursor: str | None = None) -> tuple[list[HistoryRow], str | None]:
        """Rows newest first by start, and the cursor of the next page (None at the end)."""
        check_query(state, limit)
        client = self._redis()
        now = time.time()
        if name is not None:
            index = self._index("name:", name)
        elif state is not None:
            index = f"{self.prefix}state:{state}"
        else:
            index = self._index("time")
        low = now - self.retention_s if since is None else max(since, now - self.retention_s)
        high = math.inf if until is None else until
        after: tuple[float, str] | None = None
        if cursor is not None:
            after = decode_cursor(cursor)
            high = min(high, after[0])
        out: list[tuple[float, HistoryRow]] = []
        offset, batch = 0, limit + 1
        deadline = time.monotonic() + self.timeout * 2
        while len(out) <= limit and time.monotonic() < deadline:
            found = client.zrevrangebyscore(index, _score(high), _score(low), start=offset,
                                            num=batch, withscores=True)
            if not found:
                break
            offset += len(found)
            members = [(m.decode(), float(s)) for m, s in found]
            if after is not None:
                members = [(m, s) for m, s in members if not (s == after[0] and m >= after[1])]
            pipe = client.pipeline(transaction=False)
            for member, _ in members:
                pipe.hget(self._row_key(member), "row")
            gone = []
            for (member, score), raw in zip(members, pipe.execute(), strict=True):
                row = self._decode(raw, score, now)
                if row is None:
                    gone.append(member)
                elif state is None or row["state"] == state:
                    out.append((score, row))
            if gone:
                client.zrem(index, *gone)
            if len(found) < batch:
                break
            batch = min(batch * 2, 2000)
        page = out[:limit]
        more = len(out) > limit
        next_cursor = encode_cursor(page[-1][0], page[-1][1]["task_id"]) if more else None
        return [row for _, row in page], next_cursor

    def clear(self) -> None:
        """Delete every row and index of this store (tests, a fresh start)."""
        client = self._redis()
        keys = list(client.scan_iter(match=f"{_glob(self.prefix)}*", count=1000))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start:start + 500])

    def close(self) -> None:
        """Close this process's connections."""
        client, self._client = self._client, None
        if client is not None:
            client.close()


def _score(value: float) -> str:
    if value == math.inf:
        return "+inf"
    if value == -math.inf:
        return "-inf"
    return repr(float(value))


def _glob(text: str) -> str:
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


# --- SQLite ------------------------------------------------------------------------------------
_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS otel_progress_history (
    task_id TEXT PRIMARY KEY,
    task_name TEXT NOT NULL DEFAULT '',
    state TEXT NOT NULL,
    attempt INTEGER NOT NULL DEFAULT 1,
    start TEXT,
    "end" TEXT,
    duration_s REAL,
    jobs_finished INTEGER NOT NULL DEFAULT 0,
    jobs_total INTEGER NOT NULL DEFAULT 0,
    exc_type TEXT,
    exc_message TEXT,
    trace_id TEXT,
    parent_id TEXT,
    log TEXT NOT NULL DEFAULT '',
    rank INTEGER NOT NULL,
    start_ts REAL,
    end_ts REAL,
    first_ts REAL NOT NULL,
    sort_ts REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS otel_progress_history_time ON otel_progress_history (sort_ts, task_id);
CREATE INDEX IF NOT EXISTS otel_progress_history_state
    ON otel_progress_history (state, sort_ts, task_id);
CREATE INDEX IF NOT EXISTS otel_progress_history_name
    ON otel_progress_history (task_name, sort_ts, task_id);
"""
TABLE: Final = "otel_progress_history"
_COLUMNS: Final = (*ROW_KEYS, "rank", "start_ts", "end_ts", "first_ts", "sort_ts")


class SQLiteHistory:
    """The history in one SQLite file: for the demo and single-machine use.

    ::

        from otel_progress.history import SQLiteHistory

        store = SQLiteHistory("/var/lib/myapp/history.db", retention_s=30 * 86400.0)

    WAL mode (readers never block the writer), one connection per process (a prefork child opens
    its own: a connection never crosses a fork), each write one ``BEGIN IMMEDIATE`` transaction
    so two processes never interleave a read and a write of one row; waits for the lock at most
    2 s. The table is ``otel_progress_history`` (a Django model with ``managed = False`` can
    read it).
    """

    def __init__(self, path: str | os.PathLike[str], *, retention_s: float = DEFAULT_RETENTION_S,
                 max_rows: int = DEFAULT_MAX_ROWS, timeout: float = TIMEOUT) -> None:
        retention = float(retention_s)
        if not retention > 0 or not math.isfinite(retention):
            raise ValueError("retention_s must be a positive number of seconds")
        if isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 1:
            raise ValueError("max_rows must be a positive int")
        self.path = str(Path(path))
        self.retention_s = retention
        self.max_rows = max_rows
        self.timeout = float(timeout)
        self._conns: dict[int, sqlite3.Connection] = {}
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._trimmed = 0.0

    def __repr__(self) -> str:
        return f"SQLiteHistory({self.path!r}, retention_s={self.retention_s})"

    def _conn(self) -> sqlite3.Connection:
        pid = os.getpid()
        if pid != self._pid:  # forked: the parent's connection and locks are not ours
            self._conns = {}
            self._lock = threading.Lock()
            self._write_lock = threading.Lock()
            self._pid = pid
        conn = self._conns.get(pid)
        if conn is None:
            with self._lock:
                conn = self._conns.get(pid)
                if conn is None:
                    conn = sqlite3.connect(self.path, timeout=self.timeout,
                                           isolation_level=None, check_same_thread=False)
                    conn.execute("PRAGMA journal_mode=WAL")
                    conn.execute("PRAGMA synchronous=NORMAL")
                    conn.executescript(_SCHEMA)
                    self._conns[pid] = conn
        return conn

    def record(self, row: Mapping[str, Any]) -> None:
        """Merge a partial row into the index (one immediate transaction)."""
        change = clean(row)
        conn = self._conn()
        now = time.time()
        with self._write_lock:
            conn.execute("BEGIN IMMEDIATE")
            try:
                found = conn.execute(f"SELECT {', '.join(_quoted(_COLUMNS))} FROM {TABLE} "
                                     "WHERE task_id = ?", (change["task_id"],)).fetchone()
                current = None
                if found is not None:
                    current = dict(zip(_COLUMNS, found, strict=True))
                    current.update(_start=current.pop("start_ts"), _end=current.pop("end_ts"),
                                   _rank=current.pop("rank"), _first=current.pop("first_ts"))
                merged, key, _wins = merge(current, change, now)
                values = complete(merged)
                values.update(rank=merged["_rank"], start_ts=merged.get("_start"),
                              end_ts=merged.get("_end"), first_ts=merged["_first"], sort_ts=key)
                conn.execute(f"INSERT OR REPLACE INTO {TABLE} ({', '.join(_quoted(_COLUMNS))}) "
                             f"VALUES ({', '.join('?' * len(_COLUMNS))})",
                             [values[c] for c in _COLUMNS])
                if now - self._trimmed > TRIM_EVERY:
                    self._trimmed = now
                    conn.execute(f"DELETE FROM {TABLE} WHERE sort_ts < ?",
                                 (now - self.retention_s,))
                    excess = conn.execute(f"SELECT COUNT(*) FROM {TABLE}").fetchone()[0] \
                        - self.max_rows
                    if excess > 0:
                        conn.execute(f"DELETE FROM {TABLE} WHERE task_id IN (SELECT task_id "
                                     f"FROM {TABLE} ORDER BY sort_ts, task_id LIMIT ?)",
                                     (excess,))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    def get(self, task_id: str) -> HistoryRow | None:
        """The row of ``task_id``, or None (never tracked, or expired)."""
        found = self._conn().execute(
            f"SELECT {', '.join(_quoted(ROW_KEYS))} FROM {TABLE} WHERE task_id = ? "
            "AND sort_ts >= ?", (task_id, time.time() - self.retention_s)).fetchone()
        return None if found is None else _sql_row(found)

    def list(self, *, state: str | None = None, name: str | None = None,
             since: float | None = None, until: float | None = None, limit: int = DEFAULT_LIMIT,
             cursor: str | None = None) -> tuple[list[HistoryRow], str | None]:
        """Rows newest first by start, and the cursor of the next page (None at the end)."""
        check_query(state, limit)
        low = time.time() - self.retention_s
        where: list[str] = ["sort_ts >= ?"]
        params: list[Any] = [low if since is None else max(since, low)]
        if until is not None:
            where.append("sort_ts <= ?")
            params.append(until)
        if state is not None:
            where.append("state = ?")
            params.append(state)
        if name is not None:
            where.append("task_name = ?")
            params.append(name)
        if cursor is not None:
            score, task_id = decode_cursor(cursor)
            where.append("(sort_ts < ? OR (sort_ts = ? AND task_id < ?))")
            params += [score, score, task_id]
        found = self._conn().execute(
            f"SELECT {', '.join(_quoted(ROW_KEYS))}, sort_ts FROM {TABLE} "
            f"WHERE {' AND '.join(where)} ORDER BY sort_ts DESC, task_id DESC LIMIT ?",
            [*params, limit + 1]).fetchall()
        page = found[:limit]
        next_cursor = encode_cursor(page[-1][-1], page[-1][0]) if len(found) > limit else None
        return [_sql_row(r[:-1]) for r in page], next_cursor

    def clear(self) -> None:
        """Delete every row (tests, a fresh start)."""
        self._conn().execute(f"DELETE FROM {TABLE}")

    def close(self) -> None:
        """Close this process's connection."""
        conn = self._conns.pop(os.getpid(), None)
        if conn is not None:
            conn.close()


def _quoted(names: Iterable[str]) -> list[str]:
    return [f'"{n}"' for n in names]


def _sql_row(values: Iterable[Any]) -> HistoryRow:
    return complete(dict(zip(ROW_KEYS, values, strict=True)))  # type: ignore[return-value]


# --- choosing a store -----------------------------------------------------------------------------
def store_from_url(url: str, *, retention_s: float = DEFAULT_RETENTION_S) -> Any:
    """A store for ``redis://host:port/db`` (``rediss://``, ``unix://``) or SQLAlchemy-style
    ``sqlite:///relative.db`` / ``sqlite:////absolute/path.db``."""
    if not isinstance(url, str):
        raise TypeError("a history URL is a string")
    if url.startswith(("redis://", "rediss://", "unix://")):
        return RedisHistory(url, retention_s=retention_s)
    if url.startswith("sqlite:///"):
        path = url[len("sqlite:///"):]
        if not path:
            raise ValueError("sqlite:/// needs a file path (an in-memory database is not shared)")
        return SQLiteHistory(path, retention_s=retention_s)
    raise ValueError(f"unknown history URL {url!r}: redis://host:port/db, sqlite:///relative.db "
                     "or sqlite:////absolute/path.db")


def is_store(value: object) -> bool:
    """Whether ``value`` has the three methods of a history store."""
    return all(callable(getattr(value, m, None)) for m in ("record", "get", "list"))


# --- rows from payloads, and payloads from rows -------------------------------------------------
def change_from_payload(payload: Mapping[str, Any], *, parent_id: str | None = None,
                        final: bool = True) -> Row:
    """What a payload tells the index: its state, attempt, jobs, exception, log and times."""
    state = str(payload.get("state") or "running")
    jobs = payload.get("jobs") or {}
    change: Row = {
        "task_id": str(payload.get("task_uuid") or ""), "task_name": payload.get("task_name"),
        "state": state, "attempt": int(payload.get("attempt") or 1),
        "start": payload.get("start"), "trace_id": payload.get("trace_id"),
        "parent_id": parent_id,
    }
    if final or state != "running":
        change.update(jobs_finished=int(jobs.get("finished") or 0),
                      jobs_total=int(jobs.get("total") or 0), exc_type=payload.get("exc_type"),
                      exc_message=payload.get("exc_message"), log=payload.get("log") or "")
        if state in FINAL:
            change["end"] = payload.get("end") or iso(time.time())
    return change


def payload_from_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """The status payload of a run the result backend forgot: what its row still knows."""
    state = str(row.get("state") or "queued")
    final = state in FINAL
    failed = state in ("failed", "revoked")
    return {
        "schema": SCHEMA_VERSION, "state": state, "pending": state == "queued",
        "current": 100 if final and not failed else 0, "total": 100,
        "percent": 100.0 if final and not failed else 0.0, "indeterminate": not final,
        "description": "", "exc_type": row.get("exc_type"), "exc_message": row.get("exc_message"),
        "task_name": row.get("task_name") or "", "task_uuid": row.get("task_id"),
        "start": row.get("start"), "end": row.get("end"), "log": row.get("log") or "",
        "exception": row.get("exc_message") if failed else None, "finished": final,
        "status": 2 if not final else (0 if failed or (row.get("jobs_total") or 0) > (
            row.get("jobs_finished") or 0) else 1),
        "jobs": {"finished": row.get("jobs_finished") or 0, "total": row.get("jobs_total") or 0},
        "sections": [], "trace_id": row.get("trace_id"), "span_id": None,
        "attempt": row.get("attempt") or 1, "children": [],
        "updated": row.get("end") or row.get("start") or iso(time.time()), "from_history": True,
    }


# --- exports -----------------------------------------------------------------------------------
_INT_COLUMNS: Final = frozenset({"attempt", "jobs_finished", "jobs_total"})
_TEXT_COLUMNS: Final = frozenset({"task_id", "task_name", "state", "log"})


def _neutralise(value: object) -> str:
    if value is None:
        return ""
    text = value if isinstance(value, str) else json.dumps(value)
    return "'" + text if text.startswith(CSV_DANGEROUS) else text


def write_csv(rows: Iterable[Mapping[str, Any]], out: IO[str]) -> None:
    """Rows as RFC 4180 CSV (CRLF line ends, a header of ROW_KEYS); a cell starting with
    ``= + - @``, tab, CR or ``'`` is prefixed with ``'`` so no spreadsheet runs it as a formula.
    :func:`read_csv` undoes exactly that."""
    writer = csv.writer(out, lineterminator="\r\n", quoting=csv.QUOTE_MINIMAL)
    writer.writerow(ROW_KEYS)
    for row in rows:
        writer.writerow([_neutralise(row.get(key)) for key in ROW_KEYS])


def read_csv(source: IO[str] | str) -> list[HistoryRow]:
    """The rows of a :func:`write_csv` export, as the store returned them (the documented reader:
    the ``'`` prefix removed, numbers typed, an empty cell None, or ``""`` for a text column)."""
    stream = io.StringIO(source, newline="") if isinstance(source, str) else source
    reader = csv.reader(stream)
    header = next(reader, None)
    if header is None:
        return []
    if tuple(header) != ROW_KEYS:
        raise ValueError("not an otel-progress history export (unexpected header)")
    rows: list[HistoryRow] = []
    for cells in reader:
        row: Row = {}
        for key, cell in zip(ROW_KEYS, cells, strict=True):
            text = cell[1:] if cell.startswith("'") else cell
            if cell == "":
                row[key] = "" if key in _TEXT_COLUMNS else None
            elif key in _INT_COLUMNS:
                row[key] = int(text)
            elif key == "duration_s":
                row[key] = float(text)
            else:
                row[key] = text
        rows.append(complete(row))  # type: ignore[arg-type]
    return rows


def dumps_rows(rows: Iterable[Mapping[str, Any]]) -> str:
    """Rows as a JSON array (each object with exactly ROW_KEYS); ``json.loads`` gives them back."""
    return json.dumps([complete(r) for r in rows], ensure_ascii=False, allow_nan=False,
                      indent=1) + "\n"
