"""The versioned progress payload frontends read: types, the builder, fitting, the queued
payload, and the one mapping of Celery states to ours.

It is a superset of what existing frontends read, so they work unchanged:
celery-progress (``pending, current, total, percent, description``), mastf (the same plus
``exc_type, exc_message``) and the TaskUpdater seed API (``task_name, task_uuid, start, end, log,
exception, finished, status``); new keys carry the trace link and the section tree. No
OpenTelemetry and no Celery here: the Celery reader hands over plain state names.
"""

from __future__ import annotations

import datetime as _dt
import json
import time
from importlib import resources
from typing import Any, Final, TypedDict

from typing_extensions import NotRequired

from otel_progress import _rate
from otel_progress._run import (
    FAILED,
    FINAL_STATES,
    QUEUED,
    RETRYING,
    REVOKED,
    RUNNING,
    STATUS_COMPLETED,
    STATUS_FAILED,
    STATUS_RUNNING,
    SUCCEEDED,
    Node,
    Run,
    RunState,
    SectionState,
)
from otel_progress._safety import MAX_NAME, internal_error, redact, redact_value, safe_str

__all__ = [
    "FINAL_STATES", "MAX_PAYLOAD_BYTES", "PRIVATE_KEY", "SCHEMA_VERSION", "ChildProgress",
    "ChildrenProgress", "JobsPayload", "OpenSpan", "PrivatePart", "ProgressPayload", "RunState",
    "SectionPayload", "SectionState", "build", "comparable", "dumps", "from_celery", "iso",
    "queued", "schema",
]

SCHEMA_VERSION: Final = 1
"""``schema`` key of every payload; bumped on an incompatible change."""
MAX_PAYLOAD_BYTES: Final = 16 * 1024
"""Upper bound of a serialised payload; caller meta, the log and the tree are trimmed to fit."""
PAYLOAD_MAX_DEPTH: Final = 6
"""Levels of the section tree in the payload; deeper levels become an ``omitted`` marker."""
PAYLOAD_MAX_NODES: Final = 60
"""Sections listed in the payload at most; the rest are counted in ``omitted`` markers."""
MAX_EXTRA_KEYS: Final = 50
"""Caller meta keys (``Observer.update(meta=)``) kept in the payload."""
MAX_CHILDREN_LISTED: Final = 100
"""Child task ids listed in the payload (the reader aggregates every child it was told of)."""
OMITTED_NAME: Final = "…"

CELERY_STATES: Final[dict[str, RunState]] = {
    "PENDING": QUEUED,
    "RECEIVED": QUEUED,
    "STARTED": RUNNING,
    "PROGRESS": RUNNING,
    "RETRY": RETRYING,
    "SUCCESS": SUCCEEDED,
    "FAILURE": FAILED,
    "REVOKED": REVOKED,
    "IGNORED": SUCCEEDED,
    "REJECTED": FAILED,
}
"""The one mapping of Celery's states to ours; an unknown custom state reads ``running``."""
CELERY_FINAL: Final = frozenset({"SUCCESS", "FAILURE", "REVOKED", "IGNORED", "REJECTED"})


class JobsPayload(TypedDict):
    """Seed jobs: a job is a section without sub-sections, or any section that failed."""

    finished: int
    total: int


class SectionPayload(TypedDict):
    """One node of the section tree (or an ``omitted`` marker with name ``…``)."""

    name: str
    state: NotRequired[SectionState]
    percent: NotRequired[float | None]
    start: NotRequired[str | None]
    end: NotRequired[str | None]
    error: NotRequired[str | None]
    error_type: NotRequired[str | None]
    interrupted: NotRequired[str | None]
    elapsed_s: NotRequired[float | None]
    rate: NotRequired[float | None]
    eta_s: NotRequired[float | None]
    children: NotRequired[list[SectionPayload]]
    omitted: NotRequired[int]


class ChildProgress(TypedDict):
    """One child task as the reader saw it."""

    id: str
    state: RunState
    percent: float


class ChildrenProgress(TypedDict):
    """Children's progress, aggregated on read by ``otel_progress.celery.get_progress``."""

    total: int
    finished: int
    failed: int
    percent: float
    tasks: list[ChildProgress]


