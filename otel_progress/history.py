"""Task history: every tracked run kept as one row, listed, filtered and exported.

::

    from otel_progress.celery import ProgressInstrumentor
    from otel_progress.history import RedisHistory, SQLiteHistory

    ProgressInstrumentor().instrument(history=SQLiteHistory("history.db"))  # or a URL string
    rows, cursor = SQLiteHistory("history.db").list(state="failed", limit=50)

Without ``history=``, ``OTEL_PROGRESS_HISTORY_URL`` chooses the store, else the Redis result
backend's own server keeps it (none for another result backend). A row has exactly
:data:`ROW_KEYS`; :func:`write_csv` / :func:`read_csv` and :func:`dumps_rows` are the exports
``otel-progress history`` writes.
"""

from __future__ import annotations

from typing import Any

from otel_progress._backend import HISTORY_URL_ENV, HistoryStore, history_for
from otel_progress._history import (
    CSV_DANGEROUS,
    DEFAULT_MAX_ROWS,
    DEFAULT_RETENTION_S,
    MAX_LIMIT,
    ROW_KEYS,
    STATES,
    BadQuery,
    HistoryRow,
    RedisHistory,
    SQLiteHistory,
    dumps_rows,
    parse_time,
    read_csv,
    store_from_url,
    write_csv,
)

__all__ = [
    "CSV_DANGEROUS", "DEFAULT_MAX_ROWS", "DEFAULT_RETENTION_S", "HISTORY_URL_ENV", "MAX_LIMIT",
    "ROW_KEYS", "STATES", "BadQuery", "HistoryRow", "HistoryStore", "RedisHistory",
    "SQLiteHistory", "dumps_rows", "parse_time", "read_csv", "store_for", "store_from_url",
    "write_csv",
]


def store_for(celery_app: Any) -> HistoryStore | None:
    """The store ``celery_app``'s tracked runs are written to, as its workers choose it:
    ``instrument(history=)``, else ``OTEL_PROGRESS_HISTORY_URL``, else the Redis result
    backend's own server; None when there is none (another result backend, ``history=False``)."""
    return history_for(celery_app)
