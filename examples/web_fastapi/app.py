"""FastAPI: otel_progress's routes under /progress, and a route that starts the seed task.

Run with ``python -m examples.web_fastapi`` (Redis, a worker and this app on 127.0.0.1:8000).
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse

from examples.web_tasks import app as celery_app
from examples.web_tasks import seed
from otel_progress.web.fastapi import router


def can_see(request: Request, task_id: str) -> bool:
    """Who may read a task: here, clients on this machine. Check your user/session instead."""
    return request.client is not None and request.client.host in ("127.0.0.1", "::1")


app = FastAPI(title="otel_progress FastAPI example")
app.include_router(
    router(celery_app, authorize=can_see, trace_url="http://localhost:16686/trace/{trace_id}"),
    prefix="/progress",
)


@app.post("/start")
def start() -> RedirectResponse:
    """Start the seed task and go to the page that shows it."""
    task_id = seed.delay().id
    return RedirectResponse(f"/progress/tasks/{task_id}/view", status_code=303)
