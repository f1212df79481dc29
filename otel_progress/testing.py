"""Helpers for testing code that uses otel_progress (the library's own tests use them too).

``capture_spans()`` records every finished span in memory; ``strict()`` makes internal errors
raise instead of being logged, so a bug in telemetry cannot hide behind "never break the task"::

    from otel_progress.testing import capture_spans

    with capture_spans() as spans:
        run_my_task()
    assert ["download", "import"] == [s.name for s in spans.finished()]
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from otel_progress import _safety
from otel_progress._attributes import PERCENT, PLACEHOLDER

__all__ = ["SpanCapture", "capture_spans", "render_tree", "strict"]


class _Forwarder(SpanProcessor):
    """Added once to the global provider; forwards to whichever captures are active."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._targets: list[SimpleSpanProcessor] = []

    def add(self, target: SimpleSpanProcessor) -> None:
        with self._lock:
            self._targets.append(target)

    def remove(self, target: SimpleSpanProcessor) -> None:
        with self._lock:
            if target in self._targets:
                self._targets.remove(target)

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        return None

    def on_end(self, span: ReadableSpan) -> None:
        for target in list(self._targets):
            target.on_end(span)

    def shutdown(self) -> None:
        return None

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


_forwarder = _Forwarder()
_installed_on: list[TracerProvider] = []
_install_lock = threading.Lock()


def _install() -> None:
    with _install_lock:
        provider = trace.get_tracer_provider()
        if not isinstance(provider, TracerProvider):
            trace.set_tracer_provider(TracerProvider())
            provider = trace.get_tracer_provider()
        if not isinstance(provider, TracerProvider):  # pragma: no cover - another API set it
            raise RuntimeError("the global tracer provider is not an SDK TracerProvider")
        if provider not in _installed_on:
            provider.add_span_processor(_forwarder)
            _installed_on.append(provider)


class SpanCapture:
    """Finished spans recorded in memory, with lookups by name and a tree rendering."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.processor = SimpleSpanProcessor(self.exporter)

    def finished(self) -> list[ReadableSpan]:
        """Finished spans in the order they ended."""
        return list(self.exporter.get_finished_spans())

    def real(self) -> list[ReadableSpan]:
        """Finished spans without the live placeholders (``configure(live=True)``)."""
        return [s for s in self.finished() if not _is_placeholder(s)]

    def placeholders(self) -> list[ReadableSpan]:
        """Only the live placeholders, in the order they were sent."""
        return [s for s in self.finished() if _is_placeholder(s)]

    def names(self) -> list[str]:
        """Names of the finished spans (placeholders left out), in end order."""
        return [s.name for s in self.real()]

    def by_name(self, name: str) -> ReadableSpan:
        """The one finished real span named ``name`` (AssertionError if none or several)."""
        found = [s for s in self.real() if s.name == name]
        if len(found) != 1:
            raise AssertionError(f"expected one span named {name!r}, found {len(found)}")
        return found[0]

    def children_of(self, parent: ReadableSpan) -> list[ReadableSpan]:
        """Finished real spans whose parent is ``parent``, in start order."""
        pid = parent.context.span_id if parent.context else None
        kids = [s for s in self.real() if s.parent is not None and s.parent.span_id == pid]
        return sorted(kids, key=lambda s: s.start_time or 0)

    def tree(self) -> str:
        """The finished real spans as an indented tree (see :func:`render_tree`)."""
        return render_tree(self.real())

    def clear(self) -> None:
        """Forget the spans captured so far."""
        self.exporter.clear()


def _is_placeholder(span: ReadableSpan) -> bool:
    return bool((span.attributes or {}).get(PLACEHOLDER))


@contextlib.contextmanager
def capture_spans() -> Iterator[SpanCapture]:
    """Record finished spans in memory while the block runs (installs an SDK provider if none)."""
    _install()
    capture = SpanCapture()
    _forwarder.add(capture.processor)
    try:
        yield capture
    finally:
        _forwarder.remove(capture.processor)


@contextlib.contextmanager
def strict(enabled: bool = True) -> Iterator[None]:
    """Re-raise otel_progress's internal errors inside the block (tests)."""
    previous = _safety.is_strict()
    _safety.set_strict(enabled)
    try:
        yield
    finally:
        _safety.set_strict(previous)


def set_strict(enabled: bool) -> None:
    """Turn strict mode on or off for the whole process (a test suite's default)."""
    _safety.set_strict(enabled)


def render_tree(spans: Sequence[ReadableSpan]) -> str:
    """An indented text tree of spans with status and events, e.g. for a demo or a test diff.

    ::

        TEST  [OK]
        ├── TEST - First part  [UNSET]
        │     • Some notification related to the task
        └── TEST - Second part  [UNSET]
    """
    by_id = {s.context.span_id: s for s in spans if s.context is not None}
    children: dict[int | None, list[ReadableSpan]] = {}
    for s in spans:
        parent = s.parent.span_id if s.parent is not None else None
        if parent not in by_id:
            parent = None
        children.setdefault(parent, []).append(s)
    for kids in children.values():
        kids.sort(key=lambda s: s.start_time or 0)
    lines: list[str] = []

    def walk(span: ReadableSpan, prefix: str, last: bool, root: bool) -> None:
        status = span.status.status_code.name
        attrs = span.attributes or {}
        pct = attrs.get(PERCENT)
        extra = f"  {pct:.0f}%" if isinstance(pct, (int, float)) else ""
        branch = "" if root else ("└── " if last else "├── ")
        lines.append(f"{prefix}{branch}{span.name}  [{status}]{extra}")
        inner = prefix if root else prefix + ("    " if last else "│   ")
        for event in span.events:
            mark = "✗" if event.name == "exception" else "•"
            text = event.name
            if event.name == "exception" and event.attributes:
                text = f"{event.attributes.get('exception.type')}: " \
                       f"{event.attributes.get('exception.message')}"
            lines.append(f"{inner}  {mark} {text}")
        kids = children.get(span.context.span_id if span.context else None, [])
        for i, kid in enumerate(kids):
            walk(kid, inner, i == len(kids) - 1, False)

    for root in children.get(None, []):
        walk(root, "", True, True)
    return "\n".join(lines)
