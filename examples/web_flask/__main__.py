"""``python -m examples.web_flask``: the Flask example with Redis and a worker."""

from __future__ import annotations

from examples.web_runner import Server, main, wsgi_server


def _server(port: int) -> Server:
    from examples.web_flask.app import app

    return wsgi_server(app, port)


if __name__ == "__main__":
    raise SystemExit(main("web_flask", _server))
