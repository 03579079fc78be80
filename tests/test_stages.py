"""Pure middle stages without a broker: framing, smoothing, batching."""

from __future__ import annotations

import gc
import logging
from collections.abc import Iterator

import numpy as np
import pytest

from streamgenre.stream.batching import MicroBatcher
from streamgenre.stream.framing import Arrival, Framer
from streamgenre.stream.metrics import GcPauses, Metrics
from streamgenre.stream.pipeline import DeadLetterLog
from streamgenre.stream.smoothing import GenreSmoother
from streamgenre.stream.wire import Chunk, ChunkHeaders
from tests.modelgen import TEST_RECIPE

RATE = TEST_RECIPE.sample_rate
HOP_FRAMES = TEST_RECIPE.n_frames // 2
HOP = HOP_FRAMES * TEST_RECIPE.hop_length


def chunk(stream: str, seq: int, ts: int, seconds: float = 0.5, rate: int = RATE, eos: bool = False,
          title: str | None = None) -> Chunk:
    samples = np.random.default_rng(seq).normal(0, 0.1, int(seconds * rate)).astype(np.float32)
    headers = ChunkHeaders(content_type="audio/pcm;format=f32le", sample_rate=rate, channels=1, seq=seq, ts=ts, eos=eos,
                           title=title)
    return Chunk(stream_id=stream, headers=headers, samples=samples, sample_rate=rate)


def feed(framer: Framer, chunks: list[Chunk], partition: int = 0, first_offset: int = 0) -> list:
    results = []
    for offset, c in enumerate(chunks, start=first_offset):
        results.append(framer.push(c, partition, offset, received_at=float(offset)))
    return results


def test_windows_on_absolute_grid_are_stable_across_replay() -> None:
    """Replaying from a later chunk gives the same window_seq for the same audio."""
    chunks = [chunk("a", seq, 1000 * 500 + 500 * seq) for seq in range(12)]
    first = [w for r in feed(Framer(TEST_RECIPE, HOP_FRAMES), chunks) for w in r.windows]
    replay = [w for r in feed(Framer(TEST_RECIPE, HOP_FRAMES), chunks[4:], first_offset=4) for w in r.windows]
    assert [w.window_seq for w in first] == list(range(first[0].window_seq, first[0].window_seq + len(first)))
    replayed = {w.window_seq: w for w in replay}
    assert set(replayed) < {w.window_seq for w in first}
    for window in first:
        if window.window_seq in replayed:
            np.testing.assert_allclose(replayed[window.window_seq].logmel, window.logmel, atol=1e-4)


def test_needed_offset_points_at_chunk_holding_next_window_start() -> None:
    framer = Framer(TEST_RECIPE, HOP_FRAMES)
    chunks = [chunk("a", seq, 250 * seq, seconds=0.25) for seq in range(20)]
    for offset, c in enumerate(chunks):
        framer.push(c, 3, offset, 0.0)
        needed = framer.needed_offsets()[3]
        state = framer.streams["a"]
        next_start = state.window_start(state.next_window)
        # The needed chunk starts at or before the next window and the one after starts later.
        assert needed * 4000 <= next_start
        assert needed == offset or (needed + 1) * 4000 > next_start


def test_seq_gap_and_time_jump_reset_the_window() -> None:
    framer = Framer(TEST_RECIPE, HOP_FRAMES, max_gap_s=1.0)
    assert feed(framer, [chunk("a", 0, 0), chunk("a", 1, 500)])[-1].reset_reason is None
    assert framer.push(chunk("a", 3, 1500), 0, 2, 0.0).reset_reason == "seq_gap"
    assert framer.push(chunk("a", 4, 9000), 0, 3, 0.0).reset_reason == "time_jump"
    assert framer.push(chunk("a", 5, 9500, rate=22050), 0, 4, 0.0).reset_reason == "format"
    assert framer.push(chunk("a", 5, 9500, rate=22050), 0, 5, 0.0).duplicate


