"""Hot-path cost against baselines measured in the same run (pytest-benchmark).

Run: ``make bench-pytest``. Compare the medians of each group. The targets are issue 10's and
the figures that count are ``benchmarks/run.py``'s (``make bench``: interleaved rounds, ratios
to anchors in the same process, written to ``benchmarks/RESULTS.md``); this file is the quick
look.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from otel_progress import Observer, TaskUpdater

N = 10_000


@pytest.fixture(scope="module")
def provider() -> Iterator[TracerProvider]:
    """An SDK provider with no exporter: measures recording, not export."""
    yield TracerProvider()


def _bare() -> None:
    for _ in range(N):
        pass


def test_loop_bare(benchmark) -> None:  # type: ignore[no-untyped-def]
    """Baseline: an empty loop of N iterations."""
    benchmark.group = "hot loop (N iterations)"
    benchmark(_bare)


def test_loop_tqdm(benchmark) -> None:  # type: ignore[no-untyped-def]
    """Anchor: tqdm's per-iteration cost (output disabled)."""
    tqdm = pytest.importorskip("tqdm").tqdm
    benchmark.group = "hot loop (N iterations)"

    with open(os.devnull, "w") as sink:

        def run() -> None:
            for _ in tqdm(range(N), disable=False, file=sink, mininterval=1e9):
                pass

        benchmark(run)


def test_loop_advance(benchmark) -> None:  # type: ignore[no-untyped-def]
    """otel_progress: TaskUpdater.advance() per iteration inside a section."""
    benchmark.group = "hot loop (N iterations)"
    updater = TaskUpdater(task_name="bench")
    section = updater(task_name="loop")
    section.__enter__()

    def run() -> None:
        advance = updater.advance
        for _ in range(N):
            advance()

    benchmark(run)
    section.__exit__(None, None, None)


def test_loop_observer_update(benchmark) -> None:  # type: ignore[no-untyped-def]
    """otel_progress: Observer.update(msg, increment) per iteration (same message)."""
    benchmark.group = "hot loop (N iterations)"
    observer = Observer(None)

    def run() -> None:
        update = observer.update
        for _ in range(N):
            update("working")

    benchmark(run)


def test_event_raw(benchmark, provider: TracerProvider) -> None:  # type: ignore[no-untyped-def]
    """Anchor: a raw span.add_event() on the same provider."""
    benchmark.group = "notify vs add_event"
    span = provider.get_tracer("bench").start_span("raw")
    benchmark(span.add_event, "message", {"k": 1})
    span.end()


def test_event_notify(benchmark, provider: TracerProvider) -> None:  # type: ignore[no-untyped-def]
    """otel_progress: notify() on an open section."""
    benchmark.group = "notify vs add_event"
    trace.set_tracer_provider(provider)
    updater = TaskUpdater(task_name="bench")
    section = updater(task_name="s")
    section.__enter__()
    benchmark(updater.notify, "message", k=1)
    section.__exit__(None, None, None)


def test_section_raw(benchmark, provider: TracerProvider) -> None:  # type: ignore[no-untyped-def]
    """Anchor: a raw tracer.start_as_current_span() block."""
    benchmark.group = "section vs raw span"
    tracer = provider.get_tracer("bench")

    def run() -> None:
        with tracer.start_as_current_span("raw"):
            pass

    benchmark(run)


def test_section_updater(benchmark, provider: TracerProvider) -> None:  # type: ignore[no-untyped-def]
    """otel_progress: a ``with updater(task_name=...)`` section."""
    benchmark.group = "section vs raw span"
    trace.set_tracer_provider(provider)
    updater = TaskUpdater(task_name="bench")

    def run() -> None:
        with updater(task_name="s"):
            pass

    benchmark(run)