class OpenSpan(TypedDict):
    """A span a worker opened and had not ended at its last write (hex ids, epoch seconds).

    Kept so that the main worker process can end it, with its original ids, when the process
    that owned it dies (post-mortem span closure)."""

    name: str
    trace_id: str
    span_id: str
    parent_id: str | None
    start: float
    depth: int
    """0 for the run span, 1 for a top-level section, ..."""


class PrivatePart(TypedDict):
    """The payload's private part: stored in the result backend, never served to a browser
    (``get_progress`` and the status app strip it)."""

    open_spans: list[OpenSpan]


PRIVATE_KEY: Final = "_private"
"""Key of the private part in a stored payload."""
MAX_OPEN_SPANS: Final = 16
"""Open spans kept in the private part (outermost first: a deeper one needs its parents)."""


class ProgressPayload(TypedDict):
    """What the state bridge publishes and ``TaskUpdater.to_dict()`` returns.

    ``elapsed_s`` (seconds since the run started, to its end once finished), ``rate`` (items
    per second when the run counts items of its own, else percent per second; smoothed) and
    ``eta_s`` (seconds left; null while progress is unknown) are as of ``updated``.
    """

    schema: int
    state: RunState
    pending: bool
    current: int | float
    total: int | float
    percent: float
    indeterminate: bool
    description: str
    exc_type: str | None
    exc_message: str | None
    task_name: str
    task_uuid: str
    start: str | None
    end: str | None
    log: str
    exception: str | None
    finished: bool
    status: int
    jobs: JobsPayload
    sections: list[SectionPayload]
    trace_id: str | None
    span_id: str | None
    attempt: int
    children: list[str]
    updated: str
    elapsed_s: float | None
    rate: float | None
    eta_s: float | None
    traceback: NotRequired[str | None]
    children_progress: NotRequired[ChildrenProgress]
    celery_state: NotRequired[str | None]
    stale: NotRequired[bool]
    retry_at: NotRequired[str | None]
    _private: NotRequired[PrivatePart]


_SECOND_MEMO: dict[int, str] = {}
"""``YYYY-MM-DDTHH:MM:SS`` of recent whole seconds: a task's timestamps share a few seconds, so
formatting one is a dict lookup and the microseconds (``datetime.isoformat`` cost ~3 us a call,
a dozen per payload build, every build of every task)."""
_ISO_BACK: dict[str, float] = {}
"""Recent texts :func:`iso` made and the timestamp parsing each gives (to the microsecond, as the
text says): the history row is read from a payload that was just built."""
_MEMO_SIZE: Final = 4096


def iso(ts: float | None) -> str | None:
    """ISO-8601 UTC with a ``Z``, as the seed's API shows times (what
    ``datetime.fromtimestamp(ts, utc).isoformat(timespec="microseconds")`` writes, microseconds
    rounded half to even as it rounds them)."""
    if ts is None:
        return None
    if not 0.0 <= ts < 253402300799.0:  # before 1970 or after 9999: the datetime way
        naive = _dt.datetime.fromtimestamp(ts, _dt.timezone.utc).replace(tzinfo=None)
        return naive.isoformat(timespec="microseconds") + "Z"
    second = int(ts)
    micro = round((ts - second) * 1e6)  # ts - second is exact; round() is half to even
    if micro >= 1_000_000:
        second, micro = second + 1, micro - 1_000_000
    head = _SECOND_MEMO.get(second)
    if head is None:
        if len(_SECOND_MEMO) >= _MEMO_SIZE:
            _SECOND_MEMO.clear()
        head = _SECOND_MEMO[second] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
    text = f"{head}.{micro:06d}Z"
    if len(_ISO_BACK) >= _MEMO_SIZE:
        _ISO_BACK.clear()
    _ISO_BACK[text] = (second * 1_000_000 + micro) / 1_000_000  # what parsing the text gives
    return text


def parse_iso(text: object) -> float | None:
    """The timestamp of an ISO-8601 string (ours or Celery's ``date_done``), else None."""
    if isinstance(text, _dt.datetime):
        value = text
    elif isinstance(text, str) and text:
        back = _ISO_BACK.get(text)
        if back is not None:
            return back
        try:
            value = _dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            return None
    else:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=_dt.timezone.utc)
    return value.timestamp()


