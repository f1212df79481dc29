"""Rate and ETA: an exponential moving average of progress per second, off the hot path.

The hot path only adds to counters. Each time a payload is built (the flusher's ticks, every
``min_interval``; ``to_dict()``) a node's counter is sampled here: the rate is an EMA of
``Δvalue / Δt`` with a time constant of ``TAU`` seconds (so the samples' spacing does not
change the smoothing), seeded with the average since the node started. ``eta_s`` is what is
left divided by that rate. No OpenTelemetry, no Celery: plain numbers from ``_run``'s nodes.

Units: a node that counts items (``current``/``total``, ``advance()``, ``track()``) has a rate
in items per second; one that reports only a percent (``percent=``, the run's rollup of its
sections) has a rate in percent per second.
"""

from __future__ import annotations

import math
import threading
import weakref
from typing import Final

from otel_progress._run import SUCCEEDED, Node

TAU: Final = 5.0
"""Seconds: the EMA's time constant (a sample ``dt`` old weighs ``1 - exp(-dt / TAU)``)."""
MIN_DT: Final = 0.05
"""Samples closer together than this (seconds) keep the rate as it was (no noise from two
payloads built at once)."""

Figures = tuple[float | None, float | None, float | None]
"""(elapsed_s, rate, eta_s) as the payload carries them."""


class _Meter:
    __slots__ = ("at", "rate", "unit", "value")

    def __init__(self, unit: str, at: float, value: float, rate: float) -> None:
        self.unit = unit
        self.at = at
        self.value = value
        self.rate = rate


_meters: weakref.WeakKeyDictionary[Node, _Meter] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def _sample(node: Node, unit: str, value: float, now: float) -> float:
    """The node's smoothed rate after a sample of ``value`` at ``now`` (wall clock)."""
    with _lock:
        meter = _meters.get(node)
        if meter is None or meter.unit != unit:
            since = now - node.start
            rate = value / since if since > 0 else 0.0
            _meters[node] = _Meter(unit, now, value, max(rate, 0.0))
            return max(rate, 0.0)
        dt = now - meter.at
        if dt < MIN_DT:
            return meter.rate
        instant = (value - meter.value) / dt
        meter.rate += (1.0 - math.exp(-dt / TAU)) * (instant - meter.rate)
        if meter.rate < 0.0:
            meter.rate = 0.0  # a percent never goes back; a counter set lower is not speed
        meter.at, meter.value = now, value
        return meter.rate


def _short(value: float) -> float:
    """Four significant digits: a rate is an estimate, and the payload stays small."""
    return float(f"{value:.4g}")


def _figures(node: Node, unit: str, value: float, remaining: float | None, now: float,
             closed: bool, end: float | None) -> Figures:
    elapsed = max((end if end is not None else now) - node.start, 0.0)
    if closed:  # its life's average; nothing is left of it
        rate = value / elapsed if elapsed > 0 else 0.0
        return round(elapsed, 3), _short(max(rate, 0.0)), 0.0
    rate = _sample(node, unit, value, now)
    eta: float | None = None
    if remaining is not None:
        if remaining <= 0:
            eta = 0.0
        else:
            speed = rate if rate > 0 else (value / elapsed if elapsed > 0 else 0.0)
            if speed > 0:
                eta = round(remaining / speed, 1)
    return round(elapsed, 3), _short(rate), eta


def has_items(node: Node) -> bool:
    """Whether the node counts items (``current``/``total``) rather than only a percent."""
    return node.explicit_pct is None and (node.total is not None or bool(node.current))


def section(node: Node, now: float) -> Figures:
    """A section's figures; rate and ETA are null while it reported nothing."""
    closed = node.state != "running"
    if has_items(node):
        current, total, _ = node.counters()
        value = float(current or 0)
        remaining = None if total is None else float(total) - value
        return _figures(node, "items", value, remaining, now, closed, node.end)
    pct = node.percent()
    if pct is None:
        end = node.end if node.end is not None else now
        return round(max(end - node.start, 0.0), 3), None, None
    return _figures(node, "percent", pct, 100.0 - pct, now, closed, node.end)


def run(root: Node, percent: float, indeterminate: bool, finished: bool, state: str,
        end: float | None, now: float) -> Figures:
    """The run's figures: items/s when it counts items of its own, else percent/s of the
    overall percent. ``eta_s`` is null while progress is unknown (``indeterminate``), and
    after the end unless the run succeeded (0 then)."""
    if has_items(root):
        current, total, _ = root.counters()
        value = float(current or 0)
        remaining = None if total is None else float(total) - value
        elapsed, rate, eta = _figures(root, "items", value, remaining, now, finished, end)
    else:
        elapsed, rate, eta = _figures(root, "percent", percent, 100.0 - percent, now, finished,
                                      end)
    if finished:
        return elapsed, rate, 0.0 if state == SUCCEEDED else None
    if indeterminate:
        return elapsed, rate, None
    return elapsed, rate, eta
