"""The ``otel-progress`` command: ``demo``, ``watch``, ``serve`` and ``history``.

Built on argparse: the standard library, so the command needs no dependency beyond the
package's own, and ``--help`` lists every option of every subcommand. Errors (an app module that
does not import, a broker that is unreachable) are one line on stderr and a non-zero exit,
never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import ipaddress
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from otel_progress._version import __version__

EXIT_SUCCEEDED = 0
EXIT_FAILED = 1
EXIT_REVOKED = 2
EXIT_UNTRACKED = 3
EXIT_USAGE = 64
"""``watch`` exit statuses: the task's outcome, or an id that is not tracked."""


class CliError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="otel-progress",
        description="Celery task progress as OpenTelemetry traces and as live progress.")
    parser.add_argument("--version", action="version", version=f"otel-progress {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser("demo", help="run the seed tasks on a real worker: live progress in "
                          "the terminal and the browser, the trace tree at the end")
    demo.add_argument("--scale", type=float, default=0.1,
                      help="multiply the seeds' sleeps by this factor (default 0.1)")
    demo.add_argument("--broker", help="broker URL (default: REDIS_URL, else an embedded "
                      "filesystem broker in a temporary directory)")
    demo.add_argument("--backend", help="result backend URL (default: REDIS_URL, else an "
                      "embedded filesystem backend)")
    demo.add_argument("--keep-open", action="store_true",
                      help="keep serving the status pages until Ctrl-C")

    watch = sub.add_parser("watch", help="show a task's progress live until it ends; exit 0 "
                           "succeeded, 1 failed, 2 revoked, 3 not tracked")
    watch.add_argument("task_id", help="the Celery task id")
    _app_options(watch)
    watch.add_argument("--wait", type=float, default=10.0,
                       help="seconds to wait for an id that is not tracked yet (default 10)")
    watch.add_argument("--timeout", type=float, default=24 * 3600.0,
                       help="seconds to watch at most (default one day)")
    watch.add_argument("--interval", type=float, default=0.5,
                       help="seconds between two reads (default 0.5)")

    serve = sub.add_parser("serve", help="serve the status app (GET /tasks/<id>, the widget)")
    _app_options(serve)
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    serve.add_argument("--trace-url", default=os.environ.get("OTEL_PROGRESS_TRACE_URL"),
                       help="the widget's 'View trace' link, with {trace_id} (also "
                       "OTEL_PROGRESS_TRACE_URL), e.g. http://localhost:16686/trace/{trace_id}")
    serve.add_argument("--authorize", metavar="MODULE:FUNCTION",
                       help="authorize(request, task_id) -> bool, run before every lookup")
    serve.add_argument("--allow-anonymous", action="store_true",
                       help="serve any client without authorize (needed for a public bind)")

    history = sub.add_parser("history", help="list tracked runs from the task history, newest "
                             "first: a table, or a JSON/CSV export")
    _app_options(history)
    history.add_argument("--state", choices=("queued", "running", "retrying", "succeeded",
                                              "failed", "revoked"), help="only runs in this state")
    history.add_argument("--name", help="only runs of this task name")
    history.add_argument("--since", help="runs started since: 30d, 12h, 15m, 90s, 2w ago, or an "
                         "ISO-8601 date/time (UTC unless it has an offset)")
    history.add_argument("--until", help="runs started until (same forms as --since)")
    history.add_argument("--limit", type=int, default=100,
                         help="rows at most (1 to 500, default 100); the next page's cursor is "
                         "printed on stderr")
    history.add_argument("--cursor", help="continue after the page that printed this cursor")
    history.add_argument("--format", choices=("table", "json", "csv"), default="table",
                         help="table (default), json (an array of rows) or csv (RFC 4180; cells "
                         "starting with = + - @ ' tab or CR are prefixed with ')")
    history.add_argument("--output", "-o", metavar="FILE",
                         help="write the rows to FILE instead of stdout")
    history.add_argument("--history", metavar="URL",
                         help="the store (redis://host:port/db, sqlite:///file.db), instead of "
                         "the app's (instrument(history=), OTEL_PROGRESS_HISTORY_URL, the Redis "
                         "result backend)")
    return parser


def _app_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-A", "--app", metavar="MODULE[:APP]",
                        help="the Celery app, as for `celery -A` (e.g. proj.celery:app)")
    parser.add_argument("--broker", help="broker URL, without an app module")
    parser.add_argument("--backend", help="result backend URL, without an app module")


def _load(spec: str) -> Any:
    """``module:attribute`` (or ``module``, then its ``app``/``celery`` attribute)."""
    module_name, _, attribute = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise CliError(f"cannot import {module_name!r}: {type(exc).__name__}: {exc}") from None
    if attribute:
        try:
            return getattr(module, attribute)
        except AttributeError:
            raise CliError(f"{module_name!r} has no attribute {attribute!r}") from None
    for name in ("app", "celery"):
        if hasattr(module, name):
            return getattr(module, name)
    raise CliError(f"{module_name!r} has no Celery app: name it as {module_name}:<app>")


def _celery_app(args: argparse.Namespace) -> Any:
    from celery import Celery

    if args.app:
        app = _load(args.app)
        if not isinstance(app, Celery):
            raise CliError(f"{args.app!r} is not a Celery app")
        return app
    if not args.backend:
        raise CliError("give -A module:app, or --backend URL (and --broker URL)")
    app = Celery("otel_progress_cli", broker=args.broker, backend=args.backend,
                 set_as_current=False)
    return app


