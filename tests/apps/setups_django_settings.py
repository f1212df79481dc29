"""Minimal Django settings for django-celery-results (``result_backend="django-db"``).

The database is the SQLite file named by ``OTEL_PROGRESS_SETUP_DJANGO_DB`` (the test makes it
and runs the migrations once, before the worker starts).
"""

from __future__ import annotations

import os

SECRET_KEY = "tests-only"
USE_TZ = True
INSTALLED_APPS = ["django_celery_results"]
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("OTEL_PROGRESS_SETUP_DJANGO_DB", ":memory:"),
        "OPTIONS": {"timeout": 20},  # a worker and a reader share the file
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
