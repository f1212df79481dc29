"""The example's URLs: otel_progress's routes under progress/, and start/."""

from __future__ import annotations

from django.urls import include, path

from examples.web_django.views import start

urlpatterns = [
    path("progress/", include("otel_progress.web.django.urls")),
    path("start", start),
]
