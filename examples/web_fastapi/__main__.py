"""``python -m examples.web_fastapi``: the FastAPI example with Redis and a worker."""

from __future__ import annotations

from examples.web_runner import Server, UvicornThread, main


def _server(port: int) -> Server:
    from examples.web_fastapi.app import app

    return UvicornThread(app, port)


if __name__ == "__main__":
    raise SystemExit(main("web_fastapi", _server))
