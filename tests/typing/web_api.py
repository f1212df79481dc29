"""Type-checked only (``mypy`` covers this file): otel_progress.web as users write it."""

from __future__ import annotations

from pathlib import Path

from celery import Celery
from fastapi import FastAPI
from flask import Flask, Request
from starlette.applications import Starlette
from starlette.requests import Request as StarletteRequest

from otel_progress.web import STALE_AFTER, STATIC_DIR, create_app
from otel_progress.web.fastapi import router
from otel_progress.web.flask import blueprint

celery_app = Celery("typed")


def can_see(request: StarletteRequest, task_id: str) -> bool:
    return request.headers.get("x-user") == "me" and bool(task_id)


async def can_see_async(request: StarletteRequest, task_id: str) -> bool:
    return request.client is not None and bool(task_id)


def flask_can_see(request: Request, task_id: str) -> bool:
    return request.remote_addr == "127.0.0.1" and bool(task_id)


def apps() -> tuple[Starlette, FastAPI, Flask]:
    standalone: Starlette = create_app(
        celery_app, authorize=can_see, trace_url="http://localhost:16686/trace/{trace_id}",
        include_traceback=False, cors_origins=["https://app.example"],
    )
    create_app(celery_app, authorize=can_see_async)
    create_app(celery_app, allow_anonymous=True)
    api = FastAPI()
    api.include_router(router(celery_app, authorize=can_see), prefix="/progress")
    flask_app = Flask(__name__)
    flask_app.register_blueprint(blueprint(celery_app, authorize=flask_can_see),
                                 url_prefix="/progress")
    static: Path = STATIC_DIR
    seconds: float = STALE_AFTER
    assert static.name == "static" and seconds > 0
    return standalone, api, flask_app
