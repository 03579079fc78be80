"""The end-to-end run: broker, real-time producer, daemon processes, and a consumer of what they publish."""

from __future__ import annotations

import itertools
import json
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from streamgenre.bench.daemons import (
    E2EConfig,
    clean_redis,
    expected_windows,
    output_consumer,
    redis_answers,
    run_settings,
    running_daemons,
    thread_cpu,
    wait_group_ready,
)
from streamgenre.bench.layout import affinity
from streamgenre.bench.procfs import cpu_seconds, rss_bytes
from streamgenre.bench.producer import start_producer


def latency_by_second(recv_and_latency: list[tuple[float, float]], start: float) -> list[dict[str, Any]]:
    """window → publish per second of the measured span (by arrival at the output consumer).

    One p99 over the whole span cannot tell a steady tail from an episode in which the daemons
    fell behind for a few seconds and then drained slowly on a saturated box; this can.
    """
    bins: dict[int, list[float]] = {}
    for recv, latency in recv_and_latency:
        bins.setdefault(int(recv - start), []).append(latency)
    return [{"s": second, "windows": len(v), **percentiles(v)} for second, v in sorted(bins.items())]


def percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p99": None, "max": None}
    a = np.asarray(values)
    return {
        "p50": round(float(np.percentile(a, 50)), 1),
        "p99": round(float(np.percentile(a, 99)), 1),
        "max": round(float(a.max()), 1),
    }


def measure_e2e(model_path: Path, cfg: E2EConfig, verbose: bool = True) -> dict[str, Any]:
    """Broker + ``cfg.workers`` daemon processes + real-time producer + output consumer."""

    from streamgenre.apps.devbroker import DevBroker
    from streamgenre.model.contract import load_spec

    spec = load_spec(model_path)
    hop_s = spec.hop_seconds
    run, tmp, redis_ok = uuid.uuid4().hex[:8], Path(tempfile.mkdtemp(prefix="sgbench-")), redis_answers(cfg)
    with DevBroker(log_path=tmp / "tansu.log") as broker:
        settings = run_settings(broker.bootstrap, run, model_path, cfg.partitions)
        with running_daemons(settings, cfg, run, tmp, redis_ok) as (daemons, base_port):
            consumer = output_consumer(settings, cfg.partitions)
            wait_group_ready(daemons, tmp, base_port, cfg.partitions)
            idle_rss = sum(rss_bytes(d.pid) for d in daemons)
            start_at = time.time() + 1.0
            duration = cfg.warmup_s + cfg.seconds
            producer, report = start_producer(
                broker.bootstrap, settings.input_topic, cfg.streams, duration, cfg.chunk_s, start_at
            )
            cpu0 = sum(cpu_seconds(d.pid) for d in daemons)
            received: list[tuple[float, int, float, int, int]] = []  # recv wall, ts, latency_ms, rec ts, seq
            stream_ids: list[str] = []
            deadline = start_at + duration + 15.0
            rss_peak = 0
            measure_from, measure_to = start_at + cfg.warmup_s, start_at + duration
            cpu_mark: dict[str, float] = {}
            threads: dict[str, dict[str, float]] = {}  # mark -> the daemons' CPU-s so far by thread
            placed: dict[str, Any] = {}

            def box_cpu() -> tuple[float, float, float]:
                """CPU-seconds so far of the daemons and of what shares the box with them: the broker
                and the simulated producers."""
                return (sum(cpu_seconds(d.pid) for d in daemons),
                        cpu_seconds(broker.process.pid) if broker.process else 0.0,
                        cpu_seconds(producer.pid) if producer.pid else 0.0)

            # Once a second: (wall, *box_cpu()). tansu's cost is not constant within a run
            # (docs/PERFORMANCE.md), so the split over time matters.
            cpu_samples: list[tuple[float, float, float, float]] = []
            next_rss_sample = 0.0
            expected_total = expected_windows(cfg, hop_s, spec)
            while time.time() < deadline:
                for batch in consumer.poll(timeout_ms=100, max_records=5000).values():
                    now = time.time()
                    for m in batch:
                        p = json.loads(m.value)
                        received.append((now, p["ts"], p["latency_ms"], m.timestamp, p["window_seq"]))
                        stream_ids.append(p["stream_id"])
                now = time.time()
                for mark, at in (("start", measure_from), ("end", measure_to)):
                    if mark not in cpu_mark and now >= at:
                        cpu_mark[mark], cpu_mark[f"broker_{mark}"], cpu_mark[f"producer_{mark}"] = box_cpu()
                        cpu_mark[f"harness_{mark}"] = time.process_time()  # this process: the output consumer
                        threads[mark] = thread_cpu(base_port, len(daemons))
                        if mark == "start":
                            # Read back, not assumed: the result file says where each part really ran.
                            placed = {"daemons": [affinity(d.pid) for d in daemons], "bench": affinity(0),
                                      "broker": affinity(broker.process.pid) if broker.process else None,
                                      "producer": affinity(producer.pid) if producer.pid else None}
                        rss_peak = max(rss_peak, sum(rss_bytes(d.pid) for d in daemons))
                if now > measure_to + 2.0 and not producer.is_alive() and len(received) >= expected_total:
                    break
                if now < measure_to and now >= next_rss_sample:
                    rss_peak = max(rss_peak, sum(rss_bytes(d.pid) for d in daemons))
                    cpu_samples.append((now, *box_cpu()))
                    next_rss_sample = now + 1.0
            producer.join(30)
            prod = (
                report.get(timeout=10)
                if not report.empty()
                else {"sent": 0, "late_max_s": None, "offsets_ms": [], "chunk_ms": 1000 * cfg.chunk_s}
            )
            cpu1 = sum(cpu_seconds(d.pid) for d in daemons)
            consumer.close()
    clean_redis(cfg, run, redis_ok)
    summary = e2e_summary(
        cfg,
        hop_s,
        received,
        stream_ids,
        prod,
        idle_rss,
        rss_peak,
        cpu_mark,
        cpu1 - cpu0,
        measure_from,
        measure_to,
        redis_ok,
    )
    summary["cpu_s_per_s_by_second"] = cpu_by_second(cpu_samples, measure_from)
    # Where the daemons' CPU went, by thread (worker, kafka-python's network threads, poll loop).
    start, end = threads.get("start", {}), threads.get("end", {})
    summary["daemon_thread_cpu_s_per_s"] = {
        role: round((end[role] - start.get(role, 0.0)) / cfg.seconds, 3) for role in sorted(end)
    }
    summary["affinity"] = placed
    return summary


