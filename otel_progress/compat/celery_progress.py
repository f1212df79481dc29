"""celery-progress's API on otel_progress: ``from otel_progress.compat.celery_progress import
ProgressRecorder`` instead of ``from celery_progress.backend import ProgressRecorder``.

What a frontend reads stays celery-progress's: the ``PROGRESS`` meta carries its keys
(``pending, current, total, percent, description``; otel_progress's payload is a superset),
``percent`` is rounded as celery-progress rounds it (``Decimal``, two places, half-even) except
that it reads below 100 until the task ends, and ``Progress(result).get_info()`` /
``GroupProgress(group).get_info()`` answer in celery-progress's shape. What changes underneath:
each ``set_progress`` only updates counters (no backend round trip per call: the flusher writes
at most once per ``min_interval``), the task's ``run/<task>`` span carries the progress, and a
new description becomes a span event. celery-progress's JavaScript works unchanged against the
status app's ``GET /tasks/<id>?format=celery-progress``.
"""

from __future__ import annotations

import re
import time
from decimal import Decimal, InvalidOperation
from typing import Any, Final

from otel_progress import _celery, _spans
from otel_progress._backend import read
from otel_progress._run import Run
from otel_progress._safety import as_number, internal_error, safe_str

__all__ = ["PROGRESS_STATE", "GroupProgress", "Progress", "ProgressRecorder"]

PROGRESS_STATE: Final = "PROGRESS"


def _percent(current: int | float, total: int | float) -> float:
    """celery-progress's percent: ``float(round(Decimal(current) / Decimal(total) * 100, 2))``."""
    if total <= 0:
        return 0.0
    try:
        return float(round(Decimal(current) / Decimal(total) * Decimal(100), 2))
    except (InvalidOperation, ValueError, OverflowError):
        return 0.0


class ProgressRecorder:
    """celery-progress's ``ProgressRecorder(task)``, recorded as span data and coalesced.

    ::

        @shared_task(bind=True)
        def import_rows(self, rows):
            recorder = ProgressRecorder(self)
            for i, row in enumerate(rows):
                store(row)
                recorder.set_progress(i + 1, len(rows), description=f"row {i + 1}")

    ``current``, ``total`` and ``description`` are attributes, as in celery-progress (the
    description attribute keeps the last non-empty one; the meta shows the call's own).
    """

    current: int | float = 0
    total: int | float = 0
    description: str = ""

    def __init__(self, task: Any) -> None:
        self.task = task
        self._run: Run | None = None
        self._last_text: str | None = None

    @property
    def run(self) -> Run:
        """The run this recorder reports to: the executing task's (created on first use)."""
        run = self._run
        if run is None:
            run = self._run = _celery.run_for_current_task(observed_task=self.task)
        return run

    def set_progress(self, current: int | float, total: int | float,
                     description: str = "") -> tuple[str, dict[str, Any]]:
        """Set the task's progress; returns ``(state, meta)`` as celery-progress does.

        Non-numbers (and NaN, inf, bool) are ignored and logged once; negatives clamp to 0.
        """
        cur = as_number(current, "ProgressRecorder.set_progress(current=)", self)
        tot = as_number(total, "ProgressRecorder.set_progress(total=)", self)
        cur = self.current if cur is None else max(cur, 0)
        tot = self.total if tot is None else max(tot, 0)
        text = description if isinstance(description, str) else safe_str(description)
        self.current, self.total = cur, tot
        if text:
            self.description = text
        percent = _percent(cur, tot)
        try:
            run = self.run
            node = run.node
            node.current = cur
            node.total = tot if tot > 0 else None
            node.explicit_pct = percent  # celery-progress's rounding, not ours
            shown = min(percent, 99.99) if not run.finished else percent
            if text != self._last_text:  # an event per new description, not per call
                self._last_text = text
                if text:
                    safe = safe_str(text)
                    run.note(safe)  # the payload's description and a log line
                    _spans.notify(node, safe, None)
                else:
                    run.description = ""  # celery-progress's meta shows the call's own
            run.last_progress = time.time()
        except Exception as exc:
            internal_error("ProgressRecorder.set_progress", exc)
            shown = min(percent, 99.99)
        meta = {"pending": False, "current": cur, "total": tot, "percent": shown,
                "description": text}
        return PROGRESS_STATE, meta

    def increment_progress(self, by: int | float = 1,
                           description: str = "") -> tuple[str, dict[str, Any]]:
        """Add ``by`` to ``current`` (useful when the total is unknown), as celery-progress."""
        step = as_number(by, "ProgressRecorder.increment_progress(by=)", self)
        return self.set_progress(self.current + (step or 0), self.total, description)


# --- reading -----------------------------------------------------------------------------------
def _completed() -> dict[str, Any]:
    return {"pending": False, "current": 100, "total": 100, "percent": 100}


def _unknown(state: str) -> dict[str, Any]:
    return {"pending": state == "PENDING", "current": 0, "total": 100, "percent": 0}


