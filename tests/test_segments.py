"""Segments and dead air (pure stage, no broker): streamgenre/stream/segments.py."""

from __future__ import annotations

import pytest

from streamgenre.stream.segments import Segment, Segmenter, WindowState

HOP = 3.0


def window(i: int, state: str, genre: str | None = None, title: str | None = None, p: float = 0.9) -> WindowState:
    others = {s: (1 - p) / 3 for s in ("music", "speech", "mixed", "silence") if s != state}
    genre_probs = {genre: 0.8, "rock": 0.2} if genre else None
    return WindowState(i * HOP, i * HOP + HOP, state, {state: p, **others}, genre, genre_probs, title)


def run(labels: list[tuple[str, str | None, str | None]], min_s: float = 8.0, dead_air_s: float = 10.0):
    segmenter = Segmenter("radio-1", min_s, dead_air_s)
    closed: list[Segment] = []
    alerts = []
    for i, (state, genre, title) in enumerate(labels):
        segments, raised = segmenter.update(window(i, state, genre, title))
        closed += segments
        alerts += raised
    return closed + segmenter.close(), alerts


def song(n: int, genre: str = "jazz", title: str | None = "A") -> list[tuple[str, str | None, str | None]]:
    return [("music", genre, title)] * n


def test_a_three_second_jingle_never_splits_a_song() -> None:
    segments, _ = run([*song(10), ("speech", None, "A"), *song(10)])
    assert [(s.state, s.start, s.end, s.windows) for s in segments] == [("music", 0.0, 63.0, 21)]


def test_a_jingle_just_under_the_minimum_does_not_split_either() -> None:
    segments, _ = run(song(5) + [("music", "pop", "A")] * 2 + song(5), min_s=6.5)
    assert len(segments) == 1 and segments[0].genre == "jazz"


def test_song_speech_silence_song_gives_four_segments_in_order() -> None:
    labels = [*song(8, title="A"), *[("speech", None, "News")] * 5, *[("silence", None, "News")] * 4,
              *song(8, "rock", "B")]
    segments, alerts = run(labels)
    assert [(s.state, s.genre, s.title) for s in segments] == [
        ("music", "jazz", "A"), ("speech", None, "News"), ("silence", None, "News"), ("music", "rock", "B")]
    # Boundaries sit where the new label's run began, not where it was confirmed.
    assert [(s.start, s.end) for s in segments] == [(0.0, 24.0), (24.0, 39.0), (39.0, 51.0), (51.0, 75.0)]
    assert [(a.kind, a.at_t, a.silent_s) for a in alerts] == [("dead_air_start", 39.0, 12.0),
                                                             ("dead_air_end", 51.0, 12.0)]


def test_silence_shorter_than_dead_air_raises_nothing() -> None:
    _, alerts = run(song(4) + [("silence", None, None)] * 3 + song(4))
    assert alerts == []


def test_dead_air_is_raised_once_per_episode() -> None:
    _, alerts = run([("silence", None, None)] * 20)
    assert [a.kind for a in alerts] == ["dead_air_start"]


def test_with_a_title_a_genre_flip_inside_the_song_does_not_split_it() -> None:
    segments, _ = run(song(6, "jazz", "A") + song(4, "rock", "A") + song(4, "jazz", "A"))
    assert [(s.title, s.genre, s.windows) for s in segments] == [("A", "jazz", 14)]
    assert segments[0].to_dict()["genre_confidence"] == pytest.approx(10 * 0.8 / 14, abs=1e-5)


def test_without_titles_a_lasting_genre_change_splits() -> None:
    segments, _ = run(song(6, "jazz", None) + song(4, "rock", None))
    assert [(s.genre, s.start) for s in segments] == [("jazz", 0.0), ("rock", 18.0)]


def test_a_new_title_starts_a_segment_once_it_holds() -> None:
    segments, _ = run(song(6, title="A") + song(6, title="B"))
    assert [(s.title, s.start) for s in segments] == [("A", 0.0), ("B", 18.0)]


