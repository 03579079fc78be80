"""Prometheus metrics and the health endpoints (``/metrics``, ``/healthz``, ``/readyz``).

Metric names are an interface: the Grafana dashboard and the alert rules under ``deploy/``
query them, and a test checks every name used there exists in a live ``/metrics`` page.
Each daemon owns a private :class:`CollectorRegistry` so that several daemons (tests,
benchmarks) can run in one process without clashing.
"""

from __future__ import annotations

import collections
import gc
import json
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
GC_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5)


class Metrics:
    """All metrics of one daemon, registered in its own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        # Two clocks, two questions (docs/wire-format.md, "Latency"): window_latency is the daemon's
        # own delay and holds for every kind of producer; e2e compares the producer's ts with the
        # daemon's wall clock, which only means "behind live" when ts runs at real time.
        self.window_latency = Histogram(
            "streamgenre_window_latency_seconds",
            "The daemon's delay: the window's last chunk received (daemon clock) to its prediction published. "
            "Includes queueing behind other chunks, so a fast upload backlog shows here.",
            buckets=LATENCY_BUCKETS, registry=r)
        self.e2e_latency = Histogram(
            "streamgenre_e2e_latency_seconds",
            "Behind live: producer ts (stream clock) of the chunk that completed the window to its prediction "
            "published (daemon wall clock). Meaningful for streams paced in real time; an upload sent faster "
            "than real time has ts ahead of the wall clock and is observed as 0.",
            buckets=LATENCY_BUCKETS, registry=r)
        self.inference_seconds = Histogram(
            "streamgenre_inference_seconds", "onnxruntime time per micro-batch.", buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram(
            "streamgenre_batch_size", "Windows per inference micro-batch.", buckets=BATCH_BUCKETS, registry=r)
        self.chunks = Counter("streamgenre_chunks", "Audio chunks consumed.", registry=r)
        self.bytes = Counter("streamgenre_bytes", "Audio payload bytes consumed.", registry=r)
        self.windows = Counter("streamgenre_windows", "Windows classified and published.", registry=r)
        self.predictions_by_genre = Counter(
            "streamgenre_predictions", "Published windows by (raw) predicted genre.", ["genre"], registry=r)
        self.genre_changes = Counter("streamgenre_genre_changes", "Genre-change events emitted.", registry=r)
        self.decode_errors = Counter(
            "streamgenre_decode_errors", "Input messages that could not be decoded, by reason.", ["reason"], registry=r)
        self.dlq_messages = Counter(
            "streamgenre_dlq_messages", "Messages written to the dead-letter topic, by reason.", ["reason"], registry=r)
        self.short_streams = Counter(
            "streamgenre_short_streams",
            "Ended streams (eos) that completed no window on the grid and got one window of their own audio.",
            registry=r)
        self.seq_gaps = Counter("streamgenre_seq_gaps", "Per-stream seq gaps (window reset).", registry=r)
        self.window_resets = Counter(
            "streamgenre_window_resets", "Stream windows reset, by reason (seq_gap, time_jump, format).",
            ["reason"], registry=r)
        self.redis_errors = Counter("streamgenre_redis_errors", "Redis pipeline writes that failed.", registry=r)
        self.redis_skipped = Counter(
            "streamgenre_redis_skipped_windows", "Windows not written to Redis because it was down.", registry=r)
        self.active_streams = Gauge("streamgenre_active_streams", "Streams with open state.", registry=r)
        self.consumer_lag = Gauge(
            "streamgenre_consumer_lag", "Records behind the fetch high-water mark, per partition.",
            ["topic", "partition"], registry=r)
        self.queue_depth = Gauge("streamgenre_queue_depth", "Chunks waiting for the worker.", registry=r)
        self.assigned_partitions = Gauge(
            "streamgenre_assigned_partitions", "Input partitions this worker owns in the group.", registry=r)
        self.paused_partitions = Gauge(
            "streamgenre_paused_partitions", "Partitions paused by backpressure.", registry=r)
        self.ready = Gauge(
            "streamgenre_ready", "1 when the model is loaded and the broker reachable.", registry=r)
        self.redis_up = Gauge("streamgenre_redis_up", "1 when the last Redis write succeeded.", registry=r)
        self.model_info = Gauge("streamgenre_model_info", "Loaded model (value 1).", ["version"], registry=r)
        self.content_windows = Counter(
            "streamgenre_content_windows", "Published windows by content state.", ["state"], registry=r)
        self.content_model_loaded = Gauge(
            "streamgenre_content_model_loaded", "1 when the speech/music model is in use (0: level only).", registry=r)
        self.segments = Counter(
            "streamgenre_segments", "Closed segments published, by state.", ["state"], registry=r)
        self.alerts = Counter(
            "streamgenre_alerts", "Alerts published on the alerts topic, by kind "
            "(dead_air_start, dead_air_end, stream_down, stream_up).", ["kind"], registry=r)
        self.dead_air_streams = Gauge(
            "streamgenre_dead_air_streams", "Streams silent for at least dead_air_s right now.", registry=r)
        self.streams_down = Gauge(
            "streamgenre_streams_down", "Open streams without audio for at least stream_down_s.", registry=r)
        self.gc_pause = Histogram(
            "streamgenre_gc_pause_seconds", "Garbage-collector pauses of this process, by generation.",
            ["generation"], buckets=GC_BUCKETS, registry=r)
        r.register(ThreadCpu())

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def thread_cpu_seconds(native_id: int) -> float | None:
    """User + system CPU-seconds of one thread of this process (Linux ``/proc``; None elsewhere)."""
    try:
        stat = Path(f"/proc/self/task/{native_id}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # after the command name, which may hold spaces
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


#: Thread names that carry a client or group id, by the role they play (stable label values).
_THREAD_ROLES = ((re.compile(r"^kafka-io-"), "kafka-consumer-io"), (re.compile(r"-network-thread$"), "kafka-producer"))
#: ``Thread-<n> (<target>)``: Python's name for an unnamed thread, numbered anew for each one (the
#: metrics server starts one per request), so only the target may become a label value.
_UNNAMED = re.compile(r"^Thread-\d+(?: \((?P<target>.+)\))?$")


def thread_role(name: str) -> str:
    """The label of a thread: kafka-python's lose their client id, unnamed ones their number."""
    role = next((role for pattern, role in _THREAD_ROLES if pattern.search(name)), None)
    if role is not None:
        return role
    unnamed = _UNNAMED.match(name)
    return name if unnamed is None else unnamed["target"] or "unnamed"


