"""Memory at scale: the daemon's RSS per stream with thousands of streams tracked, most idle, some active.

The real-time runs stop at a few hundred streams (the box's CPU), but a deployment's daemon
tracks every stream it has seen until the stream is evicted: its memory is set by how many
streams it holds, not by how many send right now. Here a backlog gives ``streams`` streams one
full window each plus a hop (so each holds its steady-state buffers and smoothing state), the
daemons drain it, and then ``active`` of them send in real time for a few seconds: RSS is
sampled throughout, and its growth over the daemons' RSS before the first chunk, divided by
the streams held, is the cost of one stream.
"""

from __future__ import annotations

import math
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from streamgenre.bench.daemons import (
    E2EConfig,
    clean_redis,
    output_consumer,
    redis_answers,
    run_settings,
    running_daemons,
    wait_group_ready,
)
from streamgenre.bench.procfs import rss_bytes
from streamgenre.bench.producer import start_producer

ACTIVE_S = 6.0  # seconds the active streams send in real time after the backlog has drained


def measure_memory(model_path: Path, cfg: E2EConfig, active: int, verbose: bool = True) -> dict[str, Any]:
    """RSS of ``cfg.workers`` daemons holding ``cfg.streams`` streams, ``active`` of them sending live."""
    from streamgenre.apps.devbroker import DevBroker
    from streamgenre.model.contract import load_spec

    spec = load_spec(model_path)
    hop_s = spec.hop_frames * spec.recipe.hop_length / spec.recipe.sample_rate
    # One full window and one hop per stream: the buffers reach their steady size.
    seconds = cfg.chunk_s * math.ceil((spec.window_s + hop_s) / cfg.chunk_s)
    run, tmp, redis_ok = uuid.uuid4().hex[:8], Path(tempfile.mkdtemp(prefix="sgbench-")), redis_answers(cfg)
    result: dict[str, Any] = {"streams": cfg.streams, "active": active, "audio_s_per_stream": seconds,
                              "workers": cfg.workers}
    with DevBroker(log_path=tmp / "tansu.log") as broker:
        settings = run_settings(broker.bootstrap, run, model_path, cfg.partitions)
        with running_daemons(settings, cfg, run, tmp, redis_ok) as (daemons, base_port):
            consumer = output_consumer(settings, cfg.partitions)
            wait_group_ready(daemons, tmp, base_port, cfg.partitions)
            idle_rss = sum(rss_bytes(d.pid) for d in daemons)
            started = time.time()
            producer, _ = start_producer(broker.bootstrap, settings.input_topic, cfg.streams, seconds, cfg.chunk_s,
                                         started - seconds - 1.0)
            # Every stream completes at least one window: wait until that many came out.
            expected, received, peak = cfg.streams, 0, idle_rss
            deadline = started + 120 + cfg.streams * seconds / 100
            while time.time() < deadline and (received < expected or producer.is_alive()):
                received += sum(len(b) for b in consumer.poll(timeout_ms=500, max_records=20000).values())
                peak = max(peak, sum(rss_bytes(d.pid) for d in daemons))
            producer.join(30)
            drained_rss = sum(rss_bytes(d.pid) for d in daemons)
            result.update(drain_s=round(time.time() - started, 1), windows=received)
            live, _ = start_producer(broker.bootstrap, settings.input_topic, active, ACTIVE_S, cfg.chunk_s,
                                     time.time() + 0.5)
            while live.is_alive():
                consumer.poll(timeout_ms=500, max_records=20000)
                peak = max(peak, sum(rss_bytes(d.pid) for d in daemons))
            active_rss = sum(rss_bytes(d.pid) for d in daemons)
            consumer.close()
    clean_redis(cfg, run, redis_ok)
    result.update(
        rss_before_mb=round(idle_rss / 2**20, 1),
        rss_held_mb=round(drained_rss / 2**20, 1),
        rss_with_active_mb=round(active_rss / 2**20, 1),
        rss_peak_mb=round(peak / 2**20, 1),
        # Per stream held, at rest and with the live streams sending (what a deployment sizes for).
        rss_bytes_per_stream=round((max(drained_rss, active_rss) - idle_rss) / cfg.streams),
        rss_peak_bytes_per_stream=round((peak - idle_rss) / cfg.streams),
    )
    if verbose:
        print(f"  memory: {result}", flush=True)
    return result
