"""A stand-in for mastf's ``mastf.core.progress.Observer`` (mastf is not on PyPI), written from
its documentation (/work/shared/seeds/mastf-progress-observer.rst) and its published source: the
"before" of docs/migration/mastf-observer.md runs against it. Only the migration test puts this
directory on ``sys.path``; nothing else imports it."""

from __future__ import annotations

import logging
from typing import Any

from celery import states

logger = logging.getLogger("mastf.progress")


class Observer:
    """mastf's Observer: each call writes ``update_state(state, meta)`` and returns both."""

    def __init__(self, task: Any, position: int = 0, _logger: logging.Logger | None = None):
        self._task = task
        self._pos = position
        self._logger = _logger or logger

    @property
    def pos(self) -> int:
        return self._pos

    @pos.setter
    def pos(self, value: int) -> None:
        self._pos = value

    def create_meta(self) -> dict[str, Any]:
        return {"pending": False, "current": self.pos, "total": 100, "percent": self.pos}

    def update(self, msg: str, *args: Any, current: int | None = None, increment: bool = True,
               step: int = 1, state: str = states.PENDING,
               meta: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
        if current is not None:
            self._pos = current
        elif increment:
            self._pos += step
        self._pos = min(self._pos, 100)
        data = meta or self.create_meta()
        data.update(current=self.pos, percent=self.pos, description=msg % args if args else msg)
        self._task.update_state(state=state, meta=data)
        return state, data

    def success(self, msg: str = "", *args: Any) -> tuple[str, dict[str, Any]]:
        return self.update(msg, *args, current=100, state=states.SUCCESS)

    def fail(self, msg: str = "", *args: Any) -> tuple[str, dict[str, Any]]:
        return self.update(msg, *args, current=100, state=states.FAILURE)

    def exception(self, exception: BaseException, msg: str = "",
                  *args: Any) -> tuple[str, dict[str, Any]]:
        meta = self.create_meta()
        meta["exc_type"] = type(exception).__name__
        meta["exc_message"] = str(exception)
        return self.update(msg, *args, current=100, state=states.FAILURE, meta=meta)
