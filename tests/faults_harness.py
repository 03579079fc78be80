"""Helpers of the fault tests: daemons as subprocesses, own Redis / S3 servers, window bookkeeping.

The fault tests kill things (``kill -9`` a worker, stop Redis, restart the broker), so the
pieces they kill run as real processes; everything is on 127.0.0.1 with free ports. Figures the
tests measure are merged into the JSON file ``STREAMGENRE_RELIABILITY_RESULTS`` names — a file
under pytest's temporary folder unless ``make reliability`` points it at the tracked
``benchmarks/results/reliability.json``, which ``docs/RELIABILITY.md`` quotes (a run, not a guess).
"""

from __future__ import annotations

import collections
import datetime
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from pydantic import SecretStr

from streamgenre.apps.devbroker import free_port, wait_for_port
from streamgenre.config import Settings
from streamgenre.model.contract import load_spec
from tests.audio import EncodedChunk, chunked_stream, expected_window_seqs, tone_mix

#: Where record_figures() merges the figures; tests/conftest.py sets it under pytest's temporary folder
#: when it is unset, so a test run never rewrites the tracked results.
RESULTS_ENV = "STREAMGENRE_RELIABILITY_RESULTS"
START_MS = 1_760_000_000_000


def wait_for(condition: Callable[[], object], timeout_s: float, what: str, interval_s: float = 0.1) -> object:
    """Poll ``condition`` until it returns something truthy; fail with ``what`` after the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(interval_s)


def record_figures(test: str, figures: dict[str, object], command: str) -> None:
    """Merge one test's measured figures into the reliability results file (``RESULTS_ENV``)."""
    path = Path(os.environ[RESULTS_ENV])
    path.parent.mkdir(parents=True, exist_ok=True)
    results = json.loads(path.read_text()) if path.exists() else {}
    results[test] = {
        **figures,
        "command": command,
        "measured_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
    }
    path.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")


# -- streams and windows -------------------------------------------------------------------------
@dataclass
class Stream:
    stream_id: str
    chunks: list[EncodedChunk]
    expected: list[int]


def make_streams(
    model_path: Path,
    n_streams: int,
    seconds: float,
    prefix: str = "st",
    hop_s: float | None = None,
    seed: int = 0,
    rates: tuple[int, ...] = (16000, 22050, 44100, 8000),
    max_channels: int = 2,
) -> list[Stream]:
    """Synthetic streams (mixed rates and PCM formats, chunks of 0.1-0.5 s) and their expected windows."""
    spec = load_spec(model_path)
    recipe = spec.recipe
    hop_frames = max(1, round(hop_s * recipe.sample_rate / recipe.hop_length)) if hop_s else spec.hop_frames
    hop_samples = hop_frames * recipe.hop_length
    rng = np.random.default_rng(seed)
    streams = []
    for i in range(n_streams):
        rate, fmt = rates[i % len(rates)], ("s16le", "f32le")[i % 2]
        audio = tone_mix(seconds, rate, 1 + i % max_channels, seed=seed * 1000 + i)
        start_ms = START_MS + int(rng.integers(0, 100_000))
        sizes = [int(s) for s in rng.integers(int(0.1 * rate), int(0.5 * rate), size=5)]
        chunks = chunked_stream(audio, rate, fmt, start_ms, sizes)
        stream_id = f"{prefix}-{seed}-{i:03d}"
        expected = expected_window_seqs(
            stream_id,
            start_ms,
            sum(c.n_samples for c in chunks),
            rate,
            recipe.sample_rate,
            hop_samples,
            recipe.window_samples,
        )
        streams.append(Stream(stream_id, chunks, expected))
    return streams