def schema() -> dict[str, Any]:
    """The payload's JSON Schema (shipped in the package as ``schema/progress-v1.json``)."""
    text = resources.files("otel_progress").joinpath("schema/progress-v1.json").read_text("utf-8")
    result: dict[str, Any] = json.loads(text)
    return result


COMPACT: Final = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
"""One encoder for every compact JSON text (``json.dumps`` with options builds one per call,
~1.6 us, a dozen times per task end)."""


def dumps(payload: ProgressPayload | dict[str, Any]) -> str:
    """Compact JSON, the form that is stored and measured against MAX_PAYLOAD_BYTES."""
    return COMPACT.encode(payload)


# --- the builder -------------------------------------------------------------------------------
def build(run: Run, open_spans: list[OpenSpan] | None = None) -> ProgressPayload:
    """The run's payload: bounded in size, never NaN, JSON-safe.

    ``open_spans`` (the publisher's, for the backend only) becomes the private part."""
    return _fit(_build(run, open_spans))[0]


def build_text(run: Run, open_spans: list[OpenSpan] | None = None,
               ) -> tuple[ProgressPayload, str]:
    """:func:`build` and the payload's JSON text (``dumps``): the size check encoded it already,
    so a writer storing the payload right away does not encode it a second time."""
    data = _build(run, open_spans)
    payload, text = _fit(data)
    return payload, text if text is not None else dumps(payload)


def _build(run: Run, open_spans: list[OpenSpan] | None) -> ProgressPayload:
    with run.lock:
        now = time.time()
        percent, indeterminate = run.overall_percent()
        current, total = run.current_total(percent)
        failed = run.failed or run.state in (FAILED, REVOKED)
        finished = run.finished and run.state != RETRYING
        elapsed, rate, eta = _rate.run(run.node, percent, indeterminate, finished, run.state,
                                       run.end, now)
        data: ProgressPayload = {
            "schema": SCHEMA_VERSION,
            "state": run.state,
            "pending": run.state == QUEUED,
            "current": current,
            "total": total,
            "percent": round(percent, 2),
            "indeterminate": indeterminate,
            "description": run.description,
            "exc_type": run.exc_type if failed else None,
            "exc_message": run.exc_message if failed else None,
            "task_name": run.task_name,
            "task_uuid": run.task_uuid,
            "start": iso(run.start),
            "end": iso(run.end),
            "log": run.log.text(),
            "exception": run.exc_message if run.latest_exc is not None or failed else None,
            "finished": finished,
            "status": run.status,
            "jobs": JobsPayload(finished=run.jobs_finished, total=run.jobs_total),
            "sections": _tree(run.node, now),
            "trace_id": run.trace_id,
            "span_id": run.span_id,
            "attempt": run.attempt,
            "children": list(run.children[-MAX_CHILDREN_LISTED:]),
            "updated": iso(now) or "",
            "elapsed_s": elapsed,
            "rate": rate,
            "eta_s": eta,
        }
        if run.include_traceback:
            data["traceback"] = run.latest_traceback
        if run.state == RETRYING:
            data["retry_at"] = iso(run.retry_at)
        for key, value in list(run.extra.items())[:MAX_EXTRA_KEYS]:
            data.setdefault(key, _json_safe(redact_value(key, value)))  # type: ignore[misc]
        if open_spans:
            data["_private"] = PrivatePart(open_spans=open_spans[:MAX_OPEN_SPANS])
    return data


VOLATILE_KEYS: Final = frozenset({"updated", "elapsed_s", "rate", "eta_s"})
"""Keys that change with the clock alone: a payload that differs only in them is no news."""


def comparable(payload: ProgressPayload | dict[str, Any]) -> dict[str, Any]:
    """The payload without its clock-driven keys (also in the section tree), to tell whether
    anything happened since the last write (a stalled task is not rewritten every interval)."""
    def strip(sections: object) -> object:
        if not isinstance(sections, list):
            return sections
        return [{k: (strip(v) if k == "children" else v) for k, v in item.items()
                 if k not in VOLATILE_KEYS} if isinstance(item, dict) else item
                for item in sections]

    return {k: (strip(v) if k == "sections" else v) for k, v in payload.items()
            if k not in VOLATILE_KEYS}


