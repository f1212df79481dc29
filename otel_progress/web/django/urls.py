"""``path("progress/", include("otel_progress.web.django.urls"))``: every route."""

from __future__ import annotations

from django.urls import path

from otel_progress.web.django import cancel, log, task, tasks, view, widget

app_name = "otel_progress"

urlpatterns = [
    path("tasks", tasks, name="tasks"),
    path("tasks/<str:task_id>/log", log, name="log"),
    path("tasks/<str:task_id>", task, name="task"),
    path("tasks/<str:task_id>/view", view, name="view"),
    path("tasks/<str:task_id>/cancel", cancel, name="cancel"),
    path("static/otel-progress.js", widget, name="widget"),
]
