"""Fault injection on the real broker and the real Redis: the at-least-once claims of RELIABILITY.md.

Each test breaks one thing (SIGKILL a worker, kill a group member, stop Redis, restart the
broker, start without a broker, SIGTERM, a slow model) while synthetic streams flow, then checks
that every expected window of every stream was published at least once. Figures go to
``benchmarks/results/reliability.json`` with ``make reliability``, else under pytest's temporary
folder (see :func:`tests.faults_harness.record_figures`). Run them alone with ``make test-faults``
(``pytest -m fault``).
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from streamgenre.apps.devbroker import DevBroker, ensure_topics, free_port
from streamgenre.config import Settings
from streamgenre.model.contract import GenreModel
from streamgenre.stream.daemon import Daemon
from streamgenre.stream.sinks import KafkaSink, OutMessage
from streamgenre.stream.source import BOOTSTRAP_TIMEOUT_MS, ChunkSource
from tests.conftest import isolated_settings, running_daemon
from tests.faults_harness import (
    DaemonProcess,
    MotoServer,
    RedisServer,
    TopicReader,
    coverage,
    make_streams,
    produce,
    readyz,
    record_figures,
    settle,
    sigkill_mid_stream,
    wait_all_windows,
    wait_first_windows,
    wait_for,
    window_counts,
)
from tests.faults_hostile import MAX_BYTES, MAX_DECODED_S, generate

pytestmark = pytest.mark.fault

COMMAND = "make reliability  # = STREAMGENRE_RELIABILITY_RESULTS=benchmarks/results/reliability.json pytest -q -m fault"


def _committed(settings: Settings) -> dict[int, int | None]:
    consumer = KafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers, group_id=settings.group_id, enable_auto_commit=False
    )
    try:
        return {p: consumer.committed(TopicPartition(settings.input_topic, p)) for p in range(4)}
    finally:
        consumer.close(autocommit=False)


def test_kill9_mid_stream_then_restart_replays_every_window(
    settings: Settings, test_model: Path, tmp_path: Path
) -> None:
    """SIGKILL a worker half-way through its streams; a restarted worker publishes every window."""
    settings = settings.model_copy(update={"hop_s": 0.25})  # overlapping windows: commits lag behind
    streams = make_streams(test_model, 12, 6.0, prefix="kill9", hop_s=0.25)
    first = DaemonProcess(settings, tmp_path / "worker-1.log").start()
    second = DaemonProcess(settings, tmp_path / "worker-2.log")
    outcome = sigkill_mid_stream(
        settings,
        streams,
        victim=first,
        successor=second,
        group_ready=lambda: first.wait_assigned(4),
        # Killed before its first commit, the restart would replay from the start: no test of
        # resuming from a committed offset that lags behind the published windows.
        before_kill=lambda: wait_for(
            lambda: any(o is not None for o in _committed(settings).values()), 20, "a first commit"
        ),
        recover=second.start,
        what="after the restart",
    )
    record_figures("kill9_restart", outcome.coverage.figures(), COMMAND)


def test_sigkill_one_of_two_workers_survivor_takes_over(
    settings: Settings, test_model: Path, tmp_path: Path
) -> None:
    """Two members; SIGKILL one mid-stream: the other gets all partitions and nothing is lost."""
    streams = make_streams(test_model, 16, 6.0, prefix="takeover", seed=1)
    victim = DaemonProcess(settings, tmp_path / "victim.log").start()
    survivor = DaemonProcess(
        settings.model_copy(update={"metrics_port": free_port()}), tmp_path / "survivor.log"
    ).start()
    survivor_log_at_kill = 0

    def note_survivor_log() -> None:
        nonlocal survivor_log_at_kill
        # The survivor logged its first assignment (2 partitions) already: only a later line counts.
        survivor_log_at_kill = len(survivor.log())

    outcome = sigkill_mid_stream(
        settings,
        streams,
        victim=victim,
        successor=survivor,
        group_ready=lambda: (victim.wait_assigned(2), survivor.wait_assigned(2)),
        before_kill=note_survivor_log,
        recover=lambda: survivor.wait_assigned(4, timeout_s=60, after=survivor_log_at_kill),
        what="after the takeover",
    )
    takeover_s = outcome.kill_to_recovered_s
    assert takeover_s < 3 * settings.session_timeout_ms / 1000
    record_figures(
        "two_workers_sigkill_one",
        {
            **outcome.coverage.figures(),
            "takeover_s": round(takeover_s, 2),
            "session_timeout_ms": settings.session_timeout_ms,
        },
        COMMAND,
    )


def _readyz(daemon: Daemon) -> tuple[int, dict]:
    answer = readyz(daemon.settings.metrics_port)
    # In-process, the HTTP server is up for the daemon's whole life: no answer is a failure.
    assert answer is not None, "/readyz did not answer"
    return answer


def test_redis_outage_degrades_then_catches_up(settings: Settings, test_model: Path, tmp_path: Path) -> None:
    """Redis stopped mid-run: Kafka output stays complete, /readyz says degraded, Redis catches up."""
    server = RedisServer(tmp_path).start()
    settings = settings.model_copy(
        update={"redis_url": settings.redis_url.__class__(server.url), "redis_retry_s": 0.5}
    )
    phases = [make_streams(test_model, 6, 3.0, prefix=f"redis{p}", seed=10 + p) for p in range(3)]
    client = redis.Redis.from_url(server.url)
    reader = TopicReader(settings.bootstrap_servers, settings.output_topic)
    try:
        with running_daemon(settings) as daemon:
            produce(settings.bootstrap_servers, settings.input_topic, phases[0])
            wait_all_windows(reader, phases[0], 60, "phase 1 windows")
            wait_for(
                lambda: client.exists(f"{settings.redis_prefix}:{phases[0][0].stream_id}:latest"),
                10,
                "phase 1 in Redis",
            )
            server.stop()
            down_at = time.monotonic()
            produce(settings.bootstrap_servers, settings.input_topic, phases[1])
            wait_all_windows(reader, phases[1], 60, "phase 2 windows while Redis is down")
            status, body = wait_for(
                lambda: (lambda r: r if r[1]["degraded"] else None)(_readyz(daemon)), 15, "/readyz degraded"
            )  # type: ignore[misc]
            assert status == 200 and body["ready"] and body["redis"] == "down"
            down_s = time.monotonic() - down_at
            # One failed attempt per redis_retry_s at most: the hot path is not slowed by retries.
            attempts = daemon.metrics.redis_errors._value.get()
            assert attempts <= down_s / settings.redis_retry_s + 2
            server.start()
            wait_for(lambda: not _readyz(daemon)[1]["degraded"], 15, "/readyz no longer degraded")
            produce(settings.bootstrap_servers, settings.input_topic, phases[2])
            wait_all_windows(reader, phases[2], 60, "phase 3 windows")
            for stream in phases[2]:
                key = f"{settings.redis_prefix}:{stream.stream_id}:latest"
                wait_for(
                    lambda key=key, stream=stream: (
                        client.get(key)
                        and __import__("json").loads(client.get(key))["window_seq"] == stream.expected[-1]
                    ),
                    15,
                    f"{key} updated after the restart",
                )
            assert daemon._worker.is_alive()
            skipped = daemon.metrics.redis_skipped._value.get()
        result = coverage([s for p in phases for s in p], settle(reader, 0.5))
    finally:
        reader.close()
        server.stop()
    assert not result.missing and not result.unexpected
    record_figures(
        "redis_outage",
        {
            **result.figures(),
            "redis_down_s": round(down_s, 2),
            "redis_failed_writes": attempts,
            "redis_skipped_windows": skipped,
        },
        COMMAND,
    )


def test_broker_restart_with_s3_storage_loses_nothing(
    test_model: Path, tmp_path: Path, redis_prefix: str
) -> None:
    """tansu on S3 (moto) restarted mid-run: readiness drops, the daemon rides through and resumes."""
    moto = MotoServer(tmp_path / "moto.log").start()
    broker = DevBroker(storage="s3://tansu/", env=moto.env, log_path=tmp_path / "tansu.log").start()
    settings = isolated_settings(broker.bootstrap, test_model, redis_prefix)
    ensure_topics(settings, partitions=4)
    streams = make_streams(test_model, 8, 6.0, prefix="restart", seed=2)
    worker = DaemonProcess(settings, tmp_path / "worker.log").start()
    reader = None
    try:
        worker.wait_assigned(4)
        produce(settings.bootstrap_servers, settings.input_topic, streams, 0.0, 0.5)
        reader = TopicReader(settings.bootstrap_servers, settings.output_topic)
        wait_first_windows(reader, streams, 4)
        broker.stop(kill=True)
        down_at = time.monotonic()
        wait_for(
            lambda: (r := worker.readyz()) is not None and r[0] == 503,
            30,
            "/readyz 503 while the broker is down",
        )
        broker.start()
        wait_for(
            lambda: (r := worker.readyz()) is not None and r[0] == 200, 60, "/readyz 200 after the restart"
        )
        outage_s = time.monotonic() - down_at
        produce(settings.bootstrap_servers, settings.input_topic, streams, 0.5, 1.0)
        wait_all_windows(reader, streams, 90, "every window after the broker restart")
        result = coverage(streams, settle(reader))
        assert worker.alive(), worker.log()[-3000:]
    finally:
        if reader is not None:
            reader.close()
        worker.stop()
        broker.stop()
        moto.stop()
    assert not result.missing and not result.unexpected
    record_figures("broker_restart_s3", {**result.figures(), "outage_s": round(outage_s, 2)}, COMMAND)


def test_sigterm_drains_within_budget_and_commits(
    settings: Settings, test_model: Path, tmp_path: Path
) -> None:
    """SIGTERM mid-stream: exit 0 within drain_timeout_s; a restart replays at most one window's audio."""
    settings = settings.model_copy(update={"hop_s": 0.5})
    streams = make_streams(test_model, 12, 8.0, prefix="drain", hop_s=0.5, seed=3)
    reader = TopicReader(settings.bootstrap_servers, settings.output_topic)
    worker = DaemonProcess(settings, tmp_path / "worker.log").start()
    restarted = DaemonProcess(settings, tmp_path / "restarted.log")
    try:
        worker.wait_assigned(4)
        produce(settings.bootstrap_servers, settings.input_topic, streams, 0.0, 0.6)
        wait_first_windows(reader, streams, 3)
        started = time.monotonic()
        code = worker.terminate(timeout_s=settings.drain_timeout_s + 10)
        drain_s = time.monotonic() - started
        before = window_counts(settle(reader, 1.0))
        committed = _committed(settings)
        produce(settings.bootstrap_servers, settings.input_topic, streams, 0.6, 1.0)
        restarted.start()
        wait_all_windows(reader, streams, 90, "every window after the restart")
        result = coverage(streams, settle(reader))
    finally:
        worker.stop()
        restarted.stop()
        reader.close()
    assert code == 0, worker.log()[-3000:]
    assert drain_s <= settings.drain_timeout_s + 2.0
    assert all(o is not None for o in committed.values()), committed
    assert not result.missing and not result.unexpected
    # Replay after a drain starts at the oldest chunk an open window needed: with one window
    # per stream open at most, each stream republishes at most the windows of one window's audio.
    window_s = load_window_s(test_model)
    per_stream_bound = int(np.ceil(window_s / settings.hop_s))
    replayed = {
        sid: sum(n - 1 for (s, _), n in window_counts(reader.messages).items() if s == sid)
        for sid in {s.stream_id for s in streams}
    }
    assert max(replayed.values()) <= per_stream_bound, replayed
    assert sum(before.values()) > 0
    record_figures(
        "sigterm_drain",
        {
            **result.figures(),
            "drain_s": round(drain_s, 2),
            "drain_timeout_s": settings.drain_timeout_s,
            "exit_code": code,
        },
        COMMAND,
    )


