"""The per-thread CPU metric: real threads, real /proc, no mocks."""

from __future__ import annotations

import sys
import threading
import time

import pytest

from streamgenre.stream.metrics import Metrics, thread_cpu_seconds, thread_role

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/task")


def _spin(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def _thread_cpu_lines(metrics: Metrics) -> dict[str, float]:
    lines = [line for line in metrics.exposition().decode().splitlines()
             if line.startswith("streamgenre_thread_cpu_seconds_total{")]
    return {line.split('"')[1]: float(line.rsplit(" ", 1)[1]) for line in lines}


def test_a_busy_thread_shows_its_own_cpu_under_its_name() -> None:
    started, release = threading.Event(), threading.Event()

    def busy() -> None:
        _spin(0.3)
        started.set()
        release.wait(10)

    thread = threading.Thread(target=busy, name="busy-test-thread")
    thread.start()
    try:
        assert started.wait(10)
        assert thread.native_id is not None
        assert thread_cpu_seconds(thread.native_id) >= 0.25
        by_thread = _thread_cpu_lines(Metrics())
        assert by_thread["busy-test-thread"] >= 0.25
        assert "MainThread" in by_thread
    finally:
        release.set()
        thread.join()


def test_kafka_thread_names_lose_their_client_ids() -> None:
    assert thread_role("kafka-io-streamgenre-bench-f6b5b9b2") == "kafka-consumer-io"
    assert thread_role("streamgenre-bench-f6b5b9b2-out-network-thread") == "kafka-producer"
    assert thread_role("worker") == "worker"
    # Numbered anew per thread (one per metrics request): the number must not become a label.
    assert thread_role("Thread-43 (process_request_thread)") == "process_request_thread"
    assert thread_role("Thread-7") == "unnamed"
    assert thread_cpu_seconds(2**31 - 1) is None  # no such thread