def produce(
    bootstrap: str, topic: str, streams: Iterable[Stream], start: float = 0.0, stop: float = 1.0
) -> int:
    """Send each stream's chunks in ``[start, stop)`` (fractions of its length), interleaved; return count."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, max_request_size=1 << 24)
    parts = [(s, s.chunks[round(start * len(s.chunks)) : round(stop * len(s.chunks))]) for s in streams]
    sent = 0
    try:
        for index in range(max((len(c) for _, c in parts), default=0)):
            for stream, chunks in parts:
                if index < len(chunks):
                    producer.send(
                        topic,
                        key=stream.stream_id.encode(),
                        value=chunks[index].value,
                        headers=chunks[index].headers,
                    )
                    sent += 1
        producer.flush(timeout=30)
    finally:
        producer.close()
    return sent


class TopicReader:
    """Follows a topic from the beginning (all partitions, no group) and keeps every message."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.consumer = KafkaConsumer(
            bootstrap_servers=bootstrap,
            enable_auto_commit=False,
            fetch_max_bytes=1 << 26,
            max_partition_fetch_bytes=1 << 25,
        )
        partitions = [
            TopicPartition(topic, p) for p in sorted(self.consumer.partitions_for_topic(topic) or [])
        ]
        self.consumer.assign(partitions)
        self.consumer.seek_to_beginning(*partitions)
        self.messages: list = []

    def poll(self, timeout_ms: int = 200) -> list:
        for batch in self.consumer.poll(timeout_ms=timeout_ms).values():
            self.messages.extend(batch)
        return self.messages

    def until(self, condition: Callable[[list], bool], timeout_s: float, what: str) -> list:
        wait_for(lambda: condition(self.poll()), timeout_s, what, interval_s=0)
        return self.messages

    def close(self) -> None:
        self.consumer.close()


def window_counts(messages: list) -> collections.Counter[tuple[str, int]]:
    counts: collections.Counter[tuple[str, int]] = collections.Counter()
    for message in messages:
        payload = json.loads(message.value)
        counts[(payload["stream_id"], payload["window_seq"])] += 1
    return counts


def expected_windows(streams: Iterable[Stream]) -> set[tuple[str, int]]:
    return {(s.stream_id, seq) for s in streams for seq in s.expected}


@dataclass
class Coverage:
    """How the published windows compare with the expected ones (at-least-once: none missing)."""

    expected: int
    seen: int
    missing: list[tuple[str, int]] = field(default_factory=list)
    unexpected: list[tuple[str, int]] = field(default_factory=list)
    duplicates: int = 0

    def figures(self) -> dict[str, int]:
        return {
            "windows_expected": self.expected,
            "windows_seen": self.seen,
            "windows_duplicated": self.duplicates,
            "windows_missing": len(self.missing),
        }


def coverage(streams: Iterable[Stream], messages: list) -> Coverage:
    wanted = expected_windows(streams)
    counts = window_counts(messages)
    return Coverage(
        expected=len(wanted),
        seen=len(wanted & counts.keys()),
        missing=sorted(wanted - counts.keys()),
        unexpected=sorted(counts.keys() - wanted),
        duplicates=sum(n - 1 for key, n in counts.items() if key in wanted),
    )


def wait_first_windows(reader: TopicReader, streams: list[Stream], divisor: int, timeout_s: float = 60) -> list:
    """Read until 1/``divisor`` of the expected windows were out, so that a fault hits mid-stream."""
    wanted = sum(len(s.expected) for s in streams) // divisor
    return reader.until(lambda messages: len(messages) >= wanted, timeout_s, "first windows")


def settle(reader: TopicReader, seconds: float = 1.5) -> list:
    """Keep reading a little after the expected windows arrived, so late duplicates are counted."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        reader.poll()
    return reader.messages


def wait_all_windows(reader: TopicReader, streams: list[Stream], timeout_s: float, what: str) -> list:
    """Read until every expected window of ``streams`` was published; name the missing ones if not."""
    wanted = expected_windows(streams)
    try:
        return reader.until(lambda messages: wanted <= window_counts(messages).keys(), timeout_s, what)
    except AssertionError as exc:
        missing = coverage(streams, reader.messages).missing
        raise AssertionError(f"{exc}: {len(missing)} of {len(wanted)} missing, e.g. {missing[:12]}") from None


# -- processes -----------------------------------------------------------------------------------
def settings_env(settings: Settings) -> dict[str, str]:
    """The ``STREAMGENRE_*`` environment that reproduces ``settings`` in a subprocess."""
    env = {}
    for name in Settings.model_fields:
        value = getattr(settings, name)
        if value is None:
            continue
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        env[f"STREAMGENRE_{name.upper()}"] = str(value)
    return env


def readyz(port: int) -> tuple[int, dict] | None:
    """(status, body) of a daemon's /readyz on ``port``, or None while its HTTP server does not answer."""
    url = f"http://127.0.0.1:{port}/readyz"
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())
    except OSError:
        return None


