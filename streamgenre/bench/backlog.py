"""The daemons' own capacity (draining a pre-produced backlog) and the transport floor (moving chunks only)."""

from __future__ import annotations

import itertools
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from streamgenre.bench.daemons import (
    E2EConfig,
    clean_redis,
    expected_windows,
    output_consumer,
    redis_answers,
    run_settings,
    running_daemons,
)
from streamgenre.bench.procfs import cpu_seconds, rss_bytes
from streamgenre.bench.producer import start_producer
from streamgenre.config import SHIPPED_MODEL


def measure_backlog(model_path: Path, cfg: E2EConfig, verbose: bool = True) -> dict[str, Any]:
    """The daemons' own capacity: how fast ``cfg.workers`` processes drain a backlog.

    The real-time run shares the 2 cores with the producer and the broker (tansu alone took ~0.7
    of a core at 500 streams), so it measures the *box*. Here the producer writes
    ``cfg.streams`` x ``cfg.seconds`` of audio first and stops; then the daemons start and
    consume it as fast as they can, with only the broker's fetch and output work beside them.
    The drain rate over the middle 80% of the windows (after the group has settled, before
    the tail) is the audio-seconds per second, i.e. real-time streams, the daemons sustain.
    """

    from streamgenre.apps.devbroker import DevBroker
    from streamgenre.model.contract import load_spec

    spec = load_spec(model_path)
    hop_s = spec.hop_seconds
    run, tmp, redis_ok = uuid.uuid4().hex[:8], Path(tempfile.mkdtemp(prefix="sgbench-")), redis_answers(cfg)
    with DevBroker(log_path=tmp / "tansu.log") as broker:
        settings = run_settings(broker.bootstrap, run, model_path, cfg.partitions)
        # Due times in the past: every chunk is sent at once, stamped as if captured live.
        producer, report = start_producer(
            broker.bootstrap, settings.input_topic, cfg.streams, cfg.seconds, cfg.chunk_s,
            time.time() - cfg.seconds - 1.0,
        )
        producer.join(600)
        sent = report.get(timeout=10)["sent"] if not report.empty() else 0
        expected = expected_windows(E2EConfig(**{**cfg.__dict__, "warmup_s": 0.0}), hop_s, spec)
        with running_daemons(settings, cfg, run, tmp, redis_ok) as (daemons, _):
            consumer = output_consumer(settings, cfg.partitions)
            received = 0
            sent_at_ms: list[int] = []  # output record timestamps: when the daemons sent each window
            cpu_samples = [(time.time(), sum(cpu_seconds(d.pid) for d in daemons))]  # (wall, daemon CPU-s)
            deadline = time.time() + 120 + cfg.streams * cfg.seconds / 200
            while time.time() < deadline and received < expected:
                for batch in consumer.poll(timeout_ms=100, max_records=5000).values():
                    received += len(batch)
                    sent_at_ms.extend(m.timestamp for m in batch)
                cpu_samples.append((time.time(), sum(cpu_seconds(d.pid) for d in daemons)))
            rss = sum(rss_bytes(d.pid) for d in daemons)
            consumer.close()
    clean_redis(cfg, run, redis_ok)
    result: dict[str, Any] = {
        "streams": cfg.streams, "seconds": cfg.seconds, "workers": cfg.workers, "chunk_s": cfg.chunk_s,
        "sent_chunks": sent, "expected_windows": expected, "received_windows": received,
        "rss_mb": round(rss / 2**20, 1),
    }
    # The rate from the windows' own send times: exact whatever this consumer's poll granularity.
    sent_at_ms.sort()
    first, last = int(0.1 * expected), int(0.9 * expected) - 1
    if last < len(sent_at_ms) and sent_at_ms[last] > sent_at_ms[first]:
        t_first, t_last = sent_at_ms[first] / 1000, sent_at_ms[last] / 1000
        audio_s = (last - first) * hop_s
        result["audio_s_per_s"] = round(audio_s / (t_last - t_first), 1)
        # CPU over the same span, from the samples that bracket it (one per poll of the output).
        # A short drain (the CI smoke) may fall between two samples: the bracket then also holds
        # a little idle time, which costs a daemon next to nothing.
        before = max((c for c in cpu_samples if c[0] <= t_first), default=cpu_samples[0])
        after = min((c for c in cpu_samples if c[0] >= t_last), default=cpu_samples[-1])
        if after[1] > before[1]:
            result["daemon_cpu_s_per_s"] = round((after[1] - before[1]) / (after[0] - before[0]), 2)
            result["audio_s_per_daemon_cpu_s"] = round(audio_s / (after[1] - before[1]), 1)
    if verbose:
        print(f"  backlog: {result}", flush=True)
    return result