def test_window_carries_the_title_of_the_chunk_that_completes_it() -> None:
    framer = Framer(TEST_RECIPE, HOP_FRAMES)
    titles = ["Song A"] * 8 + [None] * 2 + ["Song B"] * 8
    results = feed(framer, [chunk("a", seq, 500 * seq, title=title) for seq, title in enumerate(titles)])
    seen = [(title, window.title) for title, result in zip(titles, results, strict=True) for window in result.windows]
    assert seen and all(chunk_title == window_title for chunk_title, window_title in seen)
    assert {"Song A", None, "Song B"} <= {window_title for _, window_title in seen}


def test_push_many_equals_pushing_one_by_one() -> None:
    """One spectral pass over several streams' chunks (with a duplicate, a gap, an end of stream
    and a stream seen twice in one pass) gives the same results as pushing each chunk alone."""
    chunks = []
    for seq in range(10):
        chunks += [chunk("a", seq, 500 * seq), chunk("b", seq, 250 + 500 * seq, eos=seq == 9)]
    chunks += [chunk("a", 9, 4500), chunk("a", 12, 6000), chunk("a", 13, 6500)]
    arrivals = [Arrival(c, 0, offset, float(offset)) for offset, c in enumerate(chunks)]
    one_by_one = Framer(TEST_RECIPE, HOP_FRAMES)
    expected = [one_by_one.push(*arrival) for arrival in arrivals]
    together = Framer(TEST_RECIPE, HOP_FRAMES)
    results = together.push_many(arrivals[:7]) + together.push_many(arrivals[7:])
    assert [(r.reset_reason, r.duplicate) for r in results] == [(r.reset_reason, r.duplicate) for r in expected]
    assert {"duplicate", "seq_gap"} <= {"duplicate" if r.duplicate else r.reset_reason for r in results}
    windows = [w for r in results for w in r.windows]
    assert [(w.stream_id, w.window_seq) for w in windows] == [
        (w.stream_id, w.window_seq) for r in expected for w in r.windows
    ]
    assert len(windows) >= 8
    for got, want in zip(windows, [w for r in expected for w in r.windows], strict=True):
        np.testing.assert_allclose(got.logmel, want.logmel, atol=1e-4)
    assert together.needed_offsets() == one_by_one.needed_offsets()
    assert set(together.streams) == set(one_by_one.streams) == {"a"}


def test_reset_never_glues_audio_across_a_gap() -> None:
    framer = Framer(TEST_RECIPE, HOP_FRAMES)
    feed(framer, [chunk("a", 0, 0, seconds=0.9)])
    result = framer.push(chunk("a", 2, 900, seconds=0.9), 0, 1, 0.0)
    assert result.reset_reason == "seq_gap" and result.windows == []


def test_eos_and_idle_eviction_bound_memory() -> None:
    framer = Framer(TEST_RECIPE, HOP_FRAMES, max_streams=3)
    feed(framer, [chunk("a", 0, 0), chunk("a", 1, 500, eos=True)])
    assert "a" not in framer.streams
    for name in "bcde":
        framer.push(chunk(name, 0, 0), 0, 0, received_at={"b": 1.0, "c": 2.0, "d": 3.0, "e": 4.0}[name])
    assert set(framer.streams) == {"c", "d", "e"}  # b was least recently active
    assert framer.evict_idle(now=10.0, idle_timeout_s=7.5) == ["c"]
    per_stream = max(s.state_bytes() for s in framer.streams.values())
    assert per_stream < 200_000


def test_drop_partitions_forgets_their_streams() -> None:
    framer = Framer(TEST_RECIPE, HOP_FRAMES)
    framer.push(chunk("a", 0, 0), 1, 0, 0.0)
    framer.push(chunk("b", 0, 0), 2, 0, 0.0)
    framer.drop_partitions({1})
    assert set(framer.streams) == {"b"} and set(framer.needed_offsets()) == {2}