def load_window_s(model_path: Path) -> float:
    from streamgenre.model.contract import load_spec

    return load_spec(model_path).window_s


def test_backpressure_pauses_and_resumes_without_rebalance(
    settings: Settings, test_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tiny queue and a slow model: partitions pause and resume, the group never rebalances."""
    calls = {"pause": 0, "resume": 0, "revoked": 0, "assigned": 0}
    slow_predict, pause, resume = GenreModel.predict, ChunkSource.pause, ChunkSource.resume
    revoked, assigned = Daemon._on_revoked, Daemon._on_assigned

    def counting(name: str, original: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            calls[name] += 1
            return original(*args, **kwargs)

        return wrapper

    def predict(self: GenreModel, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        time.sleep(0.03)  # a model ~30x slower than the test model, per batch
        return slow_predict(self, batch)

    monkeypatch.setattr(GenreModel, "predict", predict)
    for name, original, cls in (
        ("pause", pause, ChunkSource),
        ("resume", resume, ChunkSource),
        ("revoked", revoked, Daemon),
        ("assigned", assigned, Daemon),
    ):
        monkeypatch.setattr(
            cls,
            {"revoked": "_on_revoked", "assigned": "_on_assigned"}.get(name, name),
            counting(name, original),
        )
    settings = settings.model_copy(update={"queue_max_chunks": 4, "max_batch": 2, "max_wait_ms": 1.0})
    streams = make_streams(test_model, 8, 5.0, prefix="bp", seed=4)
    reader = TopicReader(settings.bootstrap_servers, settings.output_topic)
    try:
        with running_daemon(settings) as daemon:
            wait_for(lambda: calls["assigned"], 30, "assignment")
            started = time.monotonic()
            produce(settings.bootstrap_servers, settings.input_topic, streams)
            wait_all_windows(reader, streams, 120, "every window under backpressure")
            elapsed = time.monotonic() - started
            assert daemon._worker.is_alive()
        result = coverage(streams, settle(reader, 0.5))
    finally:
        reader.close()
    assert calls["pause"] >= 1 and calls["resume"] >= 1, calls
    assert calls["assigned"] == 1, calls  # one assignment: the group never rebalanced
    assert not result.missing and not result.unexpected and result.duplicates == 0
    record_figures(
        "backpressure",
        {
            **result.figures(),
            "pauses": calls["pause"],
            "resumes": calls["resume"],
            "rebalances": calls["assigned"] - 1,
            "seconds": round(elapsed, 2),
            "queue_max_chunks": 4,
        },
        COMMAND,
    )


def test_broker_down_at_startup_retries_then_consumes(
    test_model: Path, tmp_path: Path, redis_prefix: str
) -> None:
    """No broker at start: /readyz 503, no crash; the daemon consumes once the broker comes up."""
    port = free_port()
    settings = isolated_settings(f"127.0.0.1:{port}", test_model, redis_prefix, broker_retry_max_s=2.0)
    worker = DaemonProcess(settings, tmp_path / "worker.log").start()
    broker = DevBroker(port=port, log_path=tmp_path / "tansu.log")
    streams = make_streams(test_model, 4, 3.0, prefix="late", seed=5)
    try:
        wait_for(
            lambda: (r := worker.readyz()) is not None and r[0] == 503, 30, "/readyz 503 without a broker"
        )
        wait_for(lambda: "unreachable" in worker.log(), 30, "a logged retry")
        assert worker.alive()
        broker.start()
        up_at = time.monotonic()
        ensure_topics(settings, partitions=4)
        worker.wait_assigned(4, timeout_s=60)
        consuming_after_s = time.monotonic() - up_at
        assert worker.readyz()[0] == 200  # type: ignore[index]
        produce(settings.bootstrap_servers, settings.input_topic, streams)
        reader = TopicReader(settings.bootstrap_servers, settings.output_topic)
        try:
            wait_all_windows(reader, streams, 60, "every window")
            result = coverage(streams, settle(reader, 0.5))
        finally:
            reader.close()
    finally:
        worker.stop()
        broker.stop()
    assert not result.missing and not result.unexpected
    record_figures(
        "broker_down_at_startup",
        {**result.figures(), "consuming_after_broker_up_s": round(consuming_after_s, 2)},
        COMMAND,
    )


def test_ten_thousand_hostile_messages_all_dead_lettered(settings: Settings, test_model: Path) -> None:
    """10,000 hypothesis-generated bad messages among good streams: all in the DLQ, every window out."""
    hostile = generate(10_000)
    settings = settings.model_copy(update={"max_message_bytes": MAX_BYTES, "max_decoded_s": MAX_DECODED_S})
    good = make_streams(test_model, 6, 4.0, prefix="fuzzgood", seed=6, rates=(16000, 8000), max_channels=1)
    good_chunks = [(s.stream_id, c) for s in good for c in s.chunks]
    good_chunks.sort(key=lambda sc: int(dict(sc[1].headers)["seq"].decode()))  # streams interleaved, in order
    every = max(1, len(hostile) // len(good_chunks))
    producer = KafkaProducer(
        bootstrap_servers=settings.bootstrap_servers, linger_ms=20, max_request_size=1 << 24
    )
    dlq = TopicReader(settings.bootstrap_servers, settings.dlq_topic)
    reader = TopicReader(settings.bootstrap_servers, settings.output_topic)
    try:
        with running_daemon(settings) as daemon:
            started = time.monotonic()
            pending = list(good_chunks)
            for index, message in enumerate(hostile):
                producer.send(
                    settings.input_topic,
                    key=message.key,
                    value=message.value,
                    headers=[*message.headers, ("fuzz-id", str(index).encode())],
                )
                if index % every == 0 and pending:
                    stream_id, chunk = pending.pop(0)
                    producer.send(
                        settings.input_topic, key=stream_id.encode(), value=chunk.value, headers=chunk.headers
                    )
            for stream_id, chunk in pending:
                producer.send(
                    settings.input_topic, key=stream_id.encode(), value=chunk.value, headers=chunk.headers
                )
            producer.flush(60)
            dead = dlq.until(lambda m: len(m) >= len(hostile), 120, "every hostile message in the DLQ")
            wait_all_windows(reader, good, 60, "every good window")
            elapsed = time.monotonic() - started
            assert daemon._worker.is_alive() and not daemon.should_exit.is_set()
            counted = {
                labels[0]: child._value.get()
                for labels, child in daemon.metrics.dlq_messages._metrics.items()
            }
        result = coverage(good, settle(reader, 0.5))
        dead = settle(dlq, 0.5)
    finally:
        producer.close()
        dlq.close()
        reader.close()
    assert len(dead) == len(hostile), "a good chunk went to the DLQ, or a bad one twice"
    for message in dead:
        headers = dict(message.headers)
        original = hostile[int(headers["fuzz-id"])]
        assert headers["dlq-reason"].decode() == original.reason.value
        assert (message.key or b"") == (original.key or b"")
        # Original bytes; an oversized one is cut to the limit and says how long it was.
        assert (message.value or b"") == original.value[:MAX_BYTES]
        if len(original.value) > MAX_BYTES:
            assert headers["dlq-original-bytes"] == str(len(original.value)).encode()
        assert headers["dlq-source"].startswith(settings.input_topic.encode())
    assert counted == {r.value: float(n) for r, n in collections.Counter(h.reason for h in hostile).items()}
    assert not result.missing and not result.unexpected and result.duplicates == 0
    record_figures(
        "fuzz_dlq",
        {
            **result.figures(),
            "messages_fuzzed": len(hostile),
            "messages_in_dlq": len(dead),
            "reasons": {r: int(n) for r, n in sorted(counted.items())},
            "seconds": round(elapsed, 2),
        },
        COMMAND,
    )


def test_producer_recovers_after_memory_broker_restart(tmp_path: Path) -> None:
    """A restart that loses the producer id (memory storage): KafkaSink rebuilds its producer and resends."""
    broker = DevBroker(log_path=tmp_path / "tansu.log").start()
    settings = Settings(bootstrap_servers=broker.bootstrap, output_topic="out")
    sink = KafkaSink(settings)
    try:
        sink.send(OutMessage("out", b"k", b"before"))
        sink.flush(timeout_s=10)
        broker.stop(kill=True)
        broker.start()
        sink.send(OutMessage("out", b"k", b"after"))
        sink.flush(timeout_s=10)
        reader = TopicReader(broker.bootstrap, "out")
        try:
            values = [
                m.value for m in reader.until(lambda m: b"after" in [x.value for x in m], 30, "'after'")
            ]
        finally:
            reader.close()
    finally:
        sink.close()
        broker.stop()
    assert b"after" in values  # memory storage lost 'before' with the restart; see RELIABILITY.md


def test_sigterm_while_the_broker_is_unreachable_exits_cleanly(test_model: Path, tmp_path: Path) -> None:
    """Stopping a worker that never reached its broker is bounded by one bootstrap attempt, exit 0."""
    settings = Settings(
        bootstrap_servers=f"127.0.0.1:{free_port()}",
        model_path=test_model,
        metrics_host="127.0.0.1",
        metrics_port=free_port(),
    )
    worker = DaemonProcess(settings, tmp_path / "worker.log").start()
    try:
        wait_for(lambda: (r := worker.readyz()) is not None and r[0] == 503, 30, "/readyz 503")
        started = time.monotonic()
        code = worker.terminate(timeout_s=30)
        stop_s = time.monotonic() - started
    finally:
        worker.stop()
    assert code == 0, worker.log()[-3000:]
    assert stop_s <= BOOTSTRAP_TIMEOUT_MS / 1000 + settings.drain_timeout_s + 2
