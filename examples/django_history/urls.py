"""The example's URLs: the admin (with its Task history page) and otel_progress's routes."""

from __future__ import annotations

from django.urls import include, path

from examples.django_history.admin import site

urlpatterns = [
    path("admin/", site.urls),
    path("progress/", include("otel_progress.web.django.urls")),
]