def test_smoother_needs_sustained_lead_before_a_change() -> None:
    labels = ["jazz", "rock"]
    smoother = GenreSmoother(labels, alpha=1.0, change_min_s=3.0)
    jazz, rock = np.array([0.9, 0.1]), np.array([0.1, 0.9])
    first = smoother.update(jazz, 0, 1)
    assert first is not None and first.from_genre is None and first.to_genre == "jazz"
    assert smoother.update(rock, 1, 2) is None  # one odd window is not a change
    assert smoother.update(jazz, 2, 3) is None
    assert smoother.update(rock, 3, 4) is None
    assert smoother.update(rock, 4, 5) is None
    change = smoother.update(rock, 5, 6)
    assert change is not None and (change.from_genre, change.to_genre, change.at_t) == ("jazz", "rock", 3)


def test_smoother_ema_weights_newest_window() -> None:
    smoother = GenreSmoother(["a", "b"], alpha=0.25, change_min_s=0)
    smoother.update(np.array([1.0, 0.0]), 0, 1)
    smoother.update(np.array([0.0, 1.0]), 1, 2)
    np.testing.assert_allclose(smoother.probs, [0.75, 0.25])
    with pytest.raises(ValueError):
        GenreSmoother(["a"], alpha=0.0, change_min_s=0)


def test_batcher_runs_when_full_or_due() -> None:
    batcher = MicroBatcher(max_batch=3, max_wait_ms=100)
    assert batcher.seconds_until_due(0.0) is None and not batcher.due(0.0)
    batcher.add("w1", now=10.0)  # type: ignore[arg-type]
    assert not batcher.due(10.05) and batcher.seconds_until_due(10.05) == pytest.approx(0.05)
    assert batcher.due(10.2)
    batcher.add("w2", now=10.0)  # type: ignore[arg-type]
    batcher.add("w3", now=10.0)  # type: ignore[arg-type]
    batcher.add("w4", now=10.0)  # type: ignore[arg-type]
    assert batcher.due(10.0)
    assert batcher.take() == ["w1", "w2", "w3"] and len(batcher) == 1
    # The window left behind keeps its own deadline (added at 10.0, due at 10.1).
    assert not batcher.due(10.05) and batcher.due(10.11)
    batcher.add("w5", now=10.3)  # type: ignore[arg-type]
    assert batcher.take() == ["w4", "w5"] and batcher.seconds_until_due(10.3) is None


def test_gc_pauses_are_timed_by_generation_until_closed() -> None:
    metrics = Metrics()
    callbacks = len(gc.callbacks)
    pauses = GcPauses(metrics.gc_pause)
    gc.collect()
    pauses.close()
    assert len(gc.callbacks) == callbacks

    def full_collections() -> float | None:
        return metrics.registry.get_sample_value("streamgenre_gc_pause_seconds_count", {"generation": "2"})

    timed = full_collections()
    assert timed is not None and timed >= 1
    gc.collect()
    assert full_collections() == timed


def test_dead_letters_are_logged_at_most_once_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    dead_letters = DeadLetterLog(interval_s=10.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="streamgenre.stream.pipeline"):
        logged = [dead_letters.record("bad_key", f"in/0/{i}", "stream id is empty") for i in range(5)]
        now[0] += 10.0
        logged.append(dead_letters.record("bad_key", "in/0/5", "stream id is empty"))
    assert logged == [True, False, False, False, False, True]
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["dead letter bad_key at in/0/0: stream id is empty",
                     "dead letter bad_key at in/0/5: stream id is empty (+4 more since the last such line)"]


