"""The task history in the Django admin, read through the history store (no model, no copy).

``HistorySite`` is the admin with one more page, ``admin/history/``: the rows newest first, a
sidebar to filter by state, task name and start date, a search box (a task id, or a task name),
pages through the store's cursor, and the action "export selected as CSV / JSON" (the same
exports as ``otel-progress history``). Only staff users see it, like the rest of the admin.
"""

from __future__ import annotations

import time
from typing import Any

from django.contrib import admin
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import URLPattern, path

from examples.web_tasks import app as celery_app
from otel_progress.history import STATES, dumps_rows, store_for, write_csv

PAGE = 50
DATES = (("Any date", None), ("Past 24 hours", 86400.0), ("Past 7 days", 7 * 86400.0),
         ("Past 30 days", 30 * 86400.0))


def staff_only(request: HttpRequest, task_id: str | None) -> bool:
    """otel_progress's status routes: staff users only (``task_id`` is None for the list)."""
    return bool(request.user.is_active and request.user.is_staff)


class HistorySite(admin.AdminSite):
    """The admin site with the Task history page."""

    site_header = "otel_progress example"

    def get_urls(self) -> list[Any]:
        mine: list[URLPattern] = [
            path("history/", self.admin_view(self.history_view), name="task_history"),
        ]
        return mine + super().get_urls()

    def get_app_list(self, request: HttpRequest, app_label: str | None = None) -> list[Any]:
        apps = super().get_app_list(request, app_label)
        return [{"name": "Celery", "app_label": "otel_progress", "app_url": "history/",
                 "has_module_perms": True, "models": [{
                     "name": "Task history", "object_name": "TaskRun", "perms": {"view": True},
                     "admin_url": "history/", "view_only": True}]}, *apps]

    def history_view(self, request: HttpRequest) -> HttpResponse:
        """The list, its filters and search, and the export action (POST)."""
        store = store_for(celery_app)
        if store is None:
            return HttpResponse("no task history configured", status=404,
                                content_type="text/plain")
        if request.method == "POST":
            return self._export(request, store)
        state = request.GET.get("state") or None
        state = state if state in STATES else None
        name = request.GET.get("name") or None
        query = (request.GET.get("q") or "").strip()
        since_s = request.GET.get("since") or ""
        since = time.time() - float(since_s) if since_s.replace(".", "").isdigit() else None
        cursor = request.GET.get("cursor") or None
        if query:
            found = store.get(query)  # a task id ...
            rows, next_cursor = ([found], None) if found is not None else store.list(
                name=query, state=state, since=since, limit=PAGE, cursor=cursor)  # ... or a name
        else:
            rows, next_cursor = store.list(state=state, name=name, since=since, limit=PAGE,
                                           cursor=cursor)
        names = sorted({r["task_name"] for r in store.list(limit=500)[0]})
        context = {
            **self.each_context(request), "title": "Task history", "rows": rows,
            "states": STATES, "names": names, "dates": DATES, "state": state, "name": name,
            "q": query, "since": since_s, "next_cursor": next_cursor,
            "params": request.GET.copy(),
        }
        return TemplateResponse(request, "django_history/history.html", context)

    def _export(self, request: HttpRequest, store: Any) -> HttpResponse:
        """The action: the selected rows as CSV (formula cells neutralised) or a JSON array."""
        ids = request.POST.getlist("_selected_action")
        rows = [row for row in (store.get(i) for i in ids) if row is not None]
        if request.POST.get("action") == "export_json":
            response = HttpResponse(dumps_rows(rows), content_type="application/json")
            response["Content-Disposition"] = 'attachment; filename="task-history.json"'
            return response
        response = HttpResponse(content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = 'attachment; filename="task-history.csv"'
        write_csv(rows, response)  # type: ignore[arg-type]
        return response


site = HistorySite(name="admin")
