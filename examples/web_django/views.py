"""The example's own views: who may read a task, and a route that starts the seed task."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.views.decorators.http import require_POST

from examples.web_tasks import seed


def can_see(request: HttpRequest, task_id: str) -> bool:
    """Who may read a task: here, clients on this machine. Check ``request.user`` instead."""
    return request.META.get("REMOTE_ADDR") in ("127.0.0.1", "::1")


@require_POST
def start(request: HttpRequest) -> HttpResponse:
    """Start the seed task and go to the page that shows it."""
    return HttpResponseRedirect(f"/progress/tasks/{seed.delay().id}/view", status=303)
