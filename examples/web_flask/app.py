"""Flask: otel_progress's blueprint under /progress, and a route that starts the seed task.

Run with ``python -m examples.web_flask`` (Redis, a worker and this app on 127.0.0.1:8000).
"""

from __future__ import annotations

from typing import Any

from flask import Flask, redirect

from examples.web_tasks import app as celery_app
from examples.web_tasks import seed
from otel_progress.web.flask import blueprint


def can_see(request: Any, task_id: str) -> bool:
    """Who may read a task: here, clients on this machine. Check your user/session instead."""
    return request.remote_addr in ("127.0.0.1", "::1")


app = Flask(__name__)
app.register_blueprint(
    blueprint(celery_app, authorize=can_see, trace_url="http://localhost:16686/trace/{trace_id}"),
    url_prefix="/progress",
)


@app.post("/start")
def start() -> Any:
    """Start the seed task and go to the page that shows it."""
    return redirect(f"/progress/tasks/{seed.delay().id}/view", code=303)