class Progress:
    """celery-progress's ``Progress(result).get_info()``, read through otel_progress.

    Our payload (``otel_progress.celery.get_progress``) decides while it exists, so a task that
    called ``fail()`` and returned reads ``success: false`` as in the status app; a task
    otel_progress never tracked is read from Celery's meta exactly as celery-progress reads it.
    """

    def __init__(self, result: Any) -> None:
        self.result = result

    def get_info(self) -> dict[str, Any]:
        """``{state, complete, success, progress[, result]}`` as celery-progress answers."""
        result = self.result
        payload = read(result.app, str(result.id), children=False)
        if payload is None:
            return _celery_progress_info(result)
        meta = result._get_task_meta()
        celery_state = str(meta.get("status"))
        state = payload.get("state")
        response: dict[str, Any] = {}
        if state == "succeeded":
            ignored = celery_state == "IGNORED"
            response = {"state": celery_state if ignored else "SUCCESS", "complete": True,
                        "success": None if ignored else True, "progress": _completed()}
            if ignored:
                response["result"] = str(meta.get("result"))
            else:
                response["result"] = meta.get("result") if celery_state == "SUCCESS" else None
        elif state in ("failed", "revoked"):
            message = payload.get("exc_message") or payload.get("exception") or str(
                meta.get("result"))
            shown = "REVOKED" if state == "revoked" else "FAILURE"
            response = {"state": shown, "complete": True, "success": False,
                        "progress": _completed(),
                        "result": ("Task " + str(message)) if state == "revoked" else message}
        elif state == "retrying":
            response = {"state": "RETRY", "complete": True, "success": False,
                        "progress": _completed(), "result": _retry_result(meta)}
        elif state == "running":
            response = {"state": PROGRESS_STATE, "complete": False, "success": None,
                        "progress": {k: payload.get(k) for k in
                                     ("pending", "current", "total", "percent", "description")}}
        else:  # queued
            shown = celery_state if celery_state in ("PENDING", "STARTED") else "PENDING"
            response = {"state": shown, "complete": False, "success": None,
                        "progress": _unknown(shown)}
        return response

    @property
    def is_failed(self) -> bool:
        """complete and not successful, as celery-progress."""
        info = self.get_info()
        return bool(info["complete"]) and info["success"] is False


def _retry_result(meta: dict[str, Any]) -> dict[str, Any]:
    traceback = meta.get("traceback") or ""
    found = re.search(r"Retry in \d{1,10}s", traceback)
    seconds: int | str = int(found.group()[9:-1]) if found else "Unknown"
    return {"next_retry_seconds": seconds, "message": f"{str(meta.get('result'))[0:50]}..."}


def _celery_progress_info(result: Any) -> dict[str, Any]:
    """celery-progress's own reading of Celery's meta (a task otel_progress never tracked)."""
    meta = result._get_task_meta()
    state = str(meta["status"])
    info = meta["result"]
    response: dict[str, Any] = {"state": state}
    if state in ("SUCCESS", "FAILURE"):
        success = result.successful()
        response.update({"complete": True, "success": success, "progress": _completed(),
                         "result": info if success else str(info)})
    elif state in ("RETRY", "REVOKED"):
        response.update({"complete": True, "success": False, "progress": _completed(),
                         "result": _retry_result(meta) if state == "RETRY" else "Task "
                         + str(info)})
    elif state == "IGNORED":
        response.update({"complete": True, "success": None, "progress": _completed(),
                         "result": str(info)})
    elif state == PROGRESS_STATE:
        response.update({"complete": False, "success": None, "progress": info})
    elif state in ("PENDING", "STARTED"):
        response.update({"complete": False, "success": None, "progress": _unknown(state)})
    else:
        response.update({"complete": True, "success": False, "progress": _unknown(state),
                         "result": f"Unknown state {state}"})
    return response


class GroupProgress:
    """celery-progress's ``GroupProgress(group_result).get_info()``; also takes a group id.

    ``GroupProgress("<group id>", app=celery_app)`` restores the group (saved with
    ``group(...).apply_async().save()``) from the result backend.
    """

    def __init__(self, group_result: Any, *, app: Any = None) -> None:
        if isinstance(group_result, str):
            from celery.result import GroupResult

            restored = GroupResult.restore(group_result, app=app)
            if restored is None:
                raise LookupError(f"no saved group {group_result!r} in the result backend")
            group_result = restored
        self.group_result = group_result

    def get_info(self) -> dict[str, Any]:
        """``{complete, success, progress: {total, current, percent}}`` over the children."""
        children = self.group_result.children
        if not children:
            raise ValueError("There were no tasks to track in the group!")
        infos = [Progress(child).get_info() for child in children]
        progresses = [info["progress"] for info in infos]
        total = sum(p["total"] for p in progresses)
        current = sum(p["current"] for p in progresses)
        percent = float(round(100 * current / total, 2)) if total else 0.0
        return {
            "complete": all(info["complete"] for info in infos),
            "success": all(info["success"] for info in infos),
            "progress": {"total": total, "current": current, "percent": percent},
        }