def _check_backend(app: Any) -> None:
    """One quick read, so an unreachable backend is one clear line, not a hang."""
    from otel_progress.celery import BackendUnavailable, get_progress

    try:
        get_progress("otel-progress-cli-probe", app=app, children=False)
    except BackendUnavailable as exc:
        raise CliError(f"the result backend is unreachable: {exc}") from None
    except Exception as exc:
        raise CliError(f"the result backend is unreachable: {type(exc).__name__}: {exc}") \
            from None


def _watch(args: argparse.Namespace) -> int:
    from rich.console import Console

    from otel_progress._terminal import TaskView
    from otel_progress.celery import get_progress

    app = _celery_app(args)
    _check_backend(app)
    console = Console(soft_wrap=True)
    task_id = str(args.task_id)
    deadline = time.monotonic() + max(args.wait, 0.0)
    payload = get_progress(task_id, app=app)
    while payload is None and time.monotonic() < deadline:
        time.sleep(min(args.interval, 0.5))
        payload = get_progress(task_id, app=app)
    if payload is None:
        print(f"otel-progress: task {task_id} is not tracked", file=sys.stderr)
        return EXIT_UNTRACKED
    view = TaskView(lambda tid: get_progress(tid, app=app),
                    {task_id: str(payload.get("task_name") or task_id)}, console=console,
                    interval=max(args.interval, 0.05))
    view.run(max(args.timeout, 0.0))
    final = view.payloads.get(task_id) or payload
    state = final.get("state")
    return {"succeeded": EXIT_SUCCEEDED, "failed": EXIT_FAILED,
            "revoked": EXIT_REVOKED}.get(str(state), EXIT_FAILED)


def _is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _serve(args: argparse.Namespace) -> int:
    authorize: Callable[..., bool] | None = _load(args.authorize) if args.authorize else None
    if not _is_loopback(args.host) and authorize is None and not args.allow_anonymous:
        raise CliError(f"refusing to serve {args.host} without --authorize or "
                       "--allow-anonymous (the status app shows task progress to any client)")
    try:
        import uvicorn  # type: ignore[import-not-found,unused-ignore]

        from otel_progress.web import create_app  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        raise CliError("serve needs the web extra: pip install 'otel-progress[web]'") from None
    app = _celery_app(args)
    web = create_app(app, authorize=authorize, allow_anonymous=args.allow_anonymous,
                     trace_url=args.trace_url)
    print(f"otel-progress: serving http://{args.host}:{args.port}/tasks/<id>", file=sys.stderr)
    uvicorn.run(web, host=args.host, port=args.port, log_level="warning")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from otel_progress._demo import run_demo

    return run_demo(scale=max(args.scale, 0.0), keep_open=args.keep_open, broker=args.broker,
                    backend=args.backend)


TABLE_COLUMNS = ("task_id", "task_name", "state", "attempt", "start", "duration_s", "jobs",
                 "exc_type", "exc_message")


def _history(args: argparse.Namespace) -> int:
    from otel_progress import _backend
    from otel_progress._history import (
        BadQuery,
        dumps_rows,
        parse_time,
        store_from_url,
        write_csv,
    )

    try:
        since = parse_time(args.since) if args.since else None
        until = parse_time(args.until) if args.until else None
    except BadQuery as exc:
        raise CliError(str(exc)) from None
    if not 1 <= args.limit <= 500:
        raise CliError("--limit must be 1 to 500")
    app = _celery_app(args) if (args.app or args.backend) else None
    try:
        store = store_from_url(args.history) if args.history else (
            _backend.history_for(app) if app is not None else None)
    except (TypeError, ValueError) as exc:
        raise CliError(str(exc)) from None
    if store is None:
        raise CliError("no task history: give -A module:app (with a Redis result backend, "
                       "instrument(history=) or OTEL_PROGRESS_HISTORY_URL) or --history URL")
    try:
        rows, cursor = store.list(state=args.state, name=args.name, since=since, until=until,
                                  limit=args.limit, cursor=args.cursor)
    except BadQuery as exc:
        raise CliError(str(exc)) from None
    except Exception as exc:
        raise CliError(f"the task history is unreachable: {type(exc).__name__}: {exc}") \
            from None
    rows = [dict(r) for r in rows]
    if app is not None:
        rows = _backend.reconcile_rows(app, rows)
    with contextlib.ExitStack() as stack:
        out: Any = stack.enter_context(open(args.output, "w", encoding="utf-8", newline="")) \
            if args.output else sys.stdout
        if args.format == "json":
            out.write(dumps_rows(rows))
        elif args.format == "csv":
            write_csv(rows, out)
        else:
            _history_table(rows, out)
    if cursor is not None:
        print(f"next cursor: {cursor}", file=sys.stderr)
    return 0


def _history_table(rows: list[dict[str, Any]], out: Any) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(title=f"{len(rows)} runs, newest first")
    for column in TABLE_COLUMNS:  # ids and times whole; a long message wraps instead
        table.add_column(column, no_wrap=column in ("task_id", "state", "start", "attempt"))
    colours = {"failed": "red", "revoked": "yellow", "succeeded": "green"}
    for row in rows:
        cells = {**row, "jobs": f"{row['jobs_finished']}/{row['jobs_total']}"}
        values = [Text("" if cells[c] is None else str(cells[c])) for c in TABLE_COLUMNS]
        values[2].stylize(colours.get(str(row["state"]), ""))  # task text is never markup
        table.add_row(*values)
    terminal = hasattr(out, "isatty") and out.isatty()
    Console(file=out, width=None if terminal else 200).print(table)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``otel-progress`` console script."""
    args = _parser().parse_args(argv)
    commands = {"demo": _demo, "watch": _watch, "serve": _serve, "history": _history}
    try:
        return commands[args.command](args)
    except CliError as exc:
        print(f"otel-progress: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
