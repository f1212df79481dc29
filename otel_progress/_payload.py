"""The versioned progress payload frontends read: one TypedDict, one JSON Schema, one builder.

It is a superset of what existing frontends read, so they work unchanged:
celery-progress (``pending, current, total, percent, description``), mastf (the same plus
``exc_type, exc_message``) and the TaskUpdater seed API (``task_name, task_uuid, start, end, log,
exception, finished, status``); new keys carry the trace link and the section tree.
"""

from __future__ import annotations

import datetime as _dt
import json
from importlib import resources
from typing import Any, Final, Literal, TypedDict

from typing_extensions import NotRequired

SCHEMA_VERSION: Final = 1
"""``schema`` key of every payload; bumped on an incompatible change."""
MAX_PAYLOAD_BYTES: Final = 16 * 1024
"""Upper bound of a serialised payload; the log and tree are trimmed to fit."""

RunState = Literal["queued", "running", "retrying", "succeeded", "failed", "revoked"]
SectionState = Literal["running", "succeeded", "failed"]
FINAL_STATES: Final[frozenset[str]] = frozenset({"succeeded", "failed", "revoked"})


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
    interrupted: NotRequired[str | None]
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


class ProgressPayload(TypedDict):
    """What the state bridge publishes and ``TaskUpdater.to_dict()`` returns."""

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
    traceback: NotRequired[str | None]
    children_progress: NotRequired[ChildrenProgress]


def iso(ts: float | None) -> str | None:
    """ISO-8601 UTC with a ``Z``, as the seed's API shows times."""
    if ts is None:
        return None
    return _dt.datetime.fromtimestamp(ts, _dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def schema() -> dict[str, Any]:
    """The payload's JSON Schema (shipped in the package as ``schema/progress-v1.json``)."""
    text = resources.files("otel_progress").joinpath("schema/progress-v1.json").read_text("utf-8")
    result: dict[str, Any] = json.loads(text)
    return result


def dumps(payload: ProgressPayload | dict[str, Any]) -> str:
    """Compact JSON, the form that is stored and measured against MAX_PAYLOAD_BYTES."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
