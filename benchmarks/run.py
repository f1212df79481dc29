"""otel_progress's benchmarks: every figure as a ratio to an anchor measured in the same process
and run, medians of interleaved rounds with min and max; writes ``benchmarks/RESULTS.md``.

Run: ``make bench`` (or ``.venv/bin/python benchmarks/run.py``). Needs redis-server and the
``bench`` extra (tqdm, celery-progress, py-spy). Issue 10 lists the targets; each is a row.

Each measurement that needs its own global OpenTelemetry providers runs in a child interpreter
(``run.py --scenario NAME``), where the candidate and its anchor alternate round by round; the
worker throughput runs three real prefork workers (one per variant) side by side and interleaves
their rounds. The shared 2-core machines drift by up to 2x, so only ratios taken within one
round, and CPU per task, are compared; absolute figures are printed for context.

Options: ``--rounds N`` (default 15), ``--only a,b`` (micro, updates, memory, export, worker,
profile, endpoint, history, faults), ``--history-rows N`` (100,000), ``--save-baseline FILE``
(keep this run's figures as the "before" column), ``--baseline FILE`` (show it; default
``benchmarks/baseline.json`` when present), ``--out``.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

RESULT = "RESULT "
ROUNDS = 15
MiB = 1024 * 1024


# --- statistics ----------------------------------------------------------------------------------
def spread(values: list[float]) -> tuple[float, float, float]:
    """(median, min, max)."""
    return statistics.median(values), min(values), max(values)


def interleave(cases: dict[str, Callable[[], float]], rounds: int,
               warmup: int = 1) -> dict[str, list[float]]:
    """Run every case once per round, the order rotated each round; warm-up rounds dropped."""
    names = list(cases)
    out: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds + warmup):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            gc.collect()
            value = cases[name]()
            if r >= warmup:
                out[name].append(value)
    return out


def ratios(num: list[float], den: list[float]) -> list[float]:
    """Per-round ratios (the same round's anchor)."""
    return [n / d for n, d in zip(num, den, strict=True)]


def overheads(case: list[float], bare: list[float]) -> list[float]:
    """Per-round cost above the bare loop."""
    return [c - b for c, b in zip(case, bare, strict=True)]


@dataclass
class Row:
    """One line of RESULTS.md: a figure (median [min-max]) against its target."""

    target: str
    what: str
    anchor: str
    unit: str  # "x" for a ratio, else the unit of an absolute figure
    median: float | None
    lo: float | None = None
    hi: float | None = None
    goal: str = ""
    met: bool | None = None
    note: str = ""
    key: str = ""

    def figure(self) -> str:
        if self.median is None:
            return "—"
        fmt = _fmt(self.median)
        if self.lo is None or self.hi is None:
            return f"{fmt}{self.unit}"
        return f"{fmt}{self.unit} [{_fmt(self.lo)}–{_fmt(self.hi)}]"


def _fmt(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def row(target: str, key: str, what: str, anchor: str, values: list[float], *, unit: str = "x",
        goal: str = "", check: Callable[[float], bool] | None = None, note: str = "") -> Row:
    med, lo, hi = spread(values)
    return Row(target, what, anchor, unit, med, lo, hi, goal,
               None if check is None else check(med), note, key)


# --- child scenarios: the hot paths, one provider setup per process -------------------------------
def _serve_receiver(count: Any, dropped: Any, port: Any, stop: Any, mode: str = "ok") -> None:
    """The receiver process: count spans, keep the latest total of the drop metric; ``mode``
    "unavailable" or "hang" answers every export so (the fault scenarios)."""
    from otel_progress._attributes import METRIC_SPANS_DROPPED
    from tests.support.otlp_receiver import OtlpGrpcReceiver, _metric_records

    class CountingReceiver(OtlpGrpcReceiver):
        def _record(self, signal: str, headers: dict[str, str], request: Any,
                    accepted: bool) -> None:
            if not accepted:
                return
            if signal == "traces":
                spans = sum(len(scope.spans) for rs in request.resource_spans
                            for scope in rs.scope_spans)
                with count.get_lock():
                    count.value += spans
                return
            totals: dict[str, float] = {}
            for metric in _metric_records(request):
                if metric.name == METRIC_SPANS_DROPPED:
                    for point in metric.data_points:  # cumulative: the latest holds the total
                        totals[str(point.attributes.get("error.type"))] = float(point.value or 0)
            if totals:
                dropped.value = sum(totals.values())

    receiver = CountingReceiver(mode)  # type: ignore[arg-type]
    port.value = receiver.port
    stop.wait()
    receiver.stop()


class Receiver:
    """A counting OTLP/gRPC receiver on loopback in a process of its own (a collector never
    shares the measured process's GIL)."""

    def __init__(self, mode: str = "ok") -> None:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        self._count = ctx.Value("q", 0)
        self._dropped = ctx.Value("d", -1.0, lock=False)
        self._port = ctx.Value("i", 0, lock=False)
        self._stop = ctx.Event()
        self._proc = ctx.Process(target=_serve_receiver, daemon=True,
                                 args=(self._count, self._dropped, self._port, self._stop,
                                       mode))
        self._proc.start()
        deadline = time.monotonic() + 60
        while not self._port.value:
            if time.monotonic() > deadline or not self._proc.is_alive():
                raise RuntimeError("the OTLP receiver did not start")
            time.sleep(0.01)

    @property
    def pid(self) -> int:
        return int(self._proc.pid or 0)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._port.value}"

    @property
    def span_count(self) -> int:
        return int(self._count.value)

    @property
    def dropped_metric(self) -> float | None:
        value = float(self._dropped.value)
        return None if value < 0 else value

    def wait_count(self, expected: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.span_count < expected:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.002)
        return True

    def stop(self) -> None:
        self._stop.set()
        self._proc.join(10)


def _counting_receiver() -> Receiver:
    return Receiver()


def _loop_cases(tracer: Any, n_loop: int, n_obs: int, n_event: int, n_section: int,
                ) -> tuple[dict[str, Callable[[], float]], Any]:
    """The hot-path cases and their anchors, each returning seconds per operation."""
    import tqdm

    from otel_progress import Observer, TaskUpdater
    from otel_progress import _attributes as A

    sink = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process
    updater = TaskUpdater(task_name="bench")
    loop_section = updater(task_name="loop")
    loop_section.__enter__()
    observer = Observer(None)
    observer.update("working")

    def bare() -> float:
        t = time.perf_counter()
        for _ in range(n_loop):
            pass
        return (time.perf_counter() - t) / n_loop

    def tqdm_loop() -> float:
        t = time.perf_counter()
        for _ in tqdm.tqdm(range(n_loop), file=sink):
            pass
        return (time.perf_counter() - t) / n_loop

    def advance() -> float:
        step = updater.advance
        t = time.perf_counter()
        for _ in range(n_loop):
            step()
        return (time.perf_counter() - t) / n_loop

    def track_loop() -> float:
        """tqdm's own shape: the loop over ``track(iterable)`` (inside the open section)."""
        t = time.perf_counter()
        for _ in updater.track(range(n_loop)):
            pass
        return (time.perf_counter() - t) / n_loop

    def bare_obs() -> float:
        t = time.perf_counter()
        for _ in range(n_obs):
            pass
        return (time.perf_counter() - t) / n_obs

    def observer_update() -> float:
        update = observer.update
        t = time.perf_counter()
        for _ in range(n_obs):
            update("working")
        return (time.perf_counter() - t) / n_obs

    class Counter:
        n = 0

        def add(self, step: int = 1) -> None:
            self.n += step

    counter = Counter()

    def empty_call() -> float:
        """The floor: a bound method that adds to an attribute, per item."""
        add = counter.add
        t = time.perf_counter()
        for _ in range(n_loop):
            add()
        return (time.perf_counter() - t) / n_loop

    notify_updater = TaskUpdater(task_name="bench-notify")

    def notify() -> float:
        with notify_updater(task_name="events"):
            notify_updater.progress(current=3, total=10)
            note = notify_updater.notify
            t = time.perf_counter()
            for _ in range(n_event):
                note("fetched a file")
            took = time.perf_counter() - t
        return took / n_event

    parent = tracer.start_span("raw parent")

    def add_event() -> float:
        from opentelemetry import trace

        with trace.use_span(parent), tracer.start_as_current_span("events") as span:
            current, total = 3, 10
            add = span.add_event
            t = time.perf_counter()
            for _ in range(n_event):
                add("fetched a file", {A.CURRENT: current, A.PERCENT: current * 100.0 / total,
                                        A.TOTAL: total})
            took = time.perf_counter() - t
        return took / n_event

    section_updater = TaskUpdater(task_name="bench-sections")

    def section() -> float:
        run = section_updater
        t = time.perf_counter()
        for _ in range(n_section):
            with run(task_name="step"):
                pass
        return (time.perf_counter() - t) / n_section

    state_run = TaskUpdater(task_name="bench-state")._run

    def run_state() -> float:
        """The part of a section that is the run's state (tree, counters, seed log lines)."""
        add, close = state_run.add_section, state_run.close_section
        t = time.perf_counter()
        for _ in range(n_section):
            close(add("step", None), "succeeded", None)
        return (time.perf_counter() - t) / n_section

    def raw_span() -> float:
        from opentelemetry import trace

        start = tracer.start_as_current_span
        attrs = {A.SECTION_NAME: "step", A.SECTION_DEPTH: 1, A.TASK_NAME: "bench-sections"}
        with trace.use_span(parent):
            t = time.perf_counter()
            for _ in range(n_section):
                with start("step", attributes=attrs) as span:
                    span.set_attribute(A.SECTION_STATE, "succeeded")
            took = time.perf_counter() - t
        return took / n_section

    cases = {"bare": bare, "tqdm": tqdm_loop, "advance": advance, "track": track_loop,
             "empty_call": empty_call,
             "bare_obs": bare_obs, "observer": observer_update, "notify": notify,
             "add_event": add_event, "section": section, "raw_span": raw_span,
             "run_state": run_state}
    return cases, (loop_section, updater)


def scenario_micro(kind: str, rounds: int) -> dict[str, Any]:
    """Hot paths against their anchors with one provider setup (``kind``) in this process.

    ``sdk``: an SDK TracerProvider with no processor (recording, not export). ``api``: no SDK
    provider (the API's no-op spans). ``configure`` / ``configure-nometrics``: configure()'s
    providers exporting to a loopback receiver in this process, metrics on / off.
    ``configure-live``: metrics off, ``live=True`` (each section also sends its start
    placeholder; the flusher's progress placeholders come once per 10 s, off the hot path).
    """
    from opentelemetry import trace

    receiver = None
    if kind == "sdk":
        from opentelemetry.sdk.trace import TracerProvider

        trace.set_tracer_provider(TracerProvider())
    elif kind.startswith("configure"):
        import otel_progress

        receiver = _counting_receiver()
        otel_progress.configure(service_name="bench", endpoint=receiver.endpoint, insecure=True,
                                timeout=5, metrics=kind == "configure",
                                live=kind == "configure-live")
    tracer = trace.get_tracer("bench")
    cases, _keep = _loop_cases(tracer, n_loop=200_000, n_obs=50_000, n_event=4_000,
                               n_section=2_000)
    if kind.startswith("configure"):
        from otel_progress import _metrics

        provider: Any = trace.get_tracer_provider()
        sizes = {"notify": 4_000, "add_event": 4_000, "section": 2_000, "raw_span": 2_000}

        def exported(name: str) -> Callable[[], float]:
            """The case plus the export of the spans it made (each side pays its own)."""
            case, n = cases[name], sizes[name]

            def run() -> float:
                per = case()
                t = time.perf_counter()
                provider.force_flush(30_000)
                return per + (time.perf_counter() - t) / n

            return run

        for name in sizes:
            cases[name] = exported(name)
        section = cases["section"]
        drain = getattr(_metrics, "drain", None)

        def section_with_deferred() -> float:
            """The section loop plus the metrics it left to record off the hot path."""
            per = section()
            t = time.perf_counter()
            if drain is not None:
                drain()
            return per + (time.perf_counter() - t) / sizes["section"]

        cases["section_total"] = section_with_deferred
    values = interleave(cases, rounds)
    out: dict[str, Any] = {"kind": kind, "values": values}
    if receiver is not None:
        import otel_progress

        otel_progress.force_flush(10_000)
        out["dropped"] = otel_progress.dropped_spans()
        otel_progress.shutdown()
        receiver.stop()
    return out


def scenario_spin(what: str, seconds: float) -> dict[str, Any]:
    """Run one hot path for ``seconds`` under configure() (for py-spy)."""
    import otel_progress
    from otel_progress import Observer, TaskUpdater

    receiver = _counting_receiver()
    otel_progress.configure(service_name="bench", endpoint=receiver.endpoint, insecure=True,
                            timeout=5)
    updater = TaskUpdater(task_name="spin")
    observer = Observer(None)
    deadline = time.monotonic() + seconds
    calls = 0
    while time.monotonic() < deadline:
        if what == "section":
            for _ in range(200):
                with updater(task_name="step"):
                    pass
        elif what == "notify":
            with updater(task_name="events"):
                updater.progress(current=3, total=10)
                for _ in range(1000):
                    updater.notify("fetched a file")
        elif what == "observer":
            for _ in range(5000):
                observer.update("working")
        elif what == "advance":
            with updater(task_name="loop"):
                for _ in range(20_000):
                    updater.advance()
        calls += 1
    return {"what": what, "calls": calls}


def _work_function(target_s: float) -> tuple[Callable[[int], int], int]:
    """A pure-Python item of work taking at least ``target_s`` (calibrated here)."""
    def make(k: int) -> Callable[[int], int]:
        def work(i: int) -> int:
            x = i
            for _ in range(k):
                x = (x * 1103515245 + 12345) & 0x7FFFFFFF
            return x
        return work

    def per_item(work: Callable[[int], int]) -> float:
        t = time.perf_counter()
        for i in range(20_000):
            work(i)
        return (time.perf_counter() - t) / 20_000

    k = 1
    while True:  # the median of five passes: this machine's speed drifts while we calibrate
        work = make(k)
        if statistics.median(per_item(work) for _ in range(5)) >= target_s:
            return work, k
        k += 1


def _celery_app(redis_url: str) -> Any:
    from celery import Celery

    app = Celery("bench_updates", broker=redis_url, backend=redis_url)
    app.conf.update(task_serializer="json", result_serializer="json", accept_content=["json"],
                    result_accept_content=["json"], broker_connection_retry_on_startup=True)
    return app


def _redis_stats(redis_url: str) -> tuple[Any, Callable[[], dict[str, int]]]:
    import redis

    client = redis.Redis.from_url(redis_url)

    def stats() -> dict[str, int]:
        info = client.info("commandstats")
        return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in info.items()
                if k.startswith("cmdstat_")}

    return client, stats


