"""Live placeholders: running runs and sections visible in any OTLP trace backend before they end.

A span reaches Jaeger or Tempo only when it ends, so a two-hour task is invisible there until it
finishes. With ``configure(live=True)`` (or ``OTEL_PROGRESS_LIVE=true``) otel_progress sends, for
each run and section, zero-duration *placeholder* spans that stand for the real one:

- one when the run or section starts (from the thread that starts it: one span, only when live);
- while it runs, at most one progress placeholder per ``live_interval`` (default 10 s) carrying
  its current ``otel_progress.percent``, sent by the flusher thread, never by the hot path.

A placeholder has a **new, unique span id** (never the real span's: Tempo keeps the first copy of
an id and Jaeger warns on duplicates), the real span's name, trace and parent, so it appears in
place at once; ``otel_progress.placeholder=true`` and ``otel_progress.span_id=<real span id>``.
Outside Celery the run's placeholder is a root span in the run's trace, as the run span is. Its
kind is always INTERNAL, so a collector without the placeholder filter still does not count it
as a Celery run (``span_kind="SPAN_KIND_CONSUMER"``) in the error-rate alert.

This room holds the settings and decides *when*; *how* a span with a chosen trace id, parent and
fresh span id is made needs the SDK, so the export room (``_pipeline``) installs the emitter with
:func:`install_emitter`. The OpenTelemetry API alone cannot start a root span inside an existing
trace (a parentless API span always gets a new trace id), which the run's placeholder needs. The
emitter builds the placeholder on the real span's own processor, resource, scope and limits, so
it goes exactly where the real span will go, whoever set up the provider.
"""

from __future__ import annotations

import math
import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, Final

from opentelemetry import trace

from otel_progress import _attributes as A
from otel_progress._run import Node, Run
from otel_progress._safety import guard, logger

DEFAULT_INTERVAL: Final = 10.0
"""Seconds between two progress placeholders of one open run or section."""
ENV_LIVE: Final = "OTEL_PROGRESS_LIVE"
ENV_INTERVAL: Final = "OTEL_PROGRESS_LIVE_INTERVAL"
LIVE_BATCH_DELAY_MS: Final = 1000
"""With live on, configure()'s batch processor exports every second (the SDK's default is 5 s)
unless ``OTEL_BSP_SCHEDULE_DELAY`` says otherwise: finished sections show within seconds too."""
_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"0", "false", "no", "off", ""})

Emitter = Callable[[Any, str, dict[str, Any], int], str | None]
"""(real span, name, attributes, time in ns) -> the placeholder's span id (hex), or None when the
real span is not an SDK span that records."""

enabled = False
interval = DEFAULT_INTERVAL
_emitter: Emitter | None = None
_wake: Callable[[], None] | None = None
_listeners: list[Callable[[bool], None]] = []
_lock = threading.Lock()
_runs: weakref.WeakSet[Run] = weakref.WeakSet()
"""Live runs the flusher looks at (weak: a dropped, unfinished run is ended elsewhere)."""
_last: weakref.WeakKeyDictionary[Node, float] = weakref.WeakKeyDictionary()
"""When (monotonic) each open node got its last placeholder."""


def parse_flag(raw: str, name: str) -> bool:
    """``true``/``false`` (also 1/0, yes/no, on/off) of an environment variable, else ValueError."""
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"{name}={raw!r}: must be true or false")


def parse_interval(raw: str, name: str) -> float:
    """A positive, finite number of seconds, else ValueError naming ``name``."""
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name}={raw!r}: must be a positive number of seconds")
    return value


def from_environment() -> tuple[bool, float]:
    """(live, interval) from ``OTEL_PROGRESS_LIVE`` / ``OTEL_PROGRESS_LIVE_INTERVAL``; raises
    ValueError naming a bad variable."""
    env = os.environ
    live = parse_flag(env.get(ENV_LIVE, ""), ENV_LIVE)
    raw = env.get(ENV_INTERVAL, "").strip()
    return live, parse_interval(raw, ENV_INTERVAL) if raw else DEFAULT_INTERVAL


def set_live(live: bool, seconds: float) -> None:
    """Turn placeholders on or off and set their interval (configure() validated both)."""
    global enabled, interval
    interval = float(seconds)
    enabled = bool(live)
    for listener in _listeners:
        listener(enabled)
    if not enabled:
        with _lock:
            _runs.clear()


