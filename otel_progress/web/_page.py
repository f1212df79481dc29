"""The ``/tasks/<id>/view`` page: one task shown with the widget, no inline script.

Every URL in it is relative (``../<id>`` for the status, ``../../static/otel-progress.js`` for the
widget), so the page works wherever an adapter is mounted (``/``, ``/progress/``, a Django
``include()``). The widget mounts itself from the ``data-otel-progress`` element, so the page's
Content-Security-Policy can forbid inline scripts.
"""

from __future__ import annotations

from html import escape
from typing import Final
from urllib.parse import quote

_TEMPLATE: Final = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>Task {title} · otel_progress</title>
<script src="../../static/otel-progress.js" defer></script>
<style>
body {{ font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto;
       max-width: 46rem; padding: 0 1rem; color: #1f2328; background: #fff; }}
main {{ padding: 0.5rem 1rem 1rem; }}
h1 {{ font-size: 1.15rem; font-weight: 600; }}
h1 code {{ font-size: 0.95rem; background: #f6f8fa; padding: 0.1rem 0.3rem; border-radius: 4px; }}
</style>
</head>
<body>
<main>
<h1>Task <code>{title}</code></h1>
<div data-otel-progress data-url="{url}"{trace}{cancel}></div>
</main>
</body>
</html>
"""


def render(task_id: str, *, trace_url: str | None = None, cancellable: bool = False) -> str:
    """The page for ``task_id`` (already checked: printable ASCII, at most 255 characters);
    ``cancellable`` shows the widget's cancel button (it posts to ``../<id>/cancel``)."""
    trace = f' data-trace-url="{escape(trace_url, quote=True)}"' if trace_url else ""
    return _TEMPLATE.format(
        cancel=' data-cancellable="true"' if cancellable else "",
        title=escape(task_id, quote=True),
        url=escape("../" + quote(task_id, safe=""), quote=True),
        trace=trace,
    )