def _json_safe(value: Any) -> Any:
    """A caller's meta value as JSON can carry it (others become capped text, NaN null)."""
    try:
        text = json.dumps(value, default=safe_str, allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        return safe_str(value)
    if len(text) > MAX_PAYLOAD_BYTES:
        return safe_str(value, 1000)  # a 1 MB blob must not even be copied whole
    return json.loads(text)


def _section_payload(node: Node, now: float) -> SectionPayload:
    pct = node.shown_percent()
    elapsed, rate, eta = _rate.section(node, now)
    return SectionPayload(
        name=safe_str(node.name, MAX_NAME),
        state=node.state,
        percent=None if pct is None else round(pct, 2),
        start=iso(node.start),
        end=iso(node.end),
        error=node.error,
        error_type=node.error_type,
        interrupted=node.interrupted,
        elapsed_s=elapsed,
        rate=rate,
        eta_s=eta,
        children=[],
    )


def _tree(root: Node, now: float) -> list[SectionPayload]:
    """The section tree with at most PAYLOAD_MAX_NODES nodes and PAYLOAD_MAX_DEPTH levels."""
    budget = [PAYLOAD_MAX_NODES]

    def build_level(node: Node) -> list[SectionPayload]:
        head, omitted, tail = node.children()
        out: list[SectionPayload] = []
        skipped = omitted
        for child in (*head, None, *tail):
            if child is None:
                if skipped:
                    out.append(SectionPayload(name=OMITTED_NAME, omitted=skipped))
                skipped = 0
                continue
            if budget[0] <= 0:
                skipped += 1
                continue
            budget[0] -= 1
            item = _section_payload(child, now)
            if child.has_children:
                if child.depth >= PAYLOAD_MAX_DEPTH:
                    sub_head, sub_omitted, sub_tail = child.children()
                    item["children"] = [SectionPayload(
                        name=OMITTED_NAME, omitted=len(sub_head) + sub_omitted + len(sub_tail)
                    )]
                else:
                    item["children"] = build_level(child)
            out.append(item)
        if skipped:
            out.append(SectionPayload(name=OMITTED_NAME, omitted=skipped))
        return out

    return build_level(root)


_KNOWN_KEYS: Final = frozenset(ProgressPayload.__annotations__)


def _size(data: ProgressPayload) -> int:
    return len(dumps(data).encode("utf-8"))


def fit(data: ProgressPayload) -> ProgressPayload:
    """Trim caller meta, then the log, then the tree until the payload is under the cap."""
    return _fit(data)[0]


def _fit(data: ProgressPayload) -> tuple[ProgressPayload, str | None]:
    """:func:`fit`, and the JSON text it measured when it let the payload through whole."""
    try:
        text = dumps(data)
        size = len(text) if text.isascii() else len(text.encode("utf-8"))
    except (TypeError, ValueError) as exc:  # never ship a non-JSON payload
        internal_error("payload", exc)
        for key in [k for k in data if k not in _KNOWN_KEYS]:
            del data[key]  # type: ignore[misc]
        data["sections"] = []
        data["log"] = ""
        return data, None
    if size <= MAX_PAYLOAD_BYTES:
        return data, text
    extra = [k for k in data if k not in _KNOWN_KEYS]
    for key in sorted(extra, key=lambda k: -len(dumps({k: data[k]}))):  # type: ignore[literal-required]
        value = data[key]  # type: ignore[literal-required]
        data[key] = safe_str(value, 200) if not isinstance(value, (int, float)) else value  # type: ignore[literal-required]
        if _size(data) <= MAX_PAYLOAD_BYTES:
            return data, None
    over = _size(data) - MAX_PAYLOAD_BYTES
    log = data["log"]
    if len(log) > over + 64:
        cut = len(log) - over - 64
        data["log"] = "\t… trimmed …\n" + log[-cut:]
    if _size(data) > MAX_PAYLOAD_BYTES:
        count = len(data["sections"])
        data["sections"] = [SectionPayload(name=OMITTED_NAME, omitted=count)]
    if _size(data) > MAX_PAYLOAD_BYTES:
        data["log"] = data["log"][-2048:]
        data["description"] = data["description"][:200]
        for key in extra:
            del data[key]  # type: ignore[misc]
    private = data.get("_private")
    if private is not None and _size(data) > MAX_PAYLOAD_BYTES:
        private["open_spans"] = private["open_spans"][:4]
    return data, None


# --- payloads without a run --------------------------------------------------------------------
def queued(task_id: str, task_name: str, now: float | None = None) -> ProgressPayload:
    """What a task published but not yet started reads: ``queued``, 0 %, indeterminate."""
    return {
        "schema": SCHEMA_VERSION, "state": QUEUED, "pending": True, "current": 0, "total": 100,
        "percent": 0.0, "indeterminate": True, "description": "", "exc_type": None,
        "exc_message": None, "task_name": safe_str(task_name), "task_uuid": task_id,
        "start": None, "end": None, "log": "", "exception": None, "finished": False,
        "status": STATUS_RUNNING, "jobs": {"finished": 0, "total": 0}, "sections": [],
        "trace_id": None, "span_id": None, "attempt": 1, "children": [],
        "updated": iso(time.time() if now is None else now) or "", "elapsed_s": None,
        "rate": None, "eta_s": None,
    }


def from_celery(
    payload: dict[str, Any] | None,
    celery_state: str,
    *,
    exc_type: str | None = None,
    exc_message: str | None = None,
    date_done: object = None,
) -> dict[str, Any] | None:
    """Reconcile our last payload with what Celery says of the task now.

    A final payload of ours stands (``fail()`` then ``return`` reads failed although Celery says
    SUCCESS), except that Celery's REVOKED, and a FAILURE for a payload that never finished,
    win. A payload that never got its final write (a killed child, a task that raised before it
    made an updater) is closed here: ``finished``, the seed status, ``end``, Celery's exception,
    the open sections failed at the percent they had, and the last progress kept.
    """
    if payload is None:
        return None
    ours = dict(payload)
    state = CELERY_STATES.get(celery_state)
    if state is None:  # a custom state of the task's own: it is running
        state = RUNNING
    ours["celery_state"] = celery_state
    if celery_state not in CELERY_FINAL:
        if ours.get("state") in FINAL_STATES:
            return ours  # our final write landed just before Celery's
        if state == QUEUED and ours.get("state") not in (None, QUEUED):
            return ours  # a retry's PENDING between attempts: keep what we know
        ours["state"] = state
        ours["pending"] = state == QUEUED
        return ours
    failed = state in (FAILED, REVOKED)
    if state == REVOKED and ours.get("finished") and ours.get("state") == REVOKED:
        return ours  # a cancel we recorded (TaskCancelled): our exception and sections stand
    if not failed and ours.get("finished") and ours.get("state") in FINAL_STATES:
        return ours  # Celery says SUCCESS: our own verdict stands (fail() then return)
    ours["state"] = state
    ours["pending"] = False
    ours["finished"] = True
    ours["status"] = STATUS_FAILED if failed or ours.get("status") == STATUS_FAILED else (
        STATUS_COMPLETED
    )
    if not ours.get("end"):
        ours["end"] = iso(parse_iso(date_done) or time.time())
    ours["eta_s"] = None if failed else 0.0  # nothing is left to wait for
    if failed:
        if exc_type is not None:
            ours["exc_type"] = safe_str(exc_type, 200)
            ours["exc_message"] = redact(safe_str(exc_message or ""))
            ours["exception"] = ours["exc_message"]
        _close_sections(ours.get("sections"), exc_type or ("Revoked" if state == REVOKED else None))
    else:
        ours["percent"] = 100.0
        ours["indeterminate"] = False
        _close_sections(ours.get("sections"), None)
    return ours


def _close_sections(sections: object, error_type: str | None) -> None:
    """Mark still-running sections as the task ended them: failed at their percent."""
    if not isinstance(sections, list):
        return
    for item in sections:
        if not isinstance(item, dict):
            continue
        if item.get("state") == RUNNING:
            if item.get("eta_s") is not None:
                item["eta_s"] = 0.0 if error_type is None else None
            if error_type is None:
                item["state"] = SUCCEEDED
                item["percent"] = 100.0
            else:
                item["state"] = FAILED
                item["error_type"] = error_type
                item.setdefault("error", None)
        _close_sections(item.get("children"), error_type)
