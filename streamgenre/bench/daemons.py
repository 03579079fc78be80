"""What every broker run shares: its settings and topics, the daemon processes, the output consumer, Redis."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streamgenre.bench.audio import INPUT_RATE
from streamgenre.config import DEFAULT_CHUNK_S, Settings


@dataclass
class E2EConfig:
    streams: int
    seconds: float
    chunk_s: float = DEFAULT_CHUNK_S
    workers: int = 2
    warmup_s: float = 8.0
    partitions: int = 8
    max_batch: int = Settings.model_fields["max_batch"].default
    max_wait_ms: float = Settings.model_fields["max_wait_ms"].default
    redis_url: str = "redis://127.0.0.1:6379/0"
    #: CPUs the daemon processes are pinned to (layout ``pinned``); empty: wherever the OS puts them.
    daemon_cpus: tuple[int, ...] = ()


def redis_answers(cfg: E2EConfig) -> bool:
    import redis

    with contextlib.suppress(Exception):
        return bool(redis.Redis.from_url(cfg.redis_url, socket_timeout=1).ping())
    return False


def run_settings(bootstrap: str, run: str, model_path: Path, partitions: int) -> Settings:
    """Settings with topics and a group of this run's own, the topics created on the broker."""
    from streamgenre.apps.devbroker import ensure_topics

    settings = Settings(
        bootstrap_servers=bootstrap, group_id=f"bench-{run}", input_topic=f"bench-in-{run}",
        output_topic=f"bench-out-{run}", events_topic=f"bench-ev-{run}", dlq_topic=f"bench-dlq-{run}",
        model_path=model_path,
    )
    ensure_topics(settings, partitions=partitions)
    return settings


def output_consumer(settings: Settings, partitions: int) -> Any:
    """A consumer of the whole output topic from its start (no group: nothing to rebalance).

    Latencies come from the messages themselves, not from when this consumer reads them, so it
    fetches at the daemon's pace (100 ms): it shares the cores with what it measures.
    """
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers, enable_auto_commit=False, fetch_max_wait_ms=100
    )
    parts = [TopicPartition(settings.output_topic, p) for p in range(partitions)]
    consumer.assign(parts)
    consumer.seek_to_beginning(*parts)
    return consumer


def start_daemons(
    settings: Settings, cfg: E2EConfig, run: str, tmp: Path, redis_ok: bool
) -> tuple[list[subprocess.Popen], int]:
    """``cfg.workers`` ``streamgenre run`` processes in one group; returns them and the first metrics port."""
    from streamgenre.apps.devbroker import free_port

    base_port = free_port()
    env = {
        **os.environ,
        "STREAMGENRE_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
        "STREAMGENRE_GROUP_ID": settings.group_id,
        "STREAMGENRE_INPUT_TOPIC": settings.input_topic,
        "STREAMGENRE_OUTPUT_TOPIC": settings.output_topic,
        "STREAMGENRE_EVENTS_TOPIC": settings.events_topic,
        "STREAMGENRE_DLQ_TOPIC": settings.dlq_topic,
        "STREAMGENRE_MODEL_PATH": str(settings.model_path),
        "STREAMGENRE_REDIS_URL": cfg.redis_url if redis_ok else "redis://127.0.0.1:1/0",
        "STREAMGENRE_REDIS_PREFIX": f"sgbench-{run}",
        "STREAMGENRE_METRICS_HOST": "127.0.0.1",
        "STREAMGENRE_MAX_BATCH": str(cfg.max_batch),
        "STREAMGENRE_MAX_WAIT_MS": str(cfg.max_wait_ms),
        "STREAMGENRE_LOG_LEVEL": "WARNING",
    }
    daemons = []
    for w in range(cfg.workers):
        env_w = {**env, "STREAMGENRE_METRICS_PORT": str(base_port + w)}
        log = open(tmp / f"daemon-{w}.log", "wb")  # noqa: SIM115
        daemons.append(
            subprocess.Popen(
                [sys.executable, "-m", "streamgenre.apps.cli", "run"],
                env=env_w,
                stdout=log,
                stderr=subprocess.STDOUT,
                # In the child before exec, so every thread the daemon starts inherits the pinning.
                preexec_fn=(lambda: os.sched_setaffinity(0, cfg.daemon_cpus)) if cfg.daemon_cpus else None,
            )
        )
    return daemons, base_port