def cpu_by_second(samples: list[tuple[float, float, float, float]], start: float) -> list[dict[str, float]]:
    """Daemons', broker's and producer's CPU-s per s between consecutive samples, from ``start`` on."""
    rows = []
    for (t0, *cpu0), (t1, *cpu1) in itertools.pairwise(samples):
        if t0 >= start:
            rates = [round((b - a) / (t1 - t0), 2) for a, b in zip(cpu0, cpu1, strict=True)]
            rows.append({"s": round(t0 - start, 1), **dict(zip(("daemons", "broker", "producer"), rates, strict=True))})
    return rows


def e2e_summary(
    cfg: E2EConfig,
    hop_s: float,
    received: list,
    stream_ids: list[str],
    prod: dict,
    idle_rss: int,
    rss_peak: int,
    cpu_mark: dict,
    cpu_total: float,
    measure_from: float,
    measure_to: float,
    redis_ok: bool,
) -> dict[str, Any]:
    chunk_ms = prod.get("chunk_ms", 1000 * cfg.chunk_s)
    offsets = prod.get("offsets_ms", [])
    epoch0 = prod.get("epoch0_ms", 0)
    recv_and_latency: list[tuple[float, float]] = []
    chunk_lat: list[float] = []
    in_window = 0
    for (recv, ts_end, latency_ms, rec_ts, _seq), sid in zip(received, stream_ids, strict=True):
        if not measure_from <= recv <= measure_to + 2.0:
            continue
        in_window += 1 if recv <= measure_to else 0
        recv_and_latency.append((recv, latency_ms))
        if offsets:
            i = int(sid.rsplit("-", 1)[1])
            base = epoch0 + offsets[i]
            # The chunk holding the window's last sample (sample ts_end - 1 ms).
            k = int((ts_end - 1 - base) // chunk_ms)
            chunk_ts = base + round(k * chunk_ms)
            chunk_lat.append(rec_ts - chunk_ts)
    span = measure_to - measure_from
    offered = cfg.streams  # audio-seconds per wall-second offered by the producer
    processed = in_window * hop_s / span
    w = percentiles([latency for _, latency in recv_and_latency])
    c = percentiles(chunk_lat)
    cpu_span = cpu_mark.get("end", 0) - cpu_mark.get("start", 0)
    # Real time: the daemon keeps up (≥ 95% of offered audio within the span) and does not
    # build a backlog (chunk → published stays within a couple of chunk lengths + 1 s).
    keeps_up = processed >= 0.95 * offered and (c["p99"] or 1e9) <= 2 * chunk_ms + 1000
    return {
        "streams": cfg.streams,
        "workers": cfg.workers,
        "chunk_s": cfg.chunk_s,
        "seconds": cfg.seconds,
        "redis": redis_ok,
        "max_batch": cfg.max_batch,
        "max_wait_ms": cfg.max_wait_ms,
        "offered_audio_s_per_s": offered,
        "audio_s_per_s": round(processed, 1),
        "windows": in_window,
        "window_to_publish_ms": w,
        "window_to_publish_ms_by_second": latency_by_second(recv_and_latency, measure_from),
        "chunk_ts_to_publish_ms": c,
        "daemon_cpu_s_per_s": round(cpu_span / span, 2) if cpu_span else None,
        "broker_cpu_s_per_s": round((cpu_mark.get("broker_end", 0) - cpu_mark.get("broker_start", 0)) / span, 2),
        "producer_cpu_s_per_s": round(
            (cpu_mark.get("producer_end", 0) - cpu_mark.get("producer_start", 0)) / span, 2
        ),
        "harness_cpu_s_per_s": round((cpu_mark.get("harness_end", 0) - cpu_mark.get("harness_start", 0)) / span, 2),
        # Robust to a shared machine: audio processed per CPU-second the daemon processes used.
        "audio_s_per_daemon_cpu_s": round(processed * span / cpu_span, 1) if cpu_span else None,
        "daemon_cpu_s_total": round(cpu_total, 1),
        "rss_idle_mb": round(idle_rss / 2**20, 1),
        "rss_peak_mb": round(rss_peak / 2**20, 1),
        "rss_bytes_per_stream": round((rss_peak - idle_rss) / max(1, cfg.streams)),
        "producer_sent": prod.get("sent"),
        "producer_late_max_s": prod.get("late_max_s"),
        "real_time": bool(keeps_up),
        "p99_window_ok": (w["p99"] or 1e9) <= 100.0,
    }