def scenario_updates(rounds: int, redis_url: str, items: int) -> dict[str, Any]:
    """1,000,000 advance() calls in a Celery task (eager, real Redis result backend) against the
    same loop without reporting; backend writes counted by Redis; celery-progress's writes."""
    from celery_progress.backend import ProgressRecorder

    from otel_progress import TaskUpdater, _publish
    from otel_progress.celery import install

    install()  # the task-end hook and the state bridge, as a worker has them
    app = _celery_app(redis_url)
    client, stats = _redis_stats(redis_url)
    work, k = _work_function(1.6e-6)  # >= 1 us of work per item, with a margin for drift

    @app.task(bind=True, name="bench.loop")
    def loop(self: Any, n: int, report: bool) -> dict[str, float]:
        if report:
            updater = TaskUpdater()
            t = time.perf_counter()
            with updater(task_name="items"):
                updater.progress(total=n)
                advance = updater.advance
                for i in range(n):
                    work(i)
                    advance()
            return {"s": time.perf_counter() - t}
        t = time.perf_counter()
        for i in range(n):
            work(i)
        return {"s": time.perf_counter() - t}

    @app.task(bind=True, name="bench.cp_loop")
    def cp_loop(self: Any, n: int, report: bool) -> dict[str, float]:
        recorder = ProgressRecorder(self)
        t = time.perf_counter()
        for i in range(n):
            work(i)
            if report:
                recorder.set_progress(i + 1, n)
        return {"s": time.perf_counter() - t}

    writes: list[dict[str, Any]] = []

    def bare() -> float:
        return float(loop.apply(args=(items, False)).get()["s"]) / items

    def reporting() -> float:
        client.config_resetstat()
        t = time.perf_counter()
        per = float(loop.apply(args=(items, True)).get()["s"]) / items
        took = time.perf_counter() - t
        s = stats()
        # every write of ours is one EVALSHA (the Lua script's own GET/SET/PUBLISH count as
        # commands too); a SET outside a script is a final write of the code before the final
        # write became a script (the baseline): SETs minus the scripts' two each
        evalsha = s.get("evalsha", 0)
        plain = max(s.get("set", 0) - 2 * evalsha, 0)
        writes.append({"evalsha": evalsha, "set": plain,
                       "duration_s": took})
        return per

    values = interleave({"bare": bare, "advance": reporting}, rounds)
    cp_items = 10_000

    def cp_bare() -> float:
        return float(cp_loop.apply(args=(cp_items, False)).get()["s"]) / cp_items

    cp_writes: list[int] = []

    def cp_reporting() -> float:
        client.config_resetstat()
        per = float(cp_loop.apply(args=(cp_items, True)).get()["s"]) / cp_items
        s = stats()
        cp_writes.append(s.get("set", 0) + s.get("setex", 0))
        return per

    cp_values = interleave({"bare": cp_bare, "celery_progress": cp_reporting}, rounds)
    return {"values": values, "writes": writes, "min_interval": _publish.min_interval(),
            "items": items, "work_k": k, "cp_values": cp_values, "cp_writes": cp_writes,
            "cp_items": cp_items}


def _rss() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


