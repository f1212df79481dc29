"""Django settings of the example: the least a project needs, plus otel_progress's settings."""

from __future__ import annotations

from otel_progress.web import STATIC_DIR

DEBUG = False
SECRET_KEY = "example-only-not-secret"  # an example on 127.0.0.1: not a secret
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
ROOT_URLCONF = "examples.web_django.urls"
INSTALLED_APPS = ["django.contrib.staticfiles"]
MIDDLEWARE = ["django.middleware.security.SecurityMiddleware"]
STATIC_URL = "/static/"
STATICFILES_DIRS = [STATIC_DIR]  # {% static "otel-progress.js" %} in your own templates
USE_TZ = True

OTEL_PROGRESS_CELERY_APP = "examples.web_tasks.app"
OTEL_PROGRESS_AUTHORIZE = "examples.web_django.views.can_see"
OTEL_PROGRESS_TRACE_URL = "http://localhost:16686/trace/{trace_id}"
