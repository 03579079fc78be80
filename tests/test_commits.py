"""The at-least-once core without a broker: which offsets a checkpoint lets the daemon commit.

:class:`~streamgenre.stream.pipeline.Pipeline` sees its outputs only through the sink protocols,
so fakes here decide when outputs are acknowledged or fail; the model is the small contract
model and the audio real chunks. The broker and kill -9 tests (test_e2e, test_faults) check
the same guarantee end to end; these pin each rule down in milliseconds.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from streamgenre.config import Settings
from streamgenre.model.contract import GenreModel
from streamgenre.stream.daemon import Daemon, _Item
from streamgenre.stream.metrics import Metrics
from streamgenre.stream.pipeline import Pipeline
from streamgenre.stream.sinks import KafkaSink, OutMessage, SinkError
from streamgenre.stream.source import Record
from streamgenre.stream.streamstate import grid_phase
from tests.audio import chunked_stream, tone_mix
from tests.modelgen import TEST_RECIPE

RATE = TEST_RECIPE.sample_rate
START_MS = 1_760_000_000_000
CHUNK = RATE // 4  # 0.25 s; the test model's window is ~1 s, so four chunks complete about one window


class FakeOutputs:
    """An :class:`~streamgenre.stream.sinks.OutputSink` whose acknowledgements the test hands out."""

    def __init__(self) -> None:
        self.messages: list[OutMessage] = []
        self.acked = 0
        self.failing = False

    @property
    def sent(self) -> int:
        return len(self.messages)

    def send(self, message: OutMessage) -> None:
        self.messages.append(message)

    def acknowledge(self, count: int | None = None) -> None:
        self.acked = self.sent if count is None else count

    def acknowledged(self) -> int:
        if self.failing:
            raise SinkError("broker refused the outputs")
        return self.acked

    def flush(self, timeout_s: float = 30.0) -> None:
        if self.failing:
            raise SinkError("broker refused the outputs")
        self.acked = self.sent


class FakeCache:
    """A :class:`~streamgenre.stream.sinks.CacheSink` that accepts every write."""

    up = True

    def __init__(self) -> None:
        self.latest: dict[str, bytes] = {}

    def write(self, timeline: list[tuple[str, bytes]], latest: dict[str, bytes],
              segments: Sequence[tuple[str, bytes]] = ()) -> bool:
        self.latest.update(latest)
        return True


class FakeSource:
    """The consumer as the poll thread uses it at a barrier: commits are recorded."""

    def __init__(self) -> None:
        self.commits: list[dict[int, int]] = []
        self.closed = False

    def commit(self, offsets: dict[int, int]) -> None:
        self.commits.append(dict(offsets))

    def close(self) -> None:
        self.closed = True


def records(stream_id: str, seconds: float, partition: int = 0, first_offset: int = 0, seed: int = 1,
            start_ms: int = START_MS) -> list[Record]:
    chunks = chunked_stream(tone_mix(seconds, RATE, 1, seed=seed), RATE, "s16le", start_ms, [CHUNK])
    return [Record("audio.chunks", partition, first_offset + i, stream_id.encode(), c.value, c.headers, 0.0)
            for i, c in enumerate(chunks)]


@pytest.fixture
def settings(test_model: Path) -> Settings:
    return Settings(model_path=test_model, max_batch=4, max_wait_ms=0)


@pytest.fixture
def outputs() -> FakeOutputs:
    return FakeOutputs()


@pytest.fixture
def pipeline(settings: Settings, outputs: FakeOutputs) -> Pipeline:
    return Pipeline(settings, GenreModel(settings.model_path), outputs, FakeCache(), Metrics())


def test_nothing_is_committable_until_the_checkpoints_outputs_are_acknowledged(
        pipeline: Pipeline, outputs: FakeOutputs) -> None:
    stream = records("a", 3.0)  # 12 chunks, eos on the last: every window closes
    pipeline.process(stream)
    pipeline.checkpoint()
    at_checkpoint = outputs.sent
    assert at_checkpoint > 0, "the checkpoint publishes every complete window first"
    assert pipeline.committable() == {}
    outputs.acknowledge(at_checkpoint - 1)  # all but the last prediction
    assert pipeline.committable() == {}
    outputs.acknowledge()
    assert pipeline.committable() == {0: len(stream)}  # the record after the last one
    assert pipeline.committable() == {}, "a checkpoint's offsets are handed out once"


def test_a_failed_send_never_lets_a_later_checkpoint_pass_it(pipeline: Pipeline, outputs: FakeOutputs) -> None:
    first, second = records("a", 2.0), records("b", 2.0, first_offset=8, seed=2)
    pipeline.process(first)
    pipeline.checkpoint()
    sent_by_first = outputs.sent
    pipeline.process(second)
    pipeline.checkpoint()
    outputs.failing = True  # the first checkpoint's outputs failed even after a resend
    with pytest.raises(SinkError):
        pipeline.committable()
    outputs.failing = False
    outputs.acknowledge(sent_by_first)
    assert pipeline.committable() == {0: 8}, "only the first checkpoint is acknowledged"
    outputs.acknowledge()
    assert pipeline.committable() == {0: 16}


def first_needed_chunk(stream_id: str, chunks_received: int, model: GenreModel) -> int:
    """The chunk holding the first sample of the stream's oldest window not yet complete
    (or the next chunk when no window has begun): what a commit may not pass."""
    hop = model.spec.hop_frames * TEST_RECIPE.hop_length
    phase = grid_phase(stream_id, hop, RATE)
    anchor = round(START_MS * RATE / 1000)
    received_end = anchor + chunks_received * CHUNK
    k = math.ceil((anchor - phase) / hop)
    while k * hop + phase + TEST_RECIPE.window_samples <= received_end:
        k += 1
    return min(chunks_received, (k * hop + phase - anchor) // CHUNK)


def test_a_half_filled_windows_chunk_is_never_committed_away(pipeline: Pipeline, outputs: FakeOutputs) -> None:
    stream = records("a", 6.0)
    pipeline.process(stream[:3])  # less than a window: no output yet
    pipeline.checkpoint()
    outputs.acknowledge()
    assert pipeline.committable() == {0: first_needed_chunk("a", 3, pipeline.model)}
    pipeline.process(stream[3:11])  # a few windows done, the next one open
    needed = first_needed_chunk("a", 11, pipeline.model)
    assert 0 < needed < 11
    pipeline.checkpoint()
    assert outputs.sent > 0
    outputs.acknowledge()
    assert pipeline.committable() == {0: needed}
    # What the next owner replays from that commit rebuilds the open window: nothing is lost.
    replayed = Pipeline(pipeline.settings, pipeline.model, FakeOutputs(), FakeCache(), Metrics())
    replayed.process(stream[needed:])
    replayed.run_due_batches(flush=True)
    assert max(window_seqs(outputs)) + 1 in window_seqs(replayed.kafka)


def window_seqs(outputs: FakeOutputs) -> set[int]:
    return {json.loads(m.value)["window_seq"] for m in outputs.messages if m.topic == Settings().output_topic}


def test_safe_offsets_take_the_oldest_need_per_partition(pipeline: Pipeline) -> None:
    pipeline.process(records("a", 6.0, partition=0, first_offset=40)[:3])  # open: no eos yet
    pipeline.process(records("b", 3.0, partition=0, first_offset=43, seed=2))  # closed by its eos
    pipeline.process(records("c", 3.0, partition=1, first_offset=7, seed=3))  # closed by its eos
    open_needs = 40 + first_needed_chunk("a", 3, pipeline.model)
    assert open_needs < 43
    assert pipeline._safe_offsets() == {0: open_needs, 1: 19}


def test_checkpoint_and_flush_returns_what_was_acknowledged_or_raises(
        pipeline: Pipeline, outputs: FakeOutputs) -> None:
    pipeline.process(records("a", 3.0))
    assert pipeline.checkpoint_and_flush() == {0: 12}
    assert outputs.acked == outputs.sent
    pipeline.process(records("b", 3.0, first_offset=12, seed=2))
    outputs.failing = True
    with pytest.raises(SinkError):
        pipeline.checkpoint_and_flush()


def daemon_with_worker(settings: Settings, pipeline: Pipeline) -> tuple[Daemon, FakeSource]:
    """A Daemon whose worker thread runs ``pipeline`` and whose poll side commits to a fake consumer."""
    daemon = Daemon(settings)
    source = FakeSource()
    daemon.pipeline, daemon.source = pipeline, source  # type: ignore[assignment]
    daemon._worker = threading.Thread(target=daemon._work, daemon=True)
    daemon._worker.start()
    return daemon, source


def feed(daemon: Daemon, batch: list[Record]) -> None:
    for record in batch:
        daemon._queue.put(_Item(daemon._generation, record))
    deadline = time.monotonic() + 10
    while daemon._queue.qsize() and time.monotonic() < deadline:
        time.sleep(0.01)


def test_rebalance_barrier_commits_exactly_the_revoked_partitions_acknowledged_offsets(
        settings: Settings, pipeline: Pipeline, outputs: FakeOutputs) -> None:
    daemon, source = daemon_with_worker(settings, pipeline)
    try:
        feed(daemon, records("a", 3.0, partition=0) + records("b", 0.5, partition=1, first_offset=5, seed=2))
        daemon._on_revoked({0})
        assert source.commits == [{0: 12}], "partition 1 is not revoked: not committed here"
        assert pipeline.last_offset == {1: 6} and "a" not in pipeline.framer.streams
        outputs.failing = True
        feed(daemon, records("c", 3.0, partition=1, first_offset=6, seed=3))
        daemon._on_revoked({1})
        assert source.commits == [{0: 12}], "unacknowledged outputs: nothing committed"
    finally:
        daemon._worker_stop.set()


def test_shutdown_barrier_commits_what_was_acknowledged_and_releases_only_what_exists(
        settings: Settings, pipeline: Pipeline, outputs: FakeOutputs) -> None:
    daemon, source = daemon_with_worker(settings, pipeline)
    feed(daemon, records("a", 6.0, partition=2)[:3])  # an open stream: its window's chunks are needed still
    daemon.shutdown()  # no http server, producer or Redis client were started: nothing else to close
    assert source.commits == [{2: first_needed_chunk("a", 3, pipeline.model)}] and source.closed
    assert outputs.acked == outputs.sent
    assert daemon._worker_stop.is_set()



class FakeFuture:
    """What KafkaSink reads of kafka-python's FutureRecordMetadata."""

    def __init__(self, ok: bool) -> None:
        self.is_done, self.ok = True, ok

    def failed(self) -> bool:
        return not self.ok

    def succeeded(self) -> bool:
        return self.ok