class DaemonProcess:
    """``python -m streamgenre.apps.cli run`` with the given settings, its log in ``log_path``."""

    def __init__(self, settings: Settings, log_path: Path) -> None:
        self.settings = settings
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> DaemonProcess:
        env = {**os.environ, **settings_env(self.settings), "PYTHONUNBUFFERED": "1"}
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "streamgenre.apps.cli", "run"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def readyz(self) -> tuple[int, dict] | None:
        return readyz(self.settings.metrics_port)

    def wait_assigned(self, partitions: int, timeout_s: float = 60.0, after: int = 0) -> str:
        """Wait for a log line assigning ``partitions`` partitions (in the log past ``after`` chars)."""

        def found() -> str | None:
            for line in self.log()[after:].splitlines():
                if "partitions assigned:" in line:
                    listed = line.split("partitions assigned:", 1)[1].strip(" []")
                    if len([p for p in listed.split(",") if p.strip()]) == partitions:
                        return line
            return None

        return str(wait_for(found, timeout_s, f"{partitions} partitions assigned in {self.log_path.name}"))

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def terminate(self, timeout_s: float = 30.0) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout_s)

    def stop(self) -> None:
        if self.alive():
            assert self.process is not None
            self.process.kill()
            self.process.wait(10)


class RedisServer:
    """A private ``redis-server`` without persistence, so a restart starts empty."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server")
        assert binary, "the fault tests need redis-server on PATH"
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_for_port("127.0.0.1", self.port, 10)
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.process = None


class MotoServer:
    """A local S3 (``moto_server``) with the bucket ``tansu``, for tansu's ``s3://`` storage."""

    def __init__(self, log_path: Path) -> None:
        self.port = free_port()
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def env(self) -> dict[str, str]:
        return {
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT": f"http://127.0.0.1:{self.port}",
            "AWS_ALLOW_HTTP": "true",
        }

    def start(self, bucket: str = "tansu") -> MotoServer:
        import boto3

        binary = Path(sys.executable).with_name("moto_server")
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [str(binary), "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_for_port("127.0.0.1", self.port, 30)
        boto3.client(
            "s3",
            endpoint_url=f"http://127.0.0.1:{self.port}",
            aws_access_key_id="test",
            aws_secret_access_key="test",
            region_name="us-east-1",
        ).create_bucket(Bucket=bucket)
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.process = None


# -- scenarios -----------------------------------------------------------------------------------
@dataclass
class SigkillOutcome:
    coverage: Coverage
    # From the SIGKILL until ``recover`` returned, producing the second half included (as a live
    # source keeps producing through a crash).
    kill_to_recovered_s: float


def sigkill_mid_stream(
    settings: Settings,
    streams: list[Stream],
    victim: DaemonProcess,
    successor: DaemonProcess,
    *,
    group_ready: Callable[[], object],
    recover: Callable[[], object],
    before_kill: Callable[[], object] = lambda: None,
    what: str,
) -> SigkillOutcome:
    """SIGKILL ``victim`` half-way through ``streams``; check ``successor`` publishes every window.

    In order: ``group_ready`` (wait for the assignment), the first half of each stream in, a
    quarter of the windows out, ``before_kill``, SIGKILL, the second half in, ``recover`` (start
    the successor, or wait for it to take the victim's partitions), then every window out. The
    second half goes in while nobody owns the victim's partitions, so the successor replays
    from the last commit into a backlog rather than into an idle topic. Both daemons are stopped
    whatever happens; a missing or unexpected window, or a dead successor, fails the test.
    """
    reader = TopicReader(settings.bootstrap_servers, settings.output_topic)
    try:
        group_ready()
        produce(settings.bootstrap_servers, settings.input_topic, streams, 0.0, 0.5)
        wait_first_windows(reader, streams, 4)
        before_kill()
        killed_at = time.monotonic()
        victim.kill()
        produce(settings.bootstrap_servers, settings.input_topic, streams, 0.5, 1.0)
        recover()
        kill_to_recovered_s = time.monotonic() - killed_at
        wait_all_windows(reader, streams, 90, f"every window {what}")
        result = coverage(streams, settle(reader))
        assert successor.alive(), successor.log()[-3000:]
    finally:
        victim.stop()
        successor.stop()
        reader.close()
    assert not result.missing and not result.unexpected, (result.missing[:12], result.unexpected[:12])
    return SigkillOutcome(result, kill_to_recovered_s)
