"""The simulated live sources: one process sending S streams of s16le chunks in real time."""

from __future__ import annotations

import multiprocessing
import time
from typing import Any

from streamgenre.bench.audio import INPUT_RATE, N_VOICES, voice

PRODUCER_WAKE_S = 0.005  # shortest sleep of the simulated producer (see producer_main)

def producer_main(
    bootstrap: str, topic: str, streams: int, duration_s: float, chunk_s: float, start_at: float, report: Any
) -> None:
    """Separate process: S streams of s16le chunks, each sent when its audio is complete."""
    from kafka import KafkaProducer

    from streamgenre.apps.ingest import encode_pcm
    from streamgenre.stream.wire import chunk_headers

    chunk_n = round(chunk_s * INPUT_RATE)
    chunk_ms = 1000.0 * chunk_n / INPUT_RATE
    payloads = []
    for v in range(N_VOICES):
        y = voice(v)
        payloads.append(
            [encode_pcm(y[k * chunk_n : (k + 1) * chunk_n, None], "s16le") for k in range(y.size // chunk_n)]
        )
    # kafka-python 3.0.12's sender busy-loops while a connection holds its maximum of requests
    # in flight: the paused connection is "not ready" with a connection delay of 0, so it polls
    # with a zero timeout until a response comes. Here the broker shares this process's core,
    # so the spin starves the broker that would answer it (a failed run: the sender at 0.85
    # CPU-s/s, tansu at 0.08). A 50-ms linger makes ~20 requests a second instead of ~200, and
    # 20 in flight (no idempotence: acks=1 already rules it out) gives a broker a second of stall
    # before the pause. The simulated sources stand for other machines: only "chunk ts ->
    # published" sees the linger, never the daemon's window -> publish.
    producer = KafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=50, batch_size=1 << 20, max_request_size=8 << 20, acks=1,
        enable_idempotence=False, max_in_flight_requests_per_connection=20,
    )
    epoch0 = round(start_at * 1000)  # chunk k of a stream is captured over [ts, ts + chunk_s), sent at its end
    n_chunks = int(duration_s / chunk_s)
    # Streams are spread evenly over one chunk period, like independent live sources.
    offsets = [(i / streams) * chunk_s for i in range(streams)]
    late_max = 0.0
    sent = 0
    for k in range(n_chunks):
        for i in range(streams):
            due = start_at + (k + 1) * chunk_s + offsets[i]
            delay = due - time.time()
            if delay > 0:
                # At least PRODUCER_WAKE_S: one wake-up per record (1,000/s at 500 streams) is
                # costly on a VM. Chunks go out late by about that at most, never early.
                time.sleep(max(delay, PRODUCER_WAKE_S))
            late_max = max(late_max, time.time() - due)
            ts = epoch0 + round(1000 * offsets[i]) + round(k * chunk_ms)
            voice_chunks = payloads[i % N_VOICES]
            headers = chunk_headers("audio/pcm;format=s16le", k, ts, INPUT_RATE, 1)
            producer.send(
                topic,
                key=f"bench-{i:05d}".encode(),
                value=voice_chunks[k % len(voice_chunks)],
                headers=headers,
            )
            sent += 1
    producer.flush()
    producer.close()
    report.put(
        {
            "sent": sent,
            "late_max_s": round(late_max, 3),
            "epoch0_ms": epoch0,
            "offsets_ms": [round(1000 * o) for o in offsets],
            "chunk_ms": chunk_ms,
        }
    )


def start_producer(
    bootstrap: str, topic: str, streams: int, duration_s: float, chunk_s: float, start_at: float
) -> tuple[Any, Any]:
    """:func:`producer_main` in a spawned process; returns it and the queue it reports on."""
    ctx = multiprocessing.get_context("spawn")
    report = ctx.Queue()
    producer = ctx.Process(
        target=producer_main, args=(bootstrap, topic, streams, duration_s, chunk_s, start_at, report)
    )
    producer.start()
    return producer, report