class FakeProducer:
    """A producer whose sends fail for the values in ``failing``."""

    def __init__(self, failing: set[bytes]) -> None:
        self.failing = failing
        self.sent: list[bytes] = []

    def send(self, topic: str, key: bytes | None, value: bytes, headers: object) -> FakeFuture:
        self.sent.append(value)
        return FakeFuture(value not in self.failing)

    def flush(self, timeout: float) -> None:
        pass

    def close(self, timeout: float) -> None:
        pass


def test_a_failed_send_holds_the_acknowledged_count_until_it_is_resent(settings: Settings) -> None:
    """KafkaSink's side of the rule: what was sent after a failed message is not acknowledged
    before it, and the sink resends it on a fresh producer."""
    producers = [FakeProducer({b"b"}), FakeProducer({b"b"}), FakeProducer({b"b"}), FakeProducer(set())]
    sink = KafkaSink(settings)
    sink._connect = lambda: producers.pop(0)  # type: ignore[method-assign]
    for value in (b"a", b"b", b"c"):
        sink.send(OutMessage("out", None, value))
    with pytest.raises(SinkError):
        sink.acknowledged()  # "b" failed on the first producer and again on the resend
    assert sink.sent == 3 and sink._acknowledged == 1, "only 'a', before the failure, counts"
    assert sink.acknowledged() == 3  # the next producer takes "b": now everything is acknowledged
    assert producers == []
