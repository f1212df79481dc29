"""The terminal view of tasks' progress (``otel-progress watch`` and the demo), drawn by rich.

On a terminal: a live panel with each task's overall bar, its section tree with states, and the
latest notification. Elsewhere (CI logs, pipes): plain lines, one per change.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from otel_progress._payload import FINAL_STATES

Reader = Callable[[str], Mapping[str, Any] | None]
_STYLE = {"succeeded": "green", "failed": "red", "revoked": "magenta", "retrying": "yellow",
          "running": "cyan", "queued": "dim"}


def _section_lines(sections: Any, depth: int = 0) -> list[tuple[int, Mapping[str, Any]]]:
    out: list[tuple[int, Mapping[str, Any]]] = []
    for item in sections if isinstance(sections, list) else []:
        if isinstance(item, Mapping):
            out.append((depth, item))
            out += _section_lines(item.get("children"), depth + 1)
    return out


def _duration(seconds: float) -> str:
    secs = max(round(seconds), 0)
    if secs < 60:
        return f"{secs}s"
    if secs < 3600:
        return f"{secs // 60}m{secs % 60:02d}s"
    return f"{secs // 3600}h{(secs // 60) % 60:02d}m"


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _section_text(item: Mapping[str, Any]) -> str:
    if "omitted" in item:
        return f"… {item['omitted']} more"
    pct = item.get("percent")
    text = f"{item.get('name')}  {item.get('state')}"
    if isinstance(pct, (int, float)):
        text += f"  {pct:.0f}%"
    if item.get("state") == "running" and _number(item.get("eta_s")):
        text += f"  ETA {_duration(item['eta_s'])}"
    if item.get("state") == "failed" and (item.get("error_type") or item.get("interrupted")):
        text += f"  {item.get('error_type') or item.get('interrupted')}"
    return text


def _rate_eta(payload: Mapping[str, Any]) -> str:
    """``elapsed 12s  3.50/s  ETA 40s`` (the rate and ETA only while the task runs)."""
    parts = []
    running = payload.get("state") not in FINAL_STATES
    if _number(payload.get("elapsed_s")):
        parts.append(f"elapsed {_duration(payload['elapsed_s'])}")
    if running and _number(payload.get("rate")):
        parts.append(f"{payload['rate']:.2f}/s")
    if running and _number(payload.get("eta_s")):
        parts.append(f"ETA {_duration(payload['eta_s'])}")
    return "  ".join(parts)


def _panel(labels: Mapping[str, str], payloads: Mapping[str, Mapping[str, Any] | None]) -> Group:
    rows: list[Any] = []
    for task_id, label in labels.items():
        payload = payloads.get(task_id)
        if payload is None:
            rows.append(Text(f"{label}  (not tracked yet)", style="dim"))
            continue
        state = str(payload.get("state"))
        pct = float(payload.get("percent") or 0.0)
        head = Table.grid(padding=(0, 1))
        head.add_row(Text(label, style="bold"), Text(state, style=_STYLE.get(state, "")),
                     ProgressBar(total=100, completed=pct, width=30), Text(f"{pct:5.1f}%"),
                     Text(_rate_eta(payload), style="dim"))
        rows.append(head)
        for depth, item in _section_lines(payload.get("sections")):
            style = _STYLE.get(str(item.get("state")), "")
            rows.append(Text("   " + "  " * depth + "└ " + _section_text(item), style=style))
        if payload.get("description"):
            rows.append(Text(f"   » {payload['description']}", style="italic"))
        if payload.get("stale"):
            rows.append(Text("   (stale: no progress reported lately)", style="yellow"))
    return Group(*rows)


def _plain_lines(label: str, payload: Mapping[str, Any] | None) -> list[str]:
    if payload is None:
        return [f"{label}: not tracked yet"]
    timing = _rate_eta(payload) if payload.get("state") not in FINAL_STATES else ""
    lines = [f"{label}: {payload.get('state')} {float(payload.get('percent') or 0):.1f}%"
             + (f"  {timing}" if timing else "")
             + (f" - {payload['description']}" if payload.get("description") else "")]
    for depth, item in _section_lines(payload.get("sections")):
        lines.append(f"{label}:   {'  ' * depth}{_section_text(item)}")
    return lines


class TaskView:
    """Polls ``read`` for each task and draws it until every task is final (bounded)."""

    def __init__(self, read: Reader, labels: Mapping[str, str], *,
                 console: Console | None = None, interval: float = 0.25) -> None:
        self.read = read
        self.labels = dict(labels)
        self.console = console or Console()
        self.interval = interval
        self.payloads: dict[str, Mapping[str, Any] | None] = {}
        self._printed: dict[str, list[str]] = {}

    def poll(self) -> None:
        """Read every task once."""
        for task_id in self.labels:
            try:
                self.payloads[task_id] = self.read(task_id)
            except Exception:  # a backend hiccup: keep the last reading, try again next tick
                continue

    def done(self) -> bool:
        """Whether every task reached a final state."""
        return all(p is not None and p.get("state") in FINAL_STATES
                   for p in (self.payloads.get(t) for t in self.labels))

    def _print_changes(self) -> None:
        for task_id, label in self.labels.items():
            lines = _plain_lines(label, self.payloads.get(task_id))
            before = self._printed.get(task_id, [])
            for line in lines:
                if line not in before:
                    self.console.print(line, markup=False, highlight=False)
            self._printed[task_id] = lines

    def run(self, timeout: float, *, stop: Callable[[], bool] | None = None) -> bool:
        """Draw until every task is final, ``stop()`` says so, or ``timeout``; True if final."""
        deadline = time.monotonic() + timeout
        if self.console.is_terminal:
            with Live(_panel(self.labels, self.payloads), console=self.console,
                      refresh_per_second=8) as live:
                while time.monotonic() < deadline and not (stop and stop()):
                    self.poll()
                    live.update(_panel(self.labels, self.payloads))
                    if self.done():
                        return True
                    time.sleep(self.interval)
            return self.done()
        while time.monotonic() < deadline and not (stop and stop()):
            self.poll()
            self._print_changes()
            if self.done():
                return True
            time.sleep(self.interval)
        return self.done()