def measure_transport(
    cfg: E2EConfig, verbose: bool = True, storage: str = "memory://tansu/", broker_env: dict[str, str] | None = None
) -> dict[str, Any]:
    """The floor under the end-to-end run: what moving the chunks alone costs on this box.

    The same real-time producer and broker as :func:`measure_e2e`, read by the daemon's own
    :class:`~streamgenre.stream.source.ChunkSource` in this process, which drops every record. What
    the broker, the producer and the source cost here is spent before any audio is decoded;
    on a 2-core box it bounds how many streams are left for the pipeline. The broker's CPU for
    every second from the producer's start shows whether its cost is steady (``storage`` and
    ``broker_env`` choose tansu's engine, e.g. ``s3://`` on a local S3).
    """
    from streamgenre.apps.devbroker import DevBroker
    from streamgenre.stream.source import ChunkSource

    run, tmp = uuid.uuid4().hex[:8], Path(tempfile.mkdtemp(prefix="sgbench-"))
    with DevBroker(storage=storage, env=broker_env, log_path=tmp / "tansu.log") as broker:
        settings = run_settings(broker.bootstrap, run, SHIPPED_MODEL, cfg.partitions)
        source = ChunkSource(settings, on_revoked=lambda _: None, on_assigned=lambda _: None)
        deadline = time.monotonic() + 60
        while len(source.assigned()) < cfg.partitions and time.monotonic() < deadline:
            source.poll(timeout_ms=100)
        start_at = time.time() + 1.0
        producer, _ = start_producer(
            broker.bootstrap, settings.input_topic, cfg.streams, cfg.warmup_s + cfg.seconds, cfg.chunk_s, start_at
        )
        measure_from, measure_to = start_at + cfg.warmup_s, start_at + cfg.warmup_s + cfg.seconds
        records, marks = 0, {}
        broker_samples = [(time.time(), cpu_seconds(broker.process.pid))]
        while time.time() < measure_to:
            polled = len(source.poll(timeout_ms=100))
            now = time.time()
            if now >= broker_samples[-1][0] + 1.0:
                broker_samples.append((now, cpu_seconds(broker.process.pid)))
            if now >= measure_from:
                if not marks:
                    marks = {"source": time.process_time(), "broker": cpu_seconds(broker.process.pid),
                             "producer": cpu_seconds(producer.pid), "wall": now}
                else:
                    records += polled
        span = time.time() - marks["wall"]
        result = {
            "streams": cfg.streams,
            "chunk_s": cfg.chunk_s,
            "records_per_s": round(records / span, 1),
            "source_cpu_s_per_s": round((time.process_time() - marks["source"]) / span, 3),
            "broker_cpu_s_per_s": round((cpu_seconds(broker.process.pid) - marks["broker"]) / span, 3),
            "producer_cpu_s_per_s": round((cpu_seconds(producer.pid) - marks["producer"]) / span, 3),
            "storage": storage.split(":", 1)[0],
            "partitions": cfg.partitions,
            "broker_cpu_s_per_s_by_second": [
                round((c1 - c0) / (t1 - t0), 3) for (t0, c0), (t1, c1) in itertools.pairwise(broker_samples)
            ],
        }
        producer.join(30)
        source.close()
    if verbose:
        print(f"  transport: {result}", flush=True)
    return result
