"""``otel-progress watch``'s drawing shows elapsed time, rate and ETA from the payload."""

from __future__ import annotations

import io

from rich.console import Console

from otel_progress import TaskUpdater
from otel_progress._terminal import TaskView, _plain_lines


def _running() -> dict[str, object]:
    return {"state": "running", "percent": 40.0, "description": "rows", "elapsed_s": 75.2,
            "rate": 3.5, "eta_s": 48.0, "sections": [
                {"name": "import", "state": "running", "percent": 40.0, "eta_s": 48.0},
                {"name": "quiet", "state": "running", "percent": None, "eta_s": None}]}


def test_plain_lines_show_elapsed_rate_and_eta_while_running() -> None:
    """Off a terminal, the head line carries elapsed, rate and ETA; sections their ETA."""
    assert ["t: running 40.0%  elapsed 1m15s  3.50/s  ETA 48s - rows",
            "t:   import  running  40%  ETA 48s",
            "t:   quiet  running"] == _plain_lines("t", _running())


def test_a_final_payload_shows_no_rate_or_eta() -> None:
    """Once final, the line is the state and percent (no stale ETA)."""
    payload = dict(_running(), state="succeeded", percent=100.0, eta_s=0.0, description="")
    payload["sections"] = []
    assert ["t: succeeded 100.0%"] == _plain_lines("t", payload)


def test_the_live_panel_shows_the_rate_and_eta_of_a_real_payload() -> None:
    """On a terminal, the panel's head row has the ETA of an updater's real payload."""
    updater = TaskUpdater(task_name="t", expected_sections=1)
    with updater(task_name="work"):
        updater.progress(current=1, total=4)
        payload = updater.to_dict()
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=120, color_system=None)
    view = TaskView(lambda _id: payload, {"id": "t"}, console=console)
    view.poll()
    from otel_progress._terminal import _panel

    console.print(_panel(view.labels, view.payloads))
    assert "ETA " in out.getvalue() and "elapsed " in out.getvalue()