def stop_daemons(daemons: list[subprocess.Popen]) -> None:
    for d in daemons:
        d.terminate()
    for d in daemons:
        try:
            d.wait(15)
        except subprocess.TimeoutExpired:
            d.kill()


@contextlib.contextmanager
def running_daemons(
    settings: Settings, cfg: E2EConfig, run: str, tmp: Path, redis_ok: bool
) -> Iterator[tuple[list[subprocess.Popen], int]]:
    """:func:`start_daemons`, stopped however the measurement ends (a failed run left them running)."""
    daemons, base_port = start_daemons(settings, cfg, run, tmp, redis_ok)
    try:
        yield daemons, base_port
    finally:
        stop_daemons(daemons)


def clean_redis(cfg: E2EConfig, run: str, redis_ok: bool) -> None:
    if redis_ok:
        import redis

        client = redis.Redis.from_url(cfg.redis_url)
        for key in client.scan_iter(f"sgbench-{run}:*", count=1000):
            client.delete(key)


def expected_windows(cfg: E2EConfig, hop_s: float, spec: Any) -> int:
    duration = cfg.warmup_s + cfg.seconds
    n_chunks = int(duration / cfg.chunk_s)
    audio = n_chunks * round(cfg.chunk_s * INPUT_RATE) / INPUT_RATE
    per_stream = max(0, int((audio - spec.window_s) / hop_s))  # a lower bound (grid alignment varies)
    return cfg.streams * per_stream


def worker_metrics(port: int, timeout_s: float) -> str | None:
    """One daemon worker's /metrics page, or None while it does not answer."""
    import urllib.request

    try:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout_s).read().decode()
    except OSError:
        return None


def samples_named(page: str | None, name: str) -> list[Any]:
    """The samples called ``name`` on a /metrics page (none when the page is None), parsed with
    prometheus_client's own text parser."""
    from prometheus_client.parser import text_string_to_metric_families

    return [sample for family in text_string_to_metric_families(page or "") for sample in family.samples
            if sample.name == name]


def thread_cpu(base_port: int, workers: int) -> dict[str, float]:
    """CPU-seconds so far of the daemons' threads, by thread role, summed over the workers
    (``streamgenre_thread_cpu_seconds_total`` of each worker's /metrics; {} if none answers)."""
    totals: dict[str, float] = {}
    for w in range(workers):
        for sample in samples_named(worker_metrics(base_port + w, timeout_s=2), "streamgenre_thread_cpu_seconds_total"):
            role = sample.labels["thread"]
            totals[role] = totals.get(role, 0.0) + sample.value
    return totals


def wait_group_ready(
    daemons: list[subprocess.Popen],
    tmp: Path,
    base_port: int,
    partitions: int,
    timeout_s: float = 90.0,
    settle_s: float = 3.0,
) -> None:
    """Wait until the group owns every input partition and has stayed so for ``settle_s``.

    Each worker reports ``streamgenre_assigned_partitions``; a fixed sleep after the last
    /readyz was not enough on a cold machine, where a join can take longer than the measured
    span and the run then counted no windows at all.
    """
    deadline = time.monotonic() + timeout_s
    settled_since: float | None = None
    while True:
        for w, daemon in enumerate(daemons):
            if daemon.poll() is not None:
                raise RuntimeError(f"daemon {w} exited: {(tmp / f'daemon-{w}.log').read_text()[-2000:]}")
        owned = []
        for w in range(len(daemons)):
            assigned = samples_named(worker_metrics(base_port + w, timeout_s=1), "streamgenre_assigned_partitions")
            owned.append(int(assigned[0].value) if assigned else -1)
        now = time.monotonic()
        # Every worker must hold a share (when there are enough partitions to go round).
        if sum(owned) == partitions and min(owned) >= (1 if len(daemons) <= partitions else 0):
            settled_since = settled_since or now
            if now - settled_since >= settle_s:
                return
        else:
            settled_since = None
        if now > deadline:
            raise RuntimeError(f"group not settled after {timeout_s:.0f} s: partitions owned per worker {owned}")
        time.sleep(0.2)