def test_flicker_before_a_challenger_stays_with_the_old_segment() -> None:
    labels = song(6) + [("speech", None, "A"), ("mixed", None, "A")] + [("speech", None, "A")] * 4
    segments, _ = run(labels)
    # The mixed window broke the speech run, so the speech segment starts after it.
    assert [(s.state, s.start, s.end) for s in segments] == [("music", 0.0, 24.0), ("speech", 24.0, 36.0)]


def test_alternating_labels_are_not_held_without_bound() -> None:
    segmenter = Segmenter("radio-1", 8.0, 10.0)
    for i in range(4):
        segmenter.update(window(i, "music", "jazz"))
    closed = []
    for i in range(4, 40):
        segments, _ = segmenter.update(window(i, "speech" if i % 2 else "mixed"))
        closed += segments
        assert len(segmenter.pending) * HOP <= 2 * 8.0 + HOP
    assert closed and closed[0].state == "music"


def test_confidence_is_the_mean_probability_of_the_segments_own_state() -> None:
    segmenter = Segmenter("radio-1", 8.0, 10.0)
    for i, p in enumerate([0.9, 0.7, 0.8]):
        segmenter.update(window(i, "speech", p=p))
    segmenter.update(window(3, "music", "jazz", p=0.6))  # pending, then folded in by close()
    (segment,) = segmenter.close()
    message = segment.to_dict()
    assert message["state"] == "speech" and message["windows"] == 4
    assert message["confidence"] == pytest.approx((0.9 + 0.7 + 0.8 + 0.4 / 3) / 4, abs=1e-5)
    assert message["genre_confidence"] is None and message["duration_s"] == 12.0


def test_close_without_windows_returns_nothing() -> None:
    assert Segmenter("radio-1", 8.0, 10.0).close() == []


def content_stage():
    from streamgenre.config import Settings
    from streamgenre.stream.content import ContentStage
    from streamgenre.stream.metrics import Metrics
    from tests.modelgen import TEST_RECIPE

    metrics = Metrics()
    return ContentStage(Settings(content_model_path=None, stream_down_s=30.0), TEST_RECIPE, metrics), metrics


def test_stream_down_is_raised_once_and_cleared_by_audio() -> None:
    import json

    stage, metrics = content_stage()
    assert stage.check_down({"a": (12.0, 100.0)}) == []
    (down,) = stage.check_down({"a": (31.0, 100.0), "b": (2.0, 50.0)})
    assert down[0] == "a" and json.loads(down[1])["kind"] == "stream_down"
    assert json.loads(down[1])["at_t"] == 100.0 and metrics.streams_down._value.get() == 1
    assert stage.check_down({"a": (33.0, 100.0)}) == []  # once per episode
    (up,) = stage.audio_arrived(["a", "b"], {"a": 140.0, "b": 60.0})
    assert json.loads(up[1])["kind"] == "stream_up" and json.loads(up[1])["silent_s"] == 40.0
    assert metrics.streams_down._value.get() == 0 and stage.audio_arrived(["a"], {"a": 141.0}) == []


def test_dead_air_gauge_follows_the_episode_and_the_stream_closing() -> None:
    stage, metrics = content_stage()
    for i in range(5):
        stage.observe("a", window(i, "silence"))
    assert metrics.dead_air_streams._value.get() == 1
    stage.close(["a"])
    assert metrics.dead_air_streams._value.get() == 0


def test_genre_smoothing_restarts_only_after_a_long_break() -> None:
    stage, _ = content_stage()
    assert not stage.new_programme("a", "speech", 10.0)
    assert not stage.new_programme("a", "music", 13.0)  # 3 s of talk: the same song goes on
    assert not stage.new_programme("a", "silence", 20.0)
    assert stage.new_programme("a", "music", 29.0)  # 9 s >= segment_min_s (8): a new programme
