"""Type-checked only (``mypy`` covers this file): the public API as users write it."""

from __future__ import annotations

from typing import Any

from otel_progress import Observer, ProgressPayload, TaskUpdater, configure, force_flush
from otel_progress.celery import ProgressInstrumentor, get_progress
from otel_progress.testing import capture_spans, strict


def updater_usage() -> ProgressPayload:
    updater = TaskUpdater(task_uuid="id", task_name="name", verbose=1, suppress_exceptions=True)
    with updater(task_name="part") as same:
        same.notify("message", rows=3)
        same.progress(current=1, total=2)
        same.advance()
    status: int = updater.status
    finished: bool = updater.finished
    assert status in (0, 1, 2) and finished in (True, False)
    updater.insert_final_update()
    return updater.to_dict()


async def async_usage(updater: TaskUpdater) -> None:
    async with updater(task_name="async part"):
        updater.notify("inside")

    @updater(task_name="decorated")
    async def job() -> int:
        return 1

    value: int = await job()
    assert value


def observer_usage(task: Any) -> tuple[str, dict[str, Any]]:
    observer = Observer(task, position=0)
    observer.pos = 34
    state, meta = observer.update("Some information...", current=34)
    observer.update("Further information...", increment=True, step=5)
    observer.fail("x %s", "y", exc_type=ValueError)
    observer.exception(RuntimeError("e"), "msg")
    assert state and meta
    return observer.success("done")


def configuration() -> None:
    configure(service_name="svc", endpoint="http://127.0.0.1:4317", timeout=2)
    ProgressInstrumentor().instrument(min_interval=0.5)
    payload = get_progress("task-id")
    if payload is not None:
        percent: float = payload["percent"]
        assert percent >= 0
    force_flush()
    with strict(), capture_spans() as spans:
        names: list[str] = spans.names()
        assert names is not None


def history_usage(app: Any) -> list[str]:
    import io

    from otel_progress.history import (
        ROW_KEYS,
        HistoryRow,
        RedisHistory,
        SQLiteHistory,
        read_csv,
        store_for,
        write_csv,
    )

    ProgressInstrumentor().instrument(history=SQLiteHistory("history.db", retention_s=86400.0))
    ProgressInstrumentor().instrument(history="redis://127.0.0.1:6379/0")
    store = store_for(app) or RedisHistory("redis://127.0.0.1:6379/0")
    rows, cursor = store.list(state="failed", limit=10)
    page: list[HistoryRow] = SQLiteHistory("history.db").list(name="t", cursor=cursor)[0]
    out = io.StringIO()
    write_csv(page, out)
    assert read_csv(out.getvalue()) == page and list(ROW_KEYS)
    return [str(r) for r in rows]


def adoption_usage(task: Any) -> list[int]:
    import otel_progress
    from otel_progress.compat.celery_progress import GroupProgress, Progress, ProgressRecorder

    updater = TaskUpdater(task_name="loops")
    rows: list[int] = list(updater.track(range(3), description="rows"))
    rows += list(otel_progress.track([1, 2], total=2, updater=updater))
    with updater.executor(max_workers=2) as pool:
        doubled: list[int] = list(pool.map(lambda n: n * 2, rows))
    run_in_thread = otel_progress.propagate(lambda n: n + 1)
    value: int = run_in_thread(1)
    recorder = ProgressRecorder(task)
    state, meta = recorder.set_progress(1, 2, description="half")
    recorder.increment_progress(by=1)
    info: dict[str, Any] = Progress(task).get_info()
    group_info: dict[str, Any] = GroupProgress(task).get_info()
    assert state and meta and info and group_info and value
    payload = updater.to_dict()
    eta: float | None = payload["eta_s"]
    rate: float | None = payload["rate"]
    assert eta is None or rate is None or eta >= 0
    return doubled


def live_and_cancel_usage(app: Any, task_id: str) -> bool:
    configure(live=True, live_interval=5)
    from otel_progress import TaskCancelled
    from otel_progress.celery import request_cancel

    updater = TaskUpdater(task_name="cancellable")
    try:
        with updater(task_name="loop"):
            while not updater.cancelled:
                updater.raise_if_cancelled()
                updater.advance()
    except TaskCancelled:
        pass
    with capture_spans() as spans:
        placeholders = spans.placeholders()
        assert placeholders == [] or spans.real()
    stored: bool = request_cancel(task_id, app=app)
    return stored