class ThreadCpu:
    """``streamgenre_thread_cpu_seconds_total{thread}``: which thread a busy daemon spends its CPU on.

    The process CPU says how busy a worker is, not why: on a saturated core the worker thread
    (decode, features, inference, outputs) competes with kafka-python's network threads and the
    poll loop (``MainThread`` in ``streamgenre run``), and the split decides what to optimise
    (``docs/PERFORMANCE.md``). Read from ``/proc`` at scrape time; empty where there is none.
    """

    def collect(self) -> list[CounterMetricFamily]:
        family = CounterMetricFamily("streamgenre_thread_cpu_seconds",
                                     "CPU-seconds (user + system) of this process's threads, by thread.",
                                     labels=["thread"])
        by_role: dict[str, float] = collections.defaultdict(float)
        for thread in threading.enumerate():
            seconds = thread_cpu_seconds(thread.native_id) if thread.native_id is not None else None
            if seconds is not None:
                by_role[thread_role(thread.name)] += seconds
        for role, seconds in sorted(by_role.items()):
            family.add_metric([role], seconds)
        return [family]


class GcPauses:
    """Times every garbage collection of this process into ``streamgenre_gc_pause_seconds``.

    A collection stops every thread of the worker, so a long one delays each window in flight
    (full collections of 75-130 ms were the p99's outliers before the daemon froze its start-up
    objects). The callback runs inside the collector, on whichever thread triggered it and
    possibly while that thread holds a metric's lock, so it only appends to a deque (atomic
    under the GIL); :meth:`flush`, called from the poll thread, feeds the histogram.
    """

    def __init__(self, histogram: Histogram) -> None:
        self._by_generation = {generation: histogram.labels(str(generation)) for generation in range(3)}
        self._pauses: collections.deque[tuple[int, float]] = collections.deque(maxlen=100_000)
        self._started = 0.0
        gc.callbacks.append(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self._pauses.append((info["generation"], time.perf_counter() - self._started))

    def flush(self) -> None:
        while self._pauses:
            generation, seconds = self._pauses.popleft()
            self._by_generation[generation].observe(seconds)

    def close(self) -> None:
        self.flush()
        gc.callbacks.remove(self._on_gc)


@dataclass
class Health:
    """What ``/readyz`` reports; the daemon updates it, the HTTP thread only reads it."""

    model_loaded: bool = False
    broker_ok: bool = False
    redis_ok: bool = False

    @property
    def ready(self) -> bool:
        # Redis is a cache of the Kafka output: losing it degrades, it does not stop the service.
        return self.model_loaded and self.broker_ok

    def body(self) -> dict[str, object]:
        return {
            "ready": self.ready,
            "degraded": self.ready and not self.redis_ok,
            "model_loaded": self.model_loaded,
            "broker": "ok" if self.broker_ok else "unreachable",
            "redis": "ok" if self.redis_ok else "down",
        }


class Exposes(Protocol):
    def exposition(self) -> bytes: ...


class HealthReport(Protocol):
    @property
    def ready(self) -> bool: ...

    def body(self) -> dict[str, object]: ...


def serve_http(metrics: Exposes, health: Callable[[], HealthReport], host: str, port: int) -> ThreadingHTTPServer:
    """Start the metrics/health server in a daemon thread; returns it so the caller can stop it.

    Shared by the daemon (:class:`Metrics`, :class:`Health`) and the radio relay.
    """

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, metrics.exposition(), CONTENT_TYPE_LATEST)
            elif path == "/healthz":
                self._send(200, b'{"alive": true}', "application/json")
            elif path == "/readyz":
                state = health()
                self._send(200 if state.ready else 503, json.dumps(state.body()).encode(), "application/json")
            else:
                self._send(404, b"not found\n", "text/plain")

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            """Scrapes every few seconds would drown the daemon's own log."""

    server = ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    return server
