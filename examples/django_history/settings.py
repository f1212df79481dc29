"""Django settings of the history admin example: the admin, a SQLite database for its users and
sessions (in the runner's temporary directory), and otel_progress's status routes."""

from __future__ import annotations

import os
from pathlib import Path

DEBUG = False
SECRET_KEY = "example-only-not-secret"  # an example on 127.0.0.1: not a secret
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
ROOT_URLCONF = "examples.django_history.urls"
INSTALLED_APPS = [
    "django.contrib.admin", "django.contrib.auth", "django.contrib.contenttypes",
    "django.contrib.sessions", "django.contrib.messages", "django.contrib.staticfiles",
    "examples.django_history",
]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
TEMPLATES = [{
    "BACKEND": "django.template.backends.django.DjangoTemplates",
    "APP_DIRS": True,
    "OPTIONS": {"context_processors": [
        "django.template.context_processors.request",
        "django.contrib.auth.context_processors.auth",
        "django.contrib.messages.context_processors.messages",
    ]},
}]
DATABASES = {"default": {
    "ENGINE": "django.db.backends.sqlite3",
    "NAME": Path(os.environ.get("EXAMPLE_DATA_DIR", ".")) / "admin.sqlite3",
}}
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
STATIC_URL = "/static/"
USE_TZ = True

OTEL_PROGRESS_CELERY_APP = "examples.web_tasks.app"
OTEL_PROGRESS_AUTHORIZE = "examples.django_history.admin.staff_only"
# OTEL_PROGRESS_HISTORY: unset, the history is the one the workers write (the Redis backend's)
