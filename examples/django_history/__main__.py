"""``python -m examples.django_history``: the task history in the Django admin.

Starts a redis-server on a free 127.0.0.1 port (or uses ``REDIS_URL``), a Celery worker of
``examples/web_tasks.py``, runs three seed tasks, creates the admin user ``admin`` (password
``admin-example``, an example on loopback) and serves the admin on http://127.0.0.1:8000/admin/
with its "Task history" page. ``--check`` logs in over HTTP, lists, filters, searches and
exports the runs, prints ``check ok`` and exits (what the tests run).
"""

from __future__ import annotations

import argparse
import http.cookiejar
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import urllib.parse
import urllib.request
from pathlib import Path

from examples.web_runner import ROOT, _start_redis, _start_worker, free_port, wsgi_server

USER, PASSWORD = "admin", "admin-example"


class _Browser:
    """An HTTP client with cookies and Django's CSRF token, as a person's browser."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))

    def get(self, path: str) -> tuple[int, str]:
        try:
            with self.opener.open(self.base + path, timeout=10) as response:
                return int(response.status), response.read().decode("utf-8")
        except urllib.error.HTTPError as exc:
            return int(exc.code), exc.read().decode("utf-8", "replace")

    def post(self, path: str, fields: list[tuple[str, str]]) -> tuple[int, str, str]:
        token = next(c.value for c in self.jar if c.name == "csrftoken")
        data = urllib.parse.urlencode([("csrfmiddlewaretoken", token), *fields]).encode()
        request = urllib.request.Request(self.base + path, data=data,
                                         headers={"Referer": self.base + path})
        with self.opener.open(request, timeout=10) as response:
            return (int(response.status), response.headers.get("Content-Type", ""),
                    response.read().decode("utf-8"))


def _check(base: str, ids: list[str]) -> int:
    from otel_progress.history import read_csv

    browser = _Browser(base)
    browser.get("/admin/login/")
    browser.post("/admin/login/?next=/admin/", [("username", USER), ("password", PASSWORD),
                                                 ("next", "/admin/")])
    status, page = browser.get("/admin/history/")
    listed = all(task_id in page for task_id in ids)
    _, failed = browser.get("/admin/history/?state=failed")
    _, succeeded = browser.get("/admin/history/?state=succeeded")
    _, by_id = browser.get(f"/admin/history/?q={ids[0]}")
    _, by_name = browser.get("/admin/history/?q=web_example.seed")
    _, csv_type, csv_text = browser.post("/admin/history/", [
        ("action", "export_csv"), *[("_selected_action", i) for i in ids[:2]]])
    _, json_type, json_text = browser.post("/admin/history/", [
        ("action", "export_json"), ("_selected_action", ids[2])])
    rows = read_csv(csv_text)
    log_status, log = browser.get(f"/progress/tasks/{ids[0]}/log")
    checks = {
        "list": status == 200 and listed,
        "filter state": all(i in failed for i in ids) and not any(i in succeeded for i in ids),
        "search id": ids[0] in by_id and ids[1] not in by_id,
        "search name": all(i in by_name for i in ids),
        "csv": csv_type.startswith("text/csv") and [r["task_id"] for r in rows] == ids[:2],
        "json": json_type == "application/json" and [r["task_id"] for r in json.loads(
            json_text)] == ids[2:],
        "log": log_status == 200 and "Task Finished" in log,
    }
    for name, ok in checks.items():
        print(f"  {name:<12} {'ok' if ok else 'FAILED'}")
    print("check ok" if all(checks.values()) else "check failed")
    return 0 if all(checks.values()) else 1


def main(argv: list[str] | None = None) -> int:
    """Run the example (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m examples.django_history")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    parser.add_argument("--check", action="store_true",
                        help="log in, list, filter, search and export over HTTP, then exit")
    args = parser.parse_args(argv)
    port = args.port or free_port()
    tmp = tempfile.mkdtemp(prefix="otel-progress-django-history-")
    redis_proc = None
    url = os.environ.get("REDIS_URL")
    if not url:
        redis_proc, url = _start_redis(tmp)
    os.environ.update(REDIS_URL=url, EXAMPLE_DATA_DIR=tmp,
                      DJANGO_SETTINGS_MODULE="examples.django_history.settings")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [
        str(ROOT), os.environ.get("PYTHONPATH")]))}
    worker = _start_worker(env, Path(tmp) / "worker.log")
    server = None
    thread = None
    try:
        import django
        from django.core.management import call_command

        django.setup()
        call_command("migrate", verbosity=0)
        from django.contrib.auth import get_user_model

        get_user_model().objects.create_superuser(USER, "admin@example.invalid", PASSWORD)
        from django.core.wsgi import get_wsgi_application

        from examples.web_tasks import seed

        results = [seed.delay(0.01) for _ in range(3)]
        for result in results:
            result.get(timeout=60, propagate=False)
        ids = [str(r.id) for r in results]
        server = wsgi_server(get_wsgi_application(), port)
        thread = threading.Thread(target=server.serve_forever, name="web", daemon=True)
        thread.start()
        base = f"http://127.0.0.1:{port}"
        print(f"django_history: {len(ids)} seed runs; the history is at {base}/admin/history/ "
              f"(user {USER!r}, password {PASSWORD!r})")
        if args.check:
            return _check(base, ids)
        print("Ctrl-C stops the server, the worker and Redis.")
        while thread.is_alive():
            thread.join(0.5)
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        if server is not None:
            server.shutdown()
        if thread is not None:
            thread.join(10)
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=15)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait(timeout=5)
        if redis_proc is not None:
            redis_proc.terminate()
            redis_proc.wait(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)



if __name__ == "__main__":
    raise SystemExit(main())