def scenario_memory(redis_url: str) -> dict[str, Any]:
    """1,000,000 notifications and 10,000 sections in one task: RSS and payload size."""
    import otel_progress
    from otel_progress import TaskUpdater
    from otel_progress._backend import own_key
    from otel_progress._payload import dumps
    from otel_progress.celery import install

    install()
    receiver = _counting_receiver()
    otel_progress.configure(service_name="bench", endpoint=receiver.endpoint, insecure=True,
                            timeout=5)
    app = _celery_app(redis_url)
    client, _ = _redis_stats(redis_url)
    notes, sections = 1_000_000, 10_000

    @app.task(bind=True, name="bench.memory")
    def memory(self: Any) -> dict[str, Any]:
        updater = TaskUpdater()
        samples: dict[str, Any] = {"rss": {}, "payload_max": 0}

        def sample(label: str) -> None:
            gc.collect()
            samples["rss"][label] = _rss()
            size = len(dumps(updater.to_dict()).encode())
            samples["payload_max"] = max(samples["payload_max"], size)

        sample("start")
        with updater(task_name="notifications"):
            updater.progress(total=notes)
            for i in range(notes):
                updater.notify(f"item {i} fetched")
                updater.advance()
                if i + 1 in (10_000, notes // 2, notes):
                    sample(f"notify {i + 1}")
        with updater(task_name="sections"):
            for i in range(sections):
                with updater(task_name=f"part {i}"):
                    updater.progress(current=1, total=1)
                if i + 1 in (1_000, sections // 2, sections):
                    sample(f"sections {i + 1}")
        return samples

    result = memory.apply()
    samples = result.get()
    raw = client.get(own_key(result.id))
    samples["final_payload"] = len(raw) if raw else None
    otel_progress.force_flush(20_000)
    samples["spans_received"] = receiver.span_count
    samples["dropped"] = otel_progress.dropped_spans()
    otel_progress.shutdown()
    receiver.stop()
    return samples


def scenario_export(rounds: int, sections: int) -> dict[str, Any]:
    """configure()'s pipeline against the SDK's stock batch pipeline (spans/s to a loopback
    receiver, interleaved), then a burst of ``sections`` sections: none dropped."""
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    import otel_progress
    from otel_progress import TaskUpdater
    from otel_progress._config import DEFAULT_MAX_QUEUE_SIZE

    ours, stock = _counting_receiver(), _counting_receiver()
    otel_progress.configure(service_name="bench", endpoint=ours.endpoint, insecure=True,
                            timeout=5, metrics=False)
    stock_provider = TracerProvider()
    stock_provider.add_span_processor(BatchSpanProcessor(
        OTLPSpanExporter(endpoint=stock.endpoint, insecure=True, timeout=5),
        max_queue_size=DEFAULT_MAX_QUEUE_SIZE))
    tracers = {"configure": (trace.get_tracer("bench"), ours),
               "stock": (stock_provider.get_tracer("bench"), stock)}
    burst = 5_000
    providers = {"configure": trace.get_tracer_provider(), "stock": stock_provider}

    def through(name: str) -> Callable[[], float]:
        tracer, receiver = tracers[name]

        def run() -> float:
            expected = receiver.span_count + burst
            t = time.perf_counter()
            for _ in range(burst):
                with tracer.start_as_current_span("raw"):
                    pass
            providers[name].force_flush(60_000)  # no wait for the schedule delay
            if not receiver.wait_count(expected, 60):
                raise RuntimeError(f"{name}: spans missing at the receiver")
            return burst / (time.perf_counter() - t)

        return run

    before = otel_progress.dropped_spans()
    values = interleave({"configure": through("configure"), "stock": through("stock")}, rounds)
    lost_in_rounds = otel_progress.dropped_spans() - before
    received_before = ours.span_count
    updater = TaskUpdater(task_name="burst")
    t = time.perf_counter()
    for i in range(sections):
        with updater(task_name=f"part {i % 100}"):
            pass
    emitted_s = time.perf_counter() - t
    updater.insert_final_update()
    arrived = ours.wait_count(received_before + sections + 1, 60)
    took = time.perf_counter() - t
    otel_progress.shutdown()
    stock_provider.shutdown()
    ours.stop()
    stock.stop()
    return {"values": values, "lost_in_rounds": lost_in_rounds, "burst": sections,
            "burst_received": ours.span_count - received_before, "burst_arrived": arrived,
            "burst_dropped": otel_progress.dropped_spans() - before - lost_in_rounds,
            "burst_emit_s": emitted_s, "burst_total_s": took}


def scenario_overload(spans: int) -> dict[str, Any]:
    """Raw spans far faster than export: dropped_spans() and the drop metric against the spans
    that never reached the receiver."""
    from opentelemetry import trace

    import otel_progress

    receiver = _counting_receiver()
    otel_progress.configure(service_name="bench", endpoint=receiver.endpoint, insecure=True,
                            timeout=5)
    tracer = trace.get_tracer("bench")
    t = time.perf_counter()
    for _ in range(spans):
        with tracer.start_as_current_span("raw"):
            pass
    emit_s = time.perf_counter() - t
    otel_progress.shutdown()  # flush what the queue holds, then close: losses are final
    received = receiver.span_count
    reported = otel_progress.dropped_spans()
    time.sleep(0.5)  # the last metric export (at shutdown) reaches the receiver
    metric = receiver.dropped_metric
    receiver.stop()
    return {"emitted": spans, "received": received, "lost": spans - received,
            "reported": reported, "metric": metric, "emit_s": emit_s}


def scenario_taskcost(rounds: int, redis_url: str) -> dict[str, Any]:
    """CPU per task of the three task bodies run eagerly in this process (real Redis result
    backend, an SDK provider without export, OTel's Celery instrumentation and the bridge),
    and the fixed costs a tracked task cannot avoid: its payload and its Redis round trips."""
    from celery_progress.backend import ProgressRecorder
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider

    trace.set_tracer_provider(TracerProvider())
    from otel_progress import TaskUpdater, _payload
    from otel_progress import _attributes as A
    from otel_progress.celery import ProgressInstrumentor

    ProgressInstrumentor().instrument()
    app = _celery_app(redis_url)
    client, _ = _redis_stats(redis_url)
    tracer = trace.get_tracer("bench.manual")

    @app.task(bind=True, name="bench.ours")
    def ours(self: Any) -> None:
        updater = TaskUpdater(expected_sections=5)
        for i in range(5):
            with updater(task_name=f"part {i}"):
                updater.progress(current=1, total=1)
                updater.notify("part done")

    @app.task(bind=True, name="bench.by_hand")
    def by_hand(self: Any) -> None:
        for i in range(5):
            name = f"part {i}"
            with tracer.start_as_current_span(name, attributes={
                    A.SECTION_NAME: name, A.SECTION_DEPTH: 1, A.TASK_NAME: self.name}) as span:
                span.add_event("part done", {A.CURRENT: 1, A.PERCENT: 100.0, A.TOTAL: 1})
                span.set_attributes({A.SECTION_STATE: "succeeded", A.CURRENT: 1, A.TOTAL: 1,
                                     A.PERCENT: 100.0})

    @app.task(bind=True, name="bench.cp")
    def cp(self: Any) -> None:
        recorder = ProgressRecorder(self)
        for i in range(5):
            recorder.set_progress(i + 1, 5, description=f"part {i}")

    @app.task(bind=True, name="bench.empty")
    def empty(self: Any) -> None:
        return None

    def per_task(task: Any, n: int = 150) -> Callable[[], float]:
        def run() -> float:
            t = time.process_time()  # every thread of the process: the final writer too
            for _ in range(n):
                task.apply()
            return (time.process_time() - t) / n
        return run

    updater = TaskUpdater(task_name="bench", expected_sections=5)
    for i in range(5):
        with updater(task_name=f"part {i}"):
            updater.progress(current=1, total=1)
            updater.notify("part done")
    updater.insert_final_update()
    run = updater._run
    payload = _payload.build(run)
    text = _payload.dumps(payload)

    def build() -> float:
        t = time.process_time()
        for _ in range(300):
            _payload.build(run)
        return (time.process_time() - t) / 300

    def round_trip() -> float:
        t = time.process_time()
        for _ in range(300):
            client.set("bench-key", text)
        return (time.process_time() - t) / 300

    values = interleave({"ours": per_task(ours), "by_hand": per_task(by_hand),
                         "cp": per_task(cp), "empty": per_task(empty), "build": build,
                         "round_trip": round_trip}, rounds)
    return {"values": values, "payload_bytes": len(text)}


async def _load(port: int, path: str, clients: int, seconds: float) -> dict[str, int]:
    """``clients`` keep-alive HTTP/1.1 connections sending ``GET path`` back to back for
    ``seconds``: answers by status code. A raw asyncio client: a few µs per request, so the
    server, not the client, is what is measured."""
    import asyncio

    request = (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").encode()
    counts: dict[str, int] = {}

    async def client(deadline: float) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while time.monotonic() < deadline:
                writer.write(request)
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
                length = 0
                for line in head.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                await asyncio.wait_for(reader.readexactly(length), 10)
                status = head[9:12].decode()
                counts[status] = counts.get(status, 0) + 1
        finally:
            writer.close()

    deadline = time.monotonic() + seconds
    await asyncio.gather(*(client(deadline) for _ in range(clients)))
    return counts


def scenario_endpoint(rounds: int, redis_url: str, clients: int = 50,
                      seconds: float = 2.0) -> dict[str, Any]:
    """``GET /tasks/<id>`` requests/s under ``clients`` concurrent clients against uvicorn on
    loopback, beside celery-progress's view over the same Redis in the same server. The task
    read is a running one (a section open, its progress written by the flusher)."""
    import asyncio
    import threading

    from otel_progress import TaskUpdater
    from otel_progress.celery import ProgressInstrumentor
    from tests.support.web import free_port

    ProgressInstrumentor().instrument()
    app = _celery_app(redis_url)
    release = threading.Event()

    @app.task(bind=True, name="bench.endpoint")
    def running(self: Any) -> None:
        updater = TaskUpdater(expected_sections=2)
        with updater(task_name="download"):
            updater.progress(current=40, total=100)
            updater.notify("fetched 40 of 100 files")
            release.wait(600)

    task_id = "bench-endpoint-" + os.urandom(4).hex()
    worker = threading.Thread(target=lambda: running.apply(task_id=task_id), daemon=True)
    worker.start()
    port = free_port()
    env = _child_env({"OTEL_PROGRESS_TEST_REDIS_URL": redis_url})
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "benchmarks.endpoint_app:app", "--host", "127.0.0.1",
         "--port", str(port), "--log-level", "warning", "--no-access-log"],
        cwd=REPO, env=env)
    try:
        import httpx

        deadline = time.monotonic() + 30
        body: dict[str, Any] = {}
        while time.monotonic() < deadline:  # the server is up and the payload is written
            with contextlib.suppress(httpx.HTTPError):
                answer = httpx.get(f"http://127.0.0.1:{port}/tasks/{task_id}", timeout=2)
                body = answer.json()
                if body.get("state") == "running" and body.get("sections"):
                    break
            time.sleep(0.1)
        else:
            raise RuntimeError(f"the status endpoint never served the running task: {body}")
        anchor_body = httpx.get(f"http://127.0.0.1:{port}/anchor/{task_id}", timeout=2).json()
        statuses: dict[str, dict[str, int]] = {"ours": {}, "anchor": {}}

        def case(path: str, key: str) -> Callable[[], float]:
            def measure() -> float:
                counts = asyncio.run(_load(port, path, clients, seconds))
                for status, n in counts.items():
                    statuses[key][status] = statuses[key].get(status, 0) + n
                return counts.get("200", 0) / seconds
            return measure

        values = interleave({"ours": case(f"/tasks/{task_id}", "ours"),
                             "anchor": case(f"/anchor/{task_id}", "anchor")}, rounds)
        return {"values": values, "statuses": statuses, "clients": clients,
                "payload_bytes": len(json.dumps(body)), "anchor_state": anchor_body.get("state")}
    finally:
        release.set()
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(10)
        worker.join(10)


def scenario_history(rounds: int, redis_url: str, rows: int, scratch: str) -> dict[str, Any]:
    """Issue 12: what the history index adds per task, and how fast a filtered page comes back.

    Per task: the same eager task (5 sections, real Redis result backend, an SDK provider
    without export, the bridge on) with the history off, in Redis (the result backend's
    server) and in SQLite (a file in the scratch directory): wall time and CPU per task, the
    final write (and with it the history row) included; plus the publish side, one ``queued``
    row. Listing: ``rows`` runs in each store (10 % failed, 20 task names), then
    ``list(state="failed", limit=100)`` and ``list(name=..., limit=100)``, median latency.
    """
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider

    trace.set_tracer_provider(TracerProvider())
    from otel_progress import TaskUpdater, _backend
    from otel_progress.celery import ProgressInstrumentor
    from otel_progress.history import RedisHistory, SQLiteHistory

    ProgressInstrumentor().instrument()
    app = _celery_app(redis_url)
    redis_store = RedisHistory(redis_url, key_prefix="bench-history:")
    sqlite_store = SQLiteHistory(Path(scratch) / "bench-history.db")
    stores: dict[str, Any] = {"off": False, "redis": redis_store, "sqlite": sqlite_store}

    @app.task(bind=True, name="bench.history_task")
    def task(self: Any) -> None:
        updater = TaskUpdater(expected_sections=5)
        for i in range(5):
            with updater(task_name=f"part {i}"):
                updater.progress(current=1, total=1)
                updater.notify("part done")

    def per_task(kind: str, n: int = 100) -> Callable[[], float]:
        def run() -> float:
            _backend.set_history(stores[kind])
            t = time.perf_counter()
            for _ in range(n):
                task.apply()
            return (time.perf_counter() - t) / n
        return run

    def per_task_cpu(kind: str, n: int = 100) -> Callable[[], float]:
        def run() -> float:
            _backend.set_history(stores[kind])
            t = time.process_time()
            for _ in range(n):
                task.apply()
            return (time.process_time() - t) / n
        return run

    def queued(kind: str, n: int = 300) -> Callable[[], float]:
        store = stores[kind]

        def run() -> float:
            t = time.perf_counter()
            for _ in range(n):
                store.record({"task_id": f"q-{time.perf_counter_ns()}", "task_name": "bench",
                              "state": "queued"})
            return (time.perf_counter() - t) / n
        return run

    cases = {f"wall_{k}": per_task(k) for k in stores}
    cases.update({f"cpu_{k}": per_task_cpu(k) for k in stores})
    cases.update({f"queued_{k}": queued(k) for k in ("redis", "sqlite")})
    values = interleave(cases, rounds)
    _backend.set_history(False)

    names = [f"bench.task_{i}" for i in range(20)]
    fill_s: dict[str, float] = {}
    for kind, store in (("redis", redis_store), ("sqlite", sqlite_store)):
        store.clear()
        t = time.perf_counter()
        now = time.time()
        for i in range(rows):
            start = now - rows + i
            store.record({"task_id": f"run-{i:07d}", "task_name": names[i % 20],
                          "state": "failed" if i % 10 == 3 else "succeeded", "start": start,
                          "end": start + 0.5, "jobs_finished": 1, "jobs_total": 1,
                          "log": "\t - part\n\t\tSuccessfully completed\n"})
        fill_s[kind] = time.perf_counter() - t

    def listing(store: Any, **query: Any) -> Callable[[], float]:
        def run() -> float:
            t = time.perf_counter()
            page, _ = store.list(limit=100, **query)
            assert len(page) == 100
            return time.perf_counter() - t
        return run

    listed = interleave({
        "redis_state": listing(redis_store, state="failed"),
        "redis_name": listing(redis_store, name=names[7]),
        "sqlite_state": listing(sqlite_store, state="failed"),
        "sqlite_name": listing(sqlite_store, name=names[7]),
    }, rounds)
    redis_store.clear()
    return {"values": values, "listed": listed, "rows": rows, "fill_s": fill_s}


def scenario_faults(rounds: int, tasks: int = 40) -> dict[str, Any]:
    """Issue 11: the wall time of a task while the trace backend is healthy, absent (a closed
    port), answering UNAVAILABLE, or accepting and never answering. One tracer provider per
    backend state (the SDK's batch processor and OTLP/gRPC exporter with a 2 s timeout, as
    ``configure()`` builds them), all in this process, switched round by round; the receivers
    run in processes of their own. A task: a TaskUpdater with 5 sections, each ~1 ms of work,
    a progress and a notify."""
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    from otel_progress import TaskUpdater, _spans
    from tests.support.otlp_receiver import closed_loopback_port

    def work() -> None:  # ~1 ms of the task's own CPU
        until = time.perf_counter() + 1e-3
        while time.perf_counter() < until:
            pass

    receivers = {"healthy": Receiver(), "unavailable": Receiver("unavailable"),
                 "hang": Receiver("hang")}
    endpoints = {name: r.endpoint for name, r in receivers.items()}
    endpoints["absent"] = f"http://127.0.0.1:{closed_loopback_port()}"
    providers = {}
    for name, endpoint in endpoints.items():
        provider = TracerProvider()
        provider.add_span_processor(BatchSpanProcessor(
            OTLPSpanExporter(endpoint=endpoint, insecure=True, timeout=2),
            schedule_delay_millis=200))
        providers[name] = provider

    def case(name: str) -> Callable[[], float]:
        def measure() -> float:
            _spans.use_tracer_provider(providers[name])
            started = time.perf_counter()
            for _ in range(tasks):
                updater = TaskUpdater(task_name="fault-bench", expected_sections=5)
                for i in range(5):
                    with updater(task_name=f"part {i}"):
                        work()
                        updater.progress(current=1, total=1)
                        updater.notify("part done")
                updater.insert_final_update()
            return (time.perf_counter() - started) / tasks
        return measure

    try:
        values = interleave({name: case(name) for name in providers}, rounds)
    finally:
        _spans.use_tracer_provider(None)
        for provider in providers.values():  # a hung exporter: stop waiting after 5 s
            closer = threading.Thread(target=provider.shutdown, daemon=True)
            closer.start()
            closer.join(5)
        for receiver in receivers.values():
            receiver.stop()
    return {"values": values, "tasks": tasks}


def faults_rows(res: dict[str, Any]) -> list[Row]:
    healthy = res["values"]["healthy"]
    labels = {"absent": "nothing listening", "unavailable": "answers UNAVAILABLE",
              "hang": "accepts and never answers"}
    return [row("11", f"faults_{name}", f"task wall time, trace backend {label} (5 sections "
                "of ~1 ms, progress, notify; issue 11)", "the same task, healthy trace backend",
                ratios(res["values"][name], healthy), goal="≤ 1.1x",
                check=lambda v: v <= 1.1,
                note=f"{statistics.median(res['values'][name]) * 1e3:.2f} ms vs "
                     f"{statistics.median(healthy) * 1e3:.2f} ms per task")
            for name, label in labels.items()]


SCENARIOS: dict[str, Callable[..., dict[str, Any]]] = {
    "micro": scenario_micro, "spin": scenario_spin, "updates": scenario_updates,
    "memory": scenario_memory, "export": scenario_export, "overload": scenario_overload,
    "taskcost": scenario_taskcost, "endpoint": scenario_endpoint,
    "history": scenario_history, "faults": scenario_faults,
}


def child(name: str, args: dict[str, Any], *, timeout: float = 900,
          env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run a scenario in a fresh interpreter; its RESULT line is the answer."""
    command = [sys.executable, str(Path(__file__).resolve()), "--scenario", name,
               "--args", json.dumps(args)]
    proc = subprocess.run(command, cwd=REPO, env=_child_env(env), capture_output=True, text=True,
                          timeout=timeout)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"scenario {name} failed (rc={proc.returncode}):\n"
                           f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    result: dict[str, Any] = json.loads(lines[-1][len(RESULT):])
    return result


def _child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    env["OTEL_PROGRESS_STRICT"] = "0"  # production behaviour: no re-raise of internal errors
    env.update(extra or {})
    return env


# --- the worker: three real prefork workers, interleaved rounds ---------------------------------
VARIANTS = ("otel_progress", "otel_progress_lean", "manual", "celery_progress")
SPANS_PER_TASK = {"otel_progress": 6, "otel_progress_lean": 6, "manual": 6, "celery_progress": 1}


def _family(proc: Any) -> list[Any]:
    import psutil

    try:
        return [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _cpu(procs: list[Any]) -> float:
    import psutil

    total = 0.0
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            t = p.cpu_times()
            total += t.user + t.system
    return total


@contextlib.contextmanager
def _workers(redis_url: str, endpoint: str, log_dir: Path) -> Iterator[dict[str, Any]]:
    from tests.support.celery_worker import CeleryWorker

    started: dict[str, Any] = {}
    try:
        for variant in VARIANTS:
            worker = CeleryWorker(
                "benchmarks.bench_app", log_dir=log_dir, redis_url=redis_url,
                queues=(variant,), concurrency=2, pool="prefork", name=f"bench-{variant}",
                loglevel="WARNING", env={
                    "BENCH_VARIANT": variant, "OTEL_PROGRESS_STRICT": "0",
                    "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_EXPORTER_OTLP_INSECURE": "true",
                    # every round's spans are exported (and their CPU counted) inside the round
                    "OTEL_BSP_SCHEDULE_DELAY": "200",
                    "OTEL_METRIC_EXPORT_INTERVAL": "5000",
                })
            worker.start(wait=False)
            started[variant] = worker
        for worker in started.values():
            worker.wait_ready(60)
        yield started
    finally:
        for worker in started.values():
            worker.request_stop()
        for worker in started.values():
            worker.wait_stopped(30)


def worker_benchmark(redis: Any, rounds: int, batch: int, log_dir: Path,
                     profile_s: float) -> dict[str, Any]:
    """Tasks/s and CPU ms per task of the variants, interleaved round by round."""
    import psutil
    from celery import Celery

    from otel_progress.celery import install, uninstall

    receiver = _counting_receiver()
    producer = Celery("bench_producer", broker=redis.url, backend=redis.url)
    producer.conf.update(task_serializer="json", result_serializer="json",
                         accept_content=["json"], result_accept_content=["json"],
                         broker_connection_retry_on_startup=True)
    me, redis_proc = psutil.Process(), psutil.Process(redis.pid)
    others = [redis_proc, me, psutil.Process(receiver.pid)]
    out: dict[str, Any] = {v: {"tps": [], "cpu_ms": [], "worker_cpu_ms": [],
                               "split": {"redis": [], "producer": [], "receiver": []}}
                           for v in VARIANTS}
    split_of = {"redis": [redis_proc], "producer": [me], "receiver": [others[2]]}
    with _workers(redis.url, receiver.endpoint, log_dir) as workers:
        families = {v: _family(psutil.Process(w.pid)) for v, w in workers.items()}

        def one_round(variant: str, tasks: int) -> tuple[float, float, float]:
            if variant == "otel_progress":
                install()  # the producer side of the bridge: queued tracking at publish
            expected = receiver.span_count + tasks * SPANS_PER_TASK[variant]
            family = families[variant]
            parts0 = {k: _cpu(p) for k, p in split_of.items()}
            cpu0, w0 = _cpu([*family, *others]), _cpu(family)
            t = time.perf_counter()
            results = [producer.send_task(f"bench.{variant}", queue=variant)
                       for _ in range(tasks)]
            for result in results:
                result.get(timeout=120)
            wall = time.perf_counter() - t
            if variant == "otel_progress":
                uninstall()
            if not receiver.wait_count(expected, 30):
                raise RuntimeError(f"{variant}: spans missing at the receiver")
            time.sleep(0.05)
            cpu1, w1 = _cpu([*family, *others]), _cpu(family)
            for k, p in split_of.items():
                out[variant]["split"][k].append((_cpu(p) - parts0[k]) * 1000 / tasks)
            for result in results:
                result.forget()
            return tasks / wall, (cpu1 - cpu0) * 1000 / tasks, (w1 - w0) * 1000 / tasks

        for variant in VARIANTS:  # warm-up: pools started, connections made, code cached
            one_round(variant, batch // 2)
        for r in range(rounds):
            k = r % len(VARIANTS)
            for variant in VARIANTS[k:] + VARIANTS[:k]:
                tps, cpu_ms, worker_ms = one_round(variant, batch)
                out[variant]["tps"].append(tps)
                out[variant]["cpu_ms"].append(cpu_ms)
                out[variant]["worker_cpu_ms"].append(worker_ms)
        if profile_s > 0:
            out["profile"] = {v: profile_worker(workers[v], producer, v, profile_s, log_dir)
                              for v in ("otel_progress", "manual")}
    receiver.stop()
    return out


def profile_worker(worker: Any, producer: Any, variant: str, seconds: float,
                   log_dir: Path) -> dict[str, Any]:
    """py-spy on the pool children while they run a steady stream of ``variant`` tasks."""
    children = worker.children()
    spy = _py_spy()
    outs = [log_dir / f"spy-{variant}-{c.pid}.txt" for c in children]
    procs = [subprocess.Popen([spy, "record", "-p", str(c.pid), "-r", "250", "-d", str(seconds),
                               "--gil", "--full-filenames", "-f", "raw", "-o", str(o),
                               "--nonblocking"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for c, o in zip(children, outs, strict=True)]
    deadline = time.monotonic() + seconds + 1
    pending: list[Any] = []
    while time.monotonic() < deadline:
        pending.append(producer.send_task(f"bench.{variant}", queue=variant))
        if len(pending) >= 40:
            for result in pending:
                result.get(timeout=120)
                result.forget()
            pending = []
    for result in pending:
        result.get(timeout=120)
    for p in procs:
        p.wait(timeout=60)
    stacks: dict[str, int] = {}
    for o in outs:
        for stack, count in _read_raw(o).items():
            stacks[stack] = stacks.get(stack, 0) + count
    return {"shares": classify(stacks, WORKER_CATEGORIES), "samples": sum(stacks.values())}


def _py_spy() -> str:
    candidate = Path(sys.executable).with_name("py-spy")
    return str(candidate) if candidate.exists() else "py-spy"


def _read_raw(path: Path) -> dict[str, int]:
    stacks: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in path.read_text(errors="replace").splitlines():
            stack, _, count = line.rpartition(" ")
            if stack and count.isdigit():
                stacks[stack] = stacks.get(stack, 0) + int(count)
    return stacks


# Categories of a worker child's samples: the first whose marker appears in a stack (outermost
# first) takes the sample. Markers are "function (file" prefixes as py-spy writes them.
WORKER_CATEGORIES: list[tuple[str, tuple[str, ...]]] = [
    ("final write (task end)", ("final_write (", "Publisher.final (")),
    ("flusher (progress writes)", ("_Flusher._loop (",)),
    ("span export (batch thread)", ("BatchProcessor.worker (", "BatchSpanProcessor.worker (",
                                    "/opentelemetry/exporter/")),
    ("metrics export", ("PeriodicExportingMetricReader._ticker (",)),
    ("run creation", ("run_for_current_task (",)),
    ("task end hook (close run)", ("task_ended (",)),
    ("section metrics", ("/otel_progress/_metrics.py",)),
    ("sections (span start/end, state)", ("Section._enter (", "Section._exit (")),
    ("notify", ("TaskUpdater.notify (",)),
    ("progress()", ("TaskUpdater.progress (",)),
    ("hand-written spans and events", ("manual_task (",)),
    ("OTel Celery instrumentation", ("/opentelemetry/instrumentation/celery",)),
    ("Celery result store", ("Backend.mark_as_done (", "Backend.store_result (")),
    ("Celery/kombu/billiard task machinery", ("/celery/", "/kombu/", "/billiard/")),
]


OURS = {"final write (task end)", "flusher (progress writes)", "run creation",
        "task end hook (close run)", "section metrics", "sections (span start/end, state)",
        "notify", "progress()"}


def classify(stacks: dict[str, int], categories: list[tuple[str, tuple[str, ...]]],
             ) -> dict[str, float]:
    """Shares of samples per category (the first category whose marker a stack contains)."""
    total = sum(stacks.values()) or 1
    shares: dict[str, float] = {}
    for stack, count in stacks.items():
        name = "other"
        for category, markers in categories:
            if any(marker in stack for marker in markers):
                name = category
                break
        shares[name] = shares.get(name, 0.0) + count / total
    return dict(sorted(shares.items(), key=lambda kv: -kv[1]))


def self_shares(stacks: dict[str, int]) -> dict[str, float]:
    """Shares of samples by the module of the innermost frame (where the time is spent)."""
    total = sum(stacks.values()) or 1
    shares: dict[str, float] = {}
    for stack, count in stacks.items():
        leaf = stack.split(";")[-1]
        name = _module_of(leaf)
        shares[name] = shares.get(name, 0.0) + count / total
    return dict(sorted(shares.items(), key=lambda kv: -kv[1]))


_MODULES: list[tuple[str, str]] = [
    ("/opentelemetry/sdk/trace/export", "SDK batch processor"),
    ("/opentelemetry/sdk/_shared_internal", "SDK batch processor"),
    ("/opentelemetry/sdk/trace", "SDK spans"),
    ("/opentelemetry/sdk/util", "SDK spans"),
    ("/opentelemetry/sdk/metrics", "SDK metrics"),
    ("/opentelemetry/attributes", "attribute cleaning (OTel)"),
    ("/opentelemetry/context", "OTel context"),
    ("/opentelemetry/trace", "OTel trace API"),
    ("/opentelemetry/metrics", "OTel metrics API"),
    ("/opentelemetry/exporter", "OTLP encoding and export"),
    ("/grpc/", "gRPC"),
    ("/redis/", "redis-py"),
    ("/kombu/", "kombu"),
    ("/celery/", "Celery"),
    ("/billiard/", "billiard"),
    ("/json/", "json"),
    ("threading.py", "threads (locks, waits)"),
]


def _module_of(frame: str) -> str:
    """``func (/path/to/file.py:12)`` -> a short module label."""
    func, _, where = frame.partition(" (")
    path = where.rsplit(":", 1)[0]
    if path == "<frozen abc>":
        return "isinstance checks (abc)"
    if "/otel_progress/" in path:
        return "otel_progress." + path.rsplit("/otel_progress/", 1)[1].removesuffix(".py")
    for marker, label in _MODULES:
        if marker in path:
            return label
    return f"other ({path.rsplit('/', 1)[-1]}:{func})" if path else "other"


def profile_hot_paths(seconds: float, log_dir: Path) -> dict[str, Any]:
    """py-spy on a child running each hot path in a loop (configure()'s pipeline on)."""
    out: dict[str, Any] = {}
    spy = _py_spy()
    for what in ("section", "notify", "observer", "advance"):
        raw = log_dir / f"spy-{what}.txt"
        command = [spy, "record", "-r", "400", "--full-filenames", "-f", "raw", "-o", str(raw),
                   "--",
                   sys.executable, str(Path(__file__).resolve()), "--scenario", "spin",
                   "--args", json.dumps({"what": what, "seconds": seconds})]
        subprocess.run(command, cwd=REPO, env=_child_env(), capture_output=True, timeout=300)
        stacks = _read_raw(raw)
        # only the samples inside the measured call, not imports or the receiver's threads
        marker = {"section": ("Section._enter", "Section._exit", "Section.__enter__",
                              "Section.__exit__"),
                  "notify": ("TaskUpdater.notify",), "observer": ("Observer.update",),
                  "advance": ("_advancer.<locals>.advance", "TaskUpdater.advance")}[what]
        inside = {s: c for s, c in stacks.items() if any(m in s for m in marker)}
        threads = {s: c for s, c in stacks.items() if "scenario_spin" not in s
                   and "_find_and_load" not in s}
        out[what] = {"self": self_shares(inside), "samples": sum(inside.values()),
                     "other_threads": sum(threads.values()) / (sum(stacks.values()) or 1)}
    return out


# --- the report ----------------------------------------------------------------------------------
def machine() -> dict[str, str]:
    """CPU, cores, Python, package versions."""
    cpu = platform.processor() or ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    packages = ["otel-progress", "opentelemetry-api", "opentelemetry-sdk",
                "opentelemetry-exporter-otlp-proto-grpc", "opentelemetry-instrumentation-celery",
                "celery", "kombu", "redis", "grpcio", "tqdm", "celery-progress", "py-spy"]
    versions = {}
    for name in packages:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    redis_version = subprocess.run(["redis-server", "--version"], capture_output=True,
                                   text=True).stdout.split(" v=")[-1].split(" ")[0]
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                         text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "otel_progress"], cwd=REPO,
                           capture_output=True, text=True).stdout.strip()
    return {"cpu": cpu, "cores": str(os.cpu_count()), "python": platform.python_version(),
            "platform": platform.platform(), "redis-server": redis_version,
            "commit": git + (" (with uncommitted changes to otel_progress/)" if dirty else ""),
            **versions}


def micro_rows(results: dict[str, dict[str, Any]]) -> list[Row]:
    rows: list[Row] = []
    sdk = results.get("sdk")
    if sdk:
        v = sdk["values"]
        tq = overheads(v["tqdm"], v["bare"])
        adv = overheads(v["advance"], v["bare"])
        obs = overheads(v["observer"], v["bare_obs"])
        rows.append(row("1", "advance", "`advance()` per item, above a bare loop (SDK)",
                        "tqdm's per-iteration overhead", ratios(adv, tq), goal="≤ 0.5x",
                        check=lambda m: m <= 0.5,
                        note=f"{spread(adv)[0] * 1e9:.0f} ns vs tqdm {spread(tq)[0] * 1e9:.0f} ns"))
        if "empty_call" in v:
            empty = overheads(v["empty_call"], v["bare"])
            rows.append(row("1", "floor_call", "reference: an empty bound-method call per item "
                            "(`self.n += step`)", "tqdm's per-iteration overhead",
                            ratios(empty, tq), note="the floor of any per-item Python call"))
        if "track" in v:
            trk = overheads(v["track"], v["bare"])
            rows.append(row("1", "track", "`track()` per item, above a bare loop (SDK)",
                            "tqdm's per-iteration overhead", ratios(trk, tq), goal="≤ 0.5x",
                            check=lambda m: m <= 0.5,
                            note=f"{spread(trk)[0] * 1e9:.0f} ns vs tqdm "
                                 f"{spread(tq)[0] * 1e9:.0f} ns"))
        rows.append(row("1", "observer_us", "`Observer.update(msg)` with increment (SDK)",
                        "absolute", [o * 1e6 for o in obs], unit=" µs", goal="≤ 0.5 µs",
                        check=lambda m: m <= 0.5))
        rows.append(row("1", "observer_tqdm", "`Observer.update(msg)` with increment (SDK)",
                        "tqdm's per-iteration overhead", ratios(obs, tq)))
        rows.append(row("2", "notify", "`notify(msg)` on a section with progress (SDK)",
                        "raw `span.add_event(msg, {current, percent, total})`",
                        ratios(v["notify"], v["add_event"]), goal="≤ 1.2x",
                        check=lambda m: m <= 1.2,
                        note=_abs(v["notify"], v["add_event"])))
        rows.append(row("3", "section_sdk", "a section (SDK, no exporter)",
                        "raw `start_as_current_span` with a section's attributes",
                        ratios(v["section"], v["raw_span"]), goal="≤ 1.3x",
                        check=lambda m: m <= 1.3, note=_abs(v["section"], v["raw_span"])))
        if "run_state" in v:
            rows.append(row("3", "run_state_sdk", "reference: the run-state part of a section "
                            "(`_run`: tree, counters, seed log lines)",
                            "raw `start_as_current_span` with a section's attributes",
                            ratios(v["run_state"], v["raw_span"]),
                            note="included in the section above; outside this change's rooms"))
    api = results.get("api")
    if api:
        v = api["values"]
        rows.append(row("3", "section_api", "a section (API only, no SDK)",
                        "no-op `start_as_current_span`", ratios(v["section"], v["raw_span"]),
                        goal="≤ 1.3x", check=lambda m: m <= 1.3,
                        note=_abs(v["section"], v["raw_span"])))
        if "run_state" in v:
            rows.append(row("3", "run_state_api", "reference: the run-state part of a section "
                            "(API only)", "no-op `start_as_current_span`",
                            ratios(v["run_state"], v["raw_span"]),
                            note="included in the section above; outside this change's rooms"))
    for kind, label in (("configure", "metrics on"), ("configure-nometrics", "metrics off"),
                        ("configure-live", "metrics off, live=True")):
        res = results.get(kind)
        if not res:
            continue
        v = res["values"]
        goal, limit = ("≤ 1.5x", 1.5) if kind == "configure" else ("", None)
        rows.append(row("3", f"section_{kind}", f"a section, configure()'s providers ({label}), "
                        "exported to loopback", "the same raw span, same providers",
                        ratios(v["section"], v["raw_span"]), goal=goal,
                        check=None if limit is None else (lambda m, lim=limit: m <= lim),
                        note=_abs(v["section"], v["raw_span"])))
        if "section_total" in v:
            rows.append(row("3", f"section_total_{kind}", f"the same, plus the metrics it left "
                            f"to record off the hot path ({label})",
                            "the same raw span, same providers",
                            ratios(v["section_total"], v["raw_span"]),
                            note=_abs(v["section_total"], v["raw_span"])))
    live, plain = results.get("configure-live"), results.get("configure-nometrics")
    if live and plain:  # separate processes: compare each to its own raw span, then subtract
        extra = [(lv - lr) - (pv - pr) for lv, lr, pv, pr in zip(
            live["values"]["section"], live["values"]["raw_span"],
            plain["values"]["section"], plain["values"]["raw_span"], strict=False)]
        rows.append(row("3", "live_section_us", "what `live=True` adds to a section (its start "
                        "placeholder, exported)", "absolute (minus a section without live)",
                        [e * 1e6 for e in extra], unit=" µs",
                        note="opt-in; progress placeholders come from the flusher"))
    return rows


def _abs(case: list[float], anchor: list[float]) -> str:
    return (f"{statistics.median(case) * 1e6:.2f} µs vs "
            f"{statistics.median(anchor) * 1e6:.2f} µs")


def updates_rows(res: dict[str, Any]) -> list[Row]:
    v = res["values"]
    bound = [w["duration_s"] / res["min_interval"] + 3 for w in res["writes"]]
    writes = [w["evalsha"] + w["set"] for w in res["writes"]]
    over = [w / b for w, b in zip(writes, bound, strict=True)]
    cp = res["cp_values"]
    cp_per_update = overheads(cp["celery_progress"], cp["bare"])
    items = res["items"]
    bare_us = statistics.median(v["bare"]) * 1e6
    rows = [
        row("4", "writes", f"backend writes for {items:,} updates (EVALSHA + SET at Redis)",
            "duration / min_interval + 3", over, goal="≤ 1x", check=lambda m: m <= 1.0,
            note=f"{statistics.median(writes):.0f} writes in "
                 f"{statistics.median([w['duration_s'] for w in res['writes']]):.2f} s "
                 f"(max {max(writes)}; bound {statistics.median(bound):.1f})"),
        row("4", "wall", f"wall time of {items:,} items doing {bare_us:.2f} µs of work, "
            "advance() each", "the same loop without reporting", ratios(v["advance"], v["bare"]),
            goal="≤ 1.10x", check=lambda m: m <= 1.10 and bare_us >= 1.0,
            note="" if bare_us >= 1.0 else "the work per item came out under 1 µs: not met "
                 "by definition"),
        row("4", "cp_writes", f"celery-progress: writes per update ({res['cp_items']:,} "
            "updates, extrapolated to 1,000,000)", "one write per update",
            [w / res["cp_items"] for w in res["cp_writes"]],
            note=f"≈ {statistics.median(res['cp_writes']) * 1_000_000 / res['cp_items']:,.0f} "
                 "writes per 1,000,000 updates"),
        row("4", "cp_wall", "celery-progress: wall time per item, same work, "
            "`set_progress` each (extrapolated)", "the same loop without reporting",
            ratios(cp["celery_progress"], cp["bare"]),
            note=f"{statistics.median(cp_per_update) * 1e6:.0f} µs per update: "
                 f"≈ {statistics.median(cp_per_update) * 1e6:.0f} s per 1,000,000"),
    ]
    return rows


def memory_rows(res: dict[str, Any]) -> list[Row]:
    rss = {k: v / MiB for k, v in res["rss"].items()}
    payload = max(res["payload_max"], res.get("final_payload") or 0)
    notes_all = rss["notify 1000000"] - rss["notify 10000"]
    notes_late = rss["notify 1000000"] - rss["notify 500000"]
    sections_all = rss["sections 10000"] - rss["notify 1000000"]
    sections_late = rss["sections 10000"] - rss["sections 5000"]
    return [
        Row("5", "payload size, 1,000,000 notifications + 10,000 sections (largest seen)",
            "16 KiB", " KiB", payload / 1024, goal="< 16 KiB", met=payload < 16 * 1024,
            note=f"final payload {res.get('final_payload')} bytes", key="payload"),
        Row("5", "RSS growth, notifications 500,000 → 1,000,000 (flat: no growth per item)",
            "RSS at 500,000", " MiB", notes_late, goal="flat (< 1 MiB)", met=notes_late < 1,
            note=f"{notes_all:.2f} MiB over 10,000 → 1,000,000; "
                 f"{rss['notify 10000']:.0f} MiB after 10,000", key="rss_notify"),
        Row("5", "RSS growth, sections 5,000 → 10,000 in the same task (flat: no growth per "
            "section)", "RSS at 5,000 sections", " MiB", sections_late, goal="flat (< 1 MiB)",
            met=sections_late < 1,
            note=f"{sections_all:.2f} MiB over all 10,000 (the SDK's export queue fills "
                 f"first); {res['spans_received']:,} spans exported, {res['dropped']} dropped",
            key="rss_sections"),
    ]


def worker_rows(res: dict[str, Any]) -> list[Row]:
    ours, manual, cp = res["otel_progress"], res["manual"], res["celery_progress"]
    rows = [
        row("6", "tps_manual", "worker tasks/s, otel_progress (5 sections + notify)",
            "plain Celery + OTel instrumentation + the same spans and events by hand",
            ratios(ours["tps"], manual["tps"]), goal="≥ 0.9x", check=lambda m: m >= 0.9,
            note=f"{statistics.median(ours['tps']):.0f} vs "
                 f"{statistics.median(manual['tps']):.0f} tasks/s"),
        row("6", "cpu_manual", "CPU ms per task, all processes (worker, Redis, producer, "
            "receiver): by hand / otel_progress", "otel_progress's CPU per task",
            ratios(manual["cpu_ms"], ours["cpu_ms"]), goal="≥ 0.9x", check=lambda m: m >= 0.9,
            note=f"{statistics.median(ours['cpu_ms']):.2f} vs "
                 f"{statistics.median(manual['cpu_ms']):.2f} ms (worker only "
                 f"{statistics.median(ours['worker_cpu_ms']):.2f} vs "
                 f"{statistics.median(manual['worker_cpu_ms']):.2f}; {_split(ours, manual)})"),
        row("6", "tps_cp", "worker tasks/s, otel_progress", "celery-progress (5 `set_progress`)",
            ratios(ours["tps"], cp["tps"]), goal="≥ 1.5x", check=lambda m: m >= 1.5,
            note=f"{statistics.median(ours['tps']):.0f} vs "
                 f"{statistics.median(cp['tps']):.0f} tasks/s"),
        row("6", "cpu_cp", "CPU ms per task, all processes: celery-progress / otel_progress",
            "otel_progress's CPU per task", ratios(cp["cpu_ms"], ours["cpu_ms"]),
            goal="≥ 1.5x", check=lambda m: m >= 1.5,
            note=f"{statistics.median(ours['cpu_ms']):.2f} vs "
                 f"{statistics.median(cp['cpu_ms']):.2f} ms (worker only "
                 f"{statistics.median(ours['worker_cpu_ms']):.2f} vs "
                 f"{statistics.median(cp['worker_cpu_ms']):.2f}; {_split(ours, cp)})"),
    ]
    lean = res.get("otel_progress_lean")
    if lean and lean.get("tps"):
        what = "otel_progress with `instrument(history=False, track_queued=False)`"
        rows += [
            row("6", "tps_lean", f"reference: worker tasks/s, {what}",
                "plain Celery + OTel instrumentation + the same spans and events by hand",
                ratios(lean["tps"], manual["tps"]),
                note=f"{statistics.median(lean['tps']):.0f} vs "
                     f"{statistics.median(manual['tps']):.0f} tasks/s; "
                     f"{statistics.median(lean['tps']) / statistics.median(cp['tps']):.2f}x "
                     "celery-progress's"),
            row("6", "cpu_lean", f"reference: CPU ms per task, all processes, by hand / {what}",
                "its CPU per task", ratios(manual["cpu_ms"], lean["cpu_ms"]),
                note=f"{statistics.median(lean['cpu_ms']):.2f} vs "
                     f"{statistics.median(manual['cpu_ms']):.2f} ms (worker only "
                     f"{statistics.median(lean['worker_cpu_ms']):.2f} vs "
                     f"{statistics.median(manual['worker_cpu_ms']):.2f}; {_split(lean, manual)})"),
        ]
    return rows


def _split(ours: dict[str, Any], other: dict[str, Any]) -> str:
    """The other processes' CPU ms per task, ours vs the anchor's (where the rest goes)."""
    split_ours, split_other = ours.get("split") or {}, other.get("split") or {}
    return ", ".join(f"{name} {statistics.median(split_ours[name]):.2f} vs "
                     f"{statistics.median(split_other[name]):.2f}"
                     for name in ("redis", "producer", "receiver")
                     if split_ours.get(name) and split_other.get(name))


def taskcost_rows(res: dict[str, Any]) -> list[Row]:
    v = res["values"]
    ours = overheads(v["ours"], v["empty"])
    hand = overheads(v["by_hand"], v["empty"])
    cp = overheads(v["cp"], v["empty"])
    us = statistics.median
    return [
        row("6", "task_cpu_ours", "reference: CPU a task body adds to an empty task, eager in "
            "one process (real Redis, SDK without export), otel_progress", "absolute",
            [o * 1e6 for o in ours], unit=" µs",
            note=f"by hand {us(hand) * 1e6:.0f} µs, celery-progress {us(cp) * 1e6:.0f} µs; of "
                 f"ours, fixed per task: payload build {us(v['build']) * 1e6:.0f} µs, one Redis "
                 f"round trip {us(v['round_trip']) * 1e6:.0f} µs CPU (eager: the final write "
                 f"is its own round trip; in a worker it rides in Celery's store)"),
        row("6", "task_cpu_cp", "the same: celery-progress's added CPU / otel_progress's",
            "otel_progress's", ratios(cp, ours), note="5 result-backend writes per task"),
    ]


def history_rows(res: dict[str, Any]) -> list[Row]:
    v, listed = res["values"], res["listed"]
    us = statistics.median
    rows = []
    for kind, label in (("redis", "Redis (the result backend's server)"), ("sqlite", "SQLite")):
        rows.append(row("12", f"history_task_{kind}", f"wall time the history index adds per "
                        f"task, {label}: the same eager task (5 sections) with and without it",
                        "absolute", [(a - b) * 1e6 for a, b in zip(v[f"wall_{kind}"],
                                                                    v["wall_off"], strict=True)],
                        unit=" µs",
                        note=f"{us(v[f'wall_{kind}']) / us(v['wall_off']):.2f}x the task "
                             f"without history ({us(v['wall_off']) * 1e6:.0f} µs); CPU "
                             f"+{(us(v[f'cpu_{kind}']) - us(v['cpu_off'])) * 1e6:.0f} µs; the "
                             f"producer's queued row {us(v[f'queued_{kind}']) * 1e6:.0f} µs"))
    for kind in ("redis", "sqlite"):
        for query, what in (("state", "state=failed"), ("name", "name=<one of 20>")):
            rows.append(row("12", f"history_list_{kind}_{query}",
                            f"list latency, {res['rows']:,} rows in {kind}, {what}, limit 100",
                            "absolute", [x * 1e3 for x in listed[f"{kind}_{query}"]],
                            unit=" ms", note=f"filled in {res['fill_s'][kind]:.0f} s"))
    return rows


def export_rows(res: dict[str, Any], overload: dict[str, Any] | None) -> list[Row]:
    v = res["values"]
    rows = [
        row("7", "export_rate", "spans/s through configure()'s pipeline to a loopback receiver "
            "(5,000-span bursts, until received)", "the SDK's stock BatchSpanProcessor + OTLP "
            "exporter, same queue size", ratios(v["configure"], v["stock"]),
            note=f"{statistics.median(v['configure']):,.0f} vs "
                 f"{statistics.median(v['stock']):,.0f} spans/s"),
        Row("7", f"spans dropped, a burst of {res['burst']:,} sections", "0", "",
            float(res["burst_dropped"]), goal="0", met=res["burst_dropped"] == 0
            and res["burst_arrived"],
            note=f"{res['burst_received']:,} of {res['burst'] + 1:,} received; emitted in "
                 f"{res['burst_emit_s']:.2f} s, all received after {res['burst_total_s']:.2f} s",
            key="burst"),
    ]
    if overload:
        exact = overload["reported"] == overload["lost"]
        metric_ok = overload["metric"] == overload["lost"]
        rows.append(Row(
            "7", f"overload ({overload['emitted']:,} raw spans in {overload['emit_s']:.1f} s): "
            "`dropped_spans()` / spans lost at the receiver", "spans lost", "x",
            overload["reported"] / overload["lost"] if overload["lost"] else None,
            goal="= 1 (exact)", met=exact and metric_ok,
            note=f"lost {overload['lost']:,}; dropped_spans() {overload['reported']:,}; "
                 f"metric {overload['metric']}", key="overload"))
    return rows


def endpoint_rows(res: dict[str, Any]) -> list[Row]:
    ours, anchor = res["values"]["ours"], res["values"]["anchor"]
    other = {k: sum(n for s, n in v.items() if s != "200") for k, v in res["statuses"].items()}
    return [row("8", "endpoint_rps", f"`GET /tasks/<id>` requests/s, {res['clients']} clients, "
                "uvicorn on loopback (a running task)",
                "celery-progress's view over the same Redis, same server and clients",
                ratios(ours, anchor),
                note=f"{statistics.median(ours):,.0f} vs {statistics.median(anchor):,.0f} "
                     f"requests/s; answers other than 200: {other['ours']} vs {other['anchor']} "
                     f"({res['statuses']['ours']}); "
                     f"payload {res['payload_bytes']:,} bytes")]


METRICS_DECISION = """\
## Section metrics: measured, and chosen

With the SDK in use here, one `Counter.add` and one `Histogram.record` each cost about what a
span costs (the SDK cleans and hashes the attributes of every measurement): recording both at
each section's end made a section with `configure()`'s MeterProvider cost 1.8x the same raw span
(the "before" column), against 1.2x with metrics off. Three ways were weighed:

- (a) record in the task's thread: what it was.
- (b) drop the two instruments and derive section counts and durations from spans in the
  collector (`spanmetrics` already does). Cheapest for the task, but the counter, the histogram
  and its buckets are public (README, the collector's alert rules, tests), and spanmetrics needs
  a collector configured for it that not every user runs.
- (c) keep both, exactly, and take them off the hot path. **Chosen.** A section's end appends
  `(task, section, status, duration)` to a queue (a deque append); `_metrics.drain()` records
  the queue on the flusher thread, in every metric collection (the progress-age gauge's callback
  runs before a collection reads the instruments, so nothing finished is missed) and at
  shutdown. The counter is added once per label set per drain, so its cost no longer grows with
  sections; each duration is still one `record()`, off the task's thread: the row "plus the
  metrics it left to record" charges that deferred cost back to the section loop. Same names,
  labels, counts, buckets and sums; what changes is when they are recorded (and that a
  histogram point no longer carries the section span as an exemplar).

What spans cannot give (the progress-age gauge, dropped spans) was never on the hot path.
"""

REMAINING = """\
## What is unmet, and why

These 2-core machines drift: over the four full runs of 2026-12-01 (6c92547 to 394f1ca, this
one last) tqdm's own per-iteration time ranged from 142 to 193 ns. The two per-item rows sit at
their lines, so their "met" column can flip between runs; the ratios to tqdm are the steadier
figures.

- **advance() ≤ 0.5x tqdm** (row 1): 0.46x–0.51x over the day's runs (0.51x in this one).
  One `advance()` is a closure call, one `ContextVar.get()` and one slot increment (71–84 ns);
  the floor of any per-item Python call, an empty bound method adding to an attribute, is
  0.33x–0.41x. Nothing is left to take out of it but the call itself.
- **Observer.update() ≤ 0.5 µs** (row 1): met in this run (0.48 µs); 0.47–0.58 µs over the
  day's runs (0.69 µs before them, 5.2 µs at the start), 3.1x–3.7x tqdm. The per-item call
  (`update(msg)`, every default, an int position) is now straight code: the body takes
  `**options` (CPython fills each missing keyword-only default with a dict lookup) while
  `inspect`, `help()` and type checkers see the documented signature, and it reads no clock
  (the progress-age gauge now sees counters move, which also fixed `advance()` loops reading
  as stalled). What is left is the seed's contract:
  a fresh 5-key `meta` dict and the `(state, meta)` tuple per call, the position and percent
  arithmetic, and four stores into the run.
- **Worker ≥ 0.9x hand-written spans, ≥ 1.5x celery-progress** (row 6): 0.75x tasks/s and 0.76x CPU
  against hand-written spans, 1.20x and 1.16x celery-progress, in this run; 0.73x–0.82x and
  1.11x–1.23x over the day's runs.
  - **The two targets ask for the same thing.** In every run, celery-progress's task cost
    1.48x–1.56x the hand-written one in all-process CPU (its five `update_state` writes and the
    producer's five extra result messages against five spans). So 1.5x celery-progress means
    costing no more than the spans written by hand, while also building the payload, writing
    the final state under our key, the history row and the `queued` state at publish. On this
    benchmark it cannot be met by making otel_progress cheaper; it needs a restated target.
  - **Where otel_progress's extra CPU goes** (the row's per-process split, against the
    hand-written task): 0.7–1.4 ms in the worker, 0.3–0.5 ms in Redis, 0.4–0.6 ms in the
    producer over the day's runs (1.2, 0.47 and 0.57 ms in this one). With
    `instrument(history=False, track_queued=False)` (the reference rows) Redis and the producer
    come within ~0.1 ms of the hand-written task's, and the task reaches 0.86x–0.88x tasks/s
    and 0.87x–0.89x CPU (1.27x–1.39x celery-progress's tasks/s): the Redis and producer share
    is the history index and the `queued` write.
    The items below come from the row's per-process split and from one-off in-process
    measurements (cProfile and timeit scripts, not rows of this file):
    - producer: the `queued` write at publish is one synchronous round trip (DECISIONS 13: a
      page polling right after `delay()` gets 200 `queued`): `send_task` took ~1.2 ms of CPU
      with it against ~0.9 ms without; our own part of it (queued payload, history row, JSON)
      is ~0.1 ms, the rest is redis-py's round trip;
    - Redis: the two history scripts (~55 µs for the new row at publish, ~70 µs for the merge at
      the end, `INFO commandstats`; a `SET` is 2.4 µs here) and the extra command at publish;
    - worker: the payload build at the task end (~90–120 µs: section tree, 13 ISO timestamps,
      rate and ETA, seed log, JSON), the history row (~30 µs), the section duration histogram
      (one SDK `record()` per section, ~10 µs each, on the flusher thread), the run's creation
      and the run span's attributes. The five sections themselves cost within 1.3x of the
      hand-written spans (row 3).
  - **What would close the rest** is a decision for the people steering, not more trimming:
    history and `queued` tracking off by default (the reference rows), the `queued` write made
    asynchronous (a few ms of 404 right after `delay()`), or the section histogram left to the
    collector's `spanmetrics` (the section counter would stay exact). Each changes documented
    behaviour, so none is taken here.
- **1,000,000 advance() at ≥ 1 µs of work** (row 4): met in this run (1.03x); 1.03x–1.08x in
  three of the day's runs, and 1.24x in one noisy run (tqdm's 193 ns) with the same code.
"""


def write_report(path: Path, info: dict[str, str], rows: list[Row], extra: dict[str, Any],
                 baseline: dict[str, Any] | None, rounds: int) -> None:
    base = {r["key"]: r for r in (baseline or {}).get("rows", [])}
    lines = ["# otel_progress benchmarks", "",
             "Written by `benchmarks/run.py` (`make bench`). Every figure is a ratio to an anchor "
             "measured in the same process and run (the worker rows: the same run, one worker "
             f"per variant, interleaved), median of {rounds} interleaved rounds [min–max]. "
             "Absolute numbers, in the notes, are for context only: these 2-core machines are "
             "shared and drift by up to 2x.", "", "## Machine", ""]
    lines += [f"- **{k}**: {v}" for k, v in info.items()]
    lines += ["", "## Targets (issue 10)", ""]
    header = "| # | measurement | anchor | figure | target | met | notes |"
    if base:
        header = "| # | measurement | anchor | before | figure | target | met | notes |"
    lines += [header, "|" + "---|" * (header.count("|") - 1)]
    for r in rows:
        met = {True: "yes", False: "**no**", None: "—"}[r.met]
        cells = [r.target, r.what, r.anchor]
        if base:
            b = base.get(r.key)
            cells.append(Row(**b).figure() if b else "—")
        cells += [r.figure(), r.goal or "—", met, r.note]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", METRICS_DECISION, REMAINING]
    for title, body in extra.items():
        lines += [f"## {title}", "", body, ""]
    path.write_text("\n".join(lines).rstrip() + "\n")


README_ROWS: list[tuple[str, str]] = [
    ("advance", "`advance()` per item / tqdm's per-iteration overhead"),
    ("track", "`track()` per item / tqdm's per-iteration overhead"),
    ("observer_us", "`Observer.update()` with increment"),
    ("notify", "`notify()` / raw `span.add_event` with the same attributes"),
    ("section_sdk", "a section / raw `start_as_current_span` (SDK)"),
    ("section_api", "a section / no-op span (API only)"),
    ("section_configure", "a section / raw span, `configure()` with metrics"),
    ("wall", "1,000,000 `advance()` in a loop doing ≥ 1 µs of work / the bare loop"),
    ("writes", "backend writes / (duration ÷ min_interval + 3)"),
    ("tps_manual", "worker tasks/s / hand-written spans and events"),
    ("tps_cp", "worker tasks/s / celery-progress"),
]
README_START = "<!-- benchmarks:start (benchmarks/run.py --readme writes this table) -->"
README_END = "<!-- benchmarks:end -->"


def update_readme(rows: list[Row]) -> None:
    """Rewrite the README's Performance table from this run's rows."""
    readme = REPO / "README.md"
    text = readme.read_text()
    if README_START not in text or README_END not in text:
        return
    by_key = {r.key: r for r in rows}
    lines = [README_START, "",
             "| measured side by side, same process | median [min–max] | target |",
             "|---|---|---|"]
    for key, label in README_ROWS:
        r = by_key.get(key)
        if r is not None and r.median is not None:
            mark = "" if r.met is None else (" ✓" if r.met else " ✗")
            lines.append(f"| {label} | {r.figure()} | {r.goal}{mark} |")
    lines += ["", README_END]
    head, rest = text.split(README_START, 1)
    tail = rest.split(README_END, 1)[1]
    readme.write_text(head + "\n".join(lines) + tail)


def shares_table(shares: dict[str, float], limit: int = 12) -> str:
    items = list(shares.items())[:limit]
    rest = sum(v for _, v in list(shares.items())[limit:])
    out = ["| part | share |", "|---|---|"]
    out += [f"| {name} | {value * 100:.0f} % |" for name, value in items]
    if rest:
        out.append(f"| (rest) | {rest * 100:.0f} % |")
    return "\n".join(out)


# --- main ----------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scenario")
    parser.add_argument("--args", default="{}")
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--only", default="")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "RESULTS.md"))
    parser.add_argument("--baseline", default=str(REPO / "benchmarks" / "baseline.json"))
    parser.add_argument("--save-baseline")
    parser.add_argument("--batch", type=int, default=150, help="tasks per worker round")
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--history-rows", type=int, default=100_000,
                        help="rows in each history store for the list latency (issue 12)")
    parser.add_argument("--keep", help="keep logs and py-spy profiles in this directory")
    parser.add_argument("--readme", action="store_true", help="update README's Performance table")
    ns = parser.parse_args()
    if ns.scenario:
        result = SCENARIOS[ns.scenario](**json.loads(ns.args))
        print(RESULT + json.dumps(result), flush=True)
        return

    only = set(filter(None, ns.only.split(",")))

    def wanted(name: str) -> bool:
        return not only or name in only

    from tests.support.redis_server import RedisServer

    rows: list[Row] = []
    extra: dict[str, Any] = {}
    raw: dict[str, Any] = {}
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="otel-progress-bench-") as scratch, \
            RedisServer(Path(ns.keep or scratch) / "redis") as redis:
        tmp = ns.keep or scratch
        log_dir = Path(tmp)
        if wanted("micro"):
            micro = {}
            for kind in ("sdk", "api", "configure", "configure-nometrics", "configure-live"):
                print(f"micro: {kind} ...", flush=True)
                micro[kind] = child("micro", {"kind": kind, "rounds": ns.rounds})
            raw["micro"] = micro
            rows += micro_rows(micro)
        if wanted("updates"):
            print("updates: 1,000,000 advance() against a bare loop ...", flush=True)
            res = child("updates", {"rounds": ns.rounds, "redis_url": redis.url,
                                    "items": ns.items})
            raw["updates"] = res
            rows += updates_rows(res)
        if wanted("memory"):
            print("memory: 1,000,000 notifications and 10,000 sections ...", flush=True)
            res = child("memory", {"redis_url": redis.url})
            raw["memory"] = res
            rows += memory_rows(res)
        if wanted("worker"):
            print("worker: three prefork workers, interleaved rounds ...", flush=True)
            res = worker_benchmark(redis, ns.rounds, ns.batch, log_dir,
                                   profile_s=8 if wanted("profile") else 0)
            raw["worker"] = res
            rows += worker_rows(res)
            print("worker: task bodies in-process, CPU per task ...", flush=True)
            cost = child("taskcost", {"rounds": ns.rounds, "redis_url": redis.url})
            raw["taskcost"] = cost
            rows += taskcost_rows(cost)
            for variant, prof in res.get("profile", {}).items():
                ours = sum(v for k, v in prof["shares"].items() if k in OURS)
                own = ("" if variant != "otel_progress" else
                       " otel_progress's own parts (final write, flusher, run creation, "
                       "sections, notify, progress, task end, section metrics): "
                       f"**{ours * 100:.0f} %**. py-spy charges a thread that hands work to "
                       "another and waits (the final write) with part of the wait; the "
                       "in-process row of target 6 is the steadier split.")
                extra[f"Profile: a prefork child running `bench.{variant}` (py-spy, "
                      f"{prof['samples']:,} samples)"] = (
                    "Shares of the child's samples holding the GIL (`py-spy --gil`: all "
                    "threads, task, flusher, export), by what the stack was doing (first "
                    "matching category wins)." + own + "\n\n"
                    + shares_table(prof["shares"], 16))
        if wanted("history"):
            print(f"history: cost per task and list latency over {ns.history_rows:,} rows ...",
                  flush=True)
            res = child("history", {"rounds": ns.rounds, "redis_url": redis.url,
                                    "rows": ns.history_rows, "scratch": tmp})
            raw["history"] = res
            rows += history_rows(res)
        if wanted("export"):
            print("export: spans/s, a 50,000-section burst, overload ...", flush=True)
            res = child("export", {"rounds": ns.rounds, "sections": 50_000})
            over = child("overload", {"spans": 200_000})
            raw["export"], raw["overload"] = res, over
            rows += export_rows(res, over)
        if wanted("profile"):
            print("profile: py-spy on the hot paths ...", flush=True)
            prof = profile_hot_paths(4.0, log_dir)
            raw["profile"] = prof
            for what, p in prof.items():
                extra[f"Profile: `{what}` in a loop (py-spy, configure() on, "
                      f"{p['samples']:,} samples in the call)"] = (
                    "Where the call's time goes, by the module of the innermost frame"
                    + (" (a section loop outside Celery has no flusher: its queued metrics "
                       "are recorded inline every 1,024 sections, hence \"SDK metrics\")"
                       if what == "section" else "") + ":\n\n" + shares_table(p["self"]))
        if wanted("faults"):
            print("faults: task wall time while the trace backend is down ...", flush=True)
            res = child("faults", {"rounds": ns.rounds})
            raw["faults"] = res
            rows += faults_rows(res)
        if wanted("endpoint"):
            print("endpoint: GET /tasks/<id> under 50 clients ...", flush=True)
            res = child("endpoint", {"rounds": ns.rounds, "redis_url": redis.url})
            raw["endpoint"] = res
            rows += endpoint_rows(res)
    took = time.monotonic() - started
    info = machine()
    info["run took"] = f"{took / 60:.1f} min"
    baseline = None
    if Path(ns.baseline).exists() and not ns.save_baseline:
        baseline = json.loads(Path(ns.baseline).read_text())
        info["before"] = f"`{Path(ns.baseline).name}`: {baseline.get('commit', '?')}"
    if ns.save_baseline:
        Path(ns.save_baseline).write_text(json.dumps(
            {"commit": info["commit"], "rows": [asdict(r) for r in rows]}, indent=1) + "\n")
    write_report(Path(ns.out), info, rows, extra, baseline, ns.rounds)
    if ns.readme:
        update_readme(rows)
    (Path(ns.out).with_suffix(".json")).write_text(json.dumps(raw, indent=1, default=str) + "\n")
    print(f"wrote {ns.out} in {took:.0f} s", flush=True)


if __name__ == "__main__":
    main()