def install_emitter(emitter: Emitter | None) -> None:
    """The export room's way of making a placeholder (see the module docstring)."""
    global _emitter
    _emitter = emitter


def on_change(listener: Callable[[bool], None]) -> None:
    """Call ``listener(enabled)`` now and whenever live is turned on or off (``_spans`` keeps
    a module global of it: one global read per section start, not a module attribute)."""
    _listeners.append(listener)
    listener(enabled)


def install_waker(wake: Callable[[], None] | None) -> None:
    """How a new live run makes sure the flusher thread runs (installed by ``_publish``)."""
    global _wake
    _wake = wake


def _span_id(span: Any) -> str | None:
    ctx = span.get_span_context()
    return trace.format_span_id(ctx.span_id) if ctx.is_valid else None


def _emit(span: Any, name: str, attributes: dict[str, Any], at: float) -> None:
    emitter = _emitter
    if emitter is None or span is None or not span.is_recording():
        return
    real = _span_id(span)
    if real is None:
        return
    attributes[A.PLACEHOLDER] = True
    attributes[A.REAL_SPAN_ID] = real
    emitter(span, name, attributes, int(at * 1e9))


def _run_attributes(run: Run, percent: float | None) -> dict[str, Any]:
    attrs: dict[str, Any] = {A.TASK_UUID: run.task_uuid, A.TASK_NAME: run.task_name,
                             A.SECTION_STATE: "running"}
    if percent is not None:
        attrs[A.PERCENT] = round(percent, 2)
    return attrs


def _section_attributes(run: Run, node: Node, progress: bool) -> dict[str, Any]:
    attrs: dict[str, Any] = {A.SECTION_NAME: node.name, A.SECTION_DEPTH: node.depth,
                             A.TASK_NAME: run.task_name, A.SECTION_STATE: "running"}
    if progress:
        current, total, pct = node.counters()
        attrs[A.PERCENT] = 0.0 if pct is None else pct
        if current is not None:
            attrs[A.CURRENT] = current
        if total is not None:
            attrs[A.TOTAL] = total
    return attrs


@guard("live.run_started")
def run_started(run: Run) -> None:
    """The run's first placeholder, and the flusher looks at it from now on (live only)."""
    span = run.node.span
    _emit(span, _name(span, run.task_name), _run_attributes(run, None), run.start)
    _last[run.node] = time.monotonic()
    with _lock:
        _runs.add(run)
    if _wake is not None:
        _wake()


@guard("live.section_started")
def section_started(run: Run, node: Node) -> None:
    """A section's first placeholder, from the thread that opened it (live only)."""
    _emit(node.span, node.name, _section_attributes(run, node, False), node.start)
    _last[node] = time.monotonic()


def _name(span: Any, default: str) -> str:
    name = getattr(span, "name", None)
    return name if isinstance(name, str) and name else default


@guard("live.tick")
def tick() -> None:
    """Progress placeholders of every open run and section whose interval has passed (the
    flusher thread calls this on each pass; it costs nothing when live is off)."""
    if not _runs:
        return
    with _lock:
        runs = list(_runs)
    now = time.monotonic()
    wall = time.time()
    for run in runs:
        if run.finished:
            with _lock:
                _runs.discard(run)
            continue
        if now - _last.get(run.node, 0.0) >= interval:
            _last[run.node] = now
            span = run.node.span
            _emit(span, _name(span, run.task_name),
                  _run_attributes(run, run.overall_percent()[0]), wall)
        for node in run.open_nodes():
            if node.state == "running" and now - _last.get(node, 0.0) >= interval:
                _last[node] = now
                _emit(node.span, node.name, _section_attributes(run, node, True), wall)


def reset() -> None:
    """Live off (tests, ``reset()``); the environment decides again at the next configure()."""
    set_live(False, DEFAULT_INTERVAL)
    _last.clear()


def _initial() -> None:
    """Honour ``OTEL_PROGRESS_LIVE`` without configure() too (zero-code workers): a bad value
    is logged here (import must not raise) and raised by configure()."""
    try:
        live, seconds = from_environment()
    except ValueError as exc:
        logger.warning("otel_progress: %s; live placeholders stay off", exc)
        return
    set_live(live, seconds)


_initial()