@pytest.mark.parametrize("seconds", [0.3, 1.0, 1.5])
def test_an_ended_stream_too_short_for_the_grid_gets_exactly_one_window(seconds: float) -> None:
    """Issue 17.4: whether a short upload got a window depended on its id's grid phase."""
    window_s = TEST_RECIPE.window_samples / RATE
    for index in range(20):  # different ids, different phases
        stream = f"upload-{index}"
        pieces = round(seconds / 0.1)
        chunks = [chunk(stream, seq, 10_000_000 + 100 * seq, seconds=0.1, eos=seq == pieces - 1)
                  for seq in range(pieces)]
        windows = [w for r in feed(Framer(TEST_RECIPE, HOP_FRAMES), chunks) for w in r.windows]
        assert len(windows) >= 1, f"{stream}: {seconds} s upload got no window"
        if seconds < window_s:
            assert len(windows) == 1 and windows[0].short
            only = windows[0]
            assert only.logmel.shape == (1, TEST_RECIPE.n_mels, TEST_RECIPE.n_frames)
            assert only.t_start == pytest.approx(10_000.0) and only.t_end == pytest.approx(10_000.0 + seconds, abs=1e-3)
        else:
            assert sum(w.short for w in windows) <= 1


def test_a_stream_with_a_grid_window_gets_no_extra_short_one() -> None:
    chunks = [chunk("long", seq, 10_000_000 + 500 * seq, eos=seq == 9) for seq in range(10)]
    windows = [w for r in feed(Framer(TEST_RECIPE, HOP_FRAMES), chunks) for w in r.windows]
    assert windows and not any(w.short for w in windows)


def test_a_live_stream_keeps_no_head_audio_after_its_first_window() -> None:
    framer = Framer(TEST_RECIPE, HOP_FRAMES)
    feed(framer, [chunk("live", seq, 10_000_000 + 500 * seq) for seq in range(10)])
    assert framer.streams["live"].windows_emitted and not framer.streams["live"]._head


def test_long_container_is_framed_block_by_block_like_one_array() -> None:
    """A whole upload in one message (``Chunk.more``) gives the windows of the same audio sent at once."""
    rate = 22050  # resampled: the soxr stream must carry its state across the blocks
    audio = np.random.default_rng(7).normal(0, 0.1, int(25 * rate)).astype(np.float32)
    headers = ChunkHeaders(content_type="audio/ogg", seq=0, ts=5_000, eos=True)
    whole = Chunk(stream_id="up", headers=headers, samples=audio, sample_rate=rate)
    block = 10 * rate
    blocks = iter([audio[block : 2 * block], audio[2 * block :]])
    split = Chunk.model_construct(stream_id="up", headers=headers, samples=audio[:block], sample_rate=rate,
                                  more=blocks)
    expected = Framer(TEST_RECIPE, HOP_FRAMES).push(whole, 0, 0, 0.0).windows
    framer = Framer(TEST_RECIPE, HOP_FRAMES)
    got = framer.push(split, 0, 0, 0.0).windows
    assert [w.window_seq for w in got] == [w.window_seq for w in expected] and len(got) > 10
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_allclose(a.logmel, b.logmel, atol=1e-3)
    assert "up" not in framer.streams  # eos closed it


def test_long_container_that_fails_midway_gives_no_windows() -> None:
    from streamgenre.stream.wire import BadInput, Reason

    def failing() -> Iterator[np.ndarray]:
        yield np.zeros(RATE * 10, np.float32)
        raise BadInput(Reason.CORRUPT_CONTAINER, "broken block")

    headers = ChunkHeaders(content_type="audio/flac", seq=0, ts=0)
    bad = Chunk.model_construct(stream_id="up", headers=headers, samples=np.zeros(RATE * 10, np.float32),
                                sample_rate=RATE, more=failing())
    framer = Framer(TEST_RECIPE, HOP_FRAMES)
    good = chunk("live", 0, 0, seconds=5.0)
    results = framer.push_many([Arrival(good, 0, 0, 0.0), Arrival(bad, 0, 1, 0.0)])
    assert results[0].windows and results[0].bad_input is None
    assert results[1].windows == [] and results[1].bad_input is not None
    assert results[1].bad_input.reason is Reason.CORRUPT_CONTAINER
    assert set(framer.streams) == {"live"}
