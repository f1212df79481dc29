"""``python -m examples.web_django``: the Django example with Redis and a worker."""

from __future__ import annotations

import os

from examples.web_runner import Server, main, wsgi_server


def _server(port: int) -> Server:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "examples.web_django.settings")
    from django.core.wsgi import get_wsgi_application

    return wsgi_server(get_wsgi_application(), port)


if __name__ == "__main__":
    raise SystemExit(main("web_django", _server))
