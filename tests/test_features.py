"""The shared log-mel front end equals librosa, streamed or not."""

from __future__ import annotations

import numpy as np
import pytest

from streamgenre.model.features import (
    FeatureRecipe,
    StreamingLogMel,
    clip_windows,
    frame_signal,
    log_mel,
    reference_window,
    window_input,
)
from streamgenre.stream.framing import Arrival, Framer
from streamgenre.stream.streamstate import grid_phase
from streamgenre.stream.wire import Chunk, ChunkHeaders

RECIPES = {
    "paper": FeatureRecipe(sample_rate=22050, n_fft=2048, hop_length=512, n_mels=128, n_frames=64, top_db=80.0),
    "musicnn": FeatureRecipe(sample_rate=16000, n_fft=512, hop_length=256, n_mels=96, n_frames=187, fmax=8000.0,
                             log="log10_1p", log_scale=10000.0),
    "htk-short-window": FeatureRecipe(sample_rate=16000, n_fft=1024, hop_length=160, win_length=400,
                                      window="hamming", n_mels=40, htk=True, norm=None, power=1.0, n_frames=50,
                                      ref=1.0, top_db=None, mean=-20.0, std=15.0),
}


def music_like(seconds: float, rate: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    tones = sum(np.sin(2 * np.pi * f * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 0.7 * t)) for f in (220, 440, 1320))
    return (0.2 * tones + 0.05 * rng.normal(size=t.size)).astype(np.float32)


@pytest.mark.parametrize("name", RECIPES)
def test_window_matches_librosa(name: str) -> None:
    recipe = RECIPES[name]
    y = music_like(recipe.window_samples / recipe.sample_rate + 0.01, recipe.sample_rate)[: recipe.window_samples]
    ours = window_input(log_mel(y, recipe), recipe)[0]
    assert ours.shape == (recipe.n_mels, recipe.n_frames)
    scale = 1.0 if recipe.log == "log10_1p" else float(np.max(np.abs(recipe.std)))
    # dB in the contract; normalised values are dB / std, so compare in dB.
    assert np.max(np.abs(ours - reference_window(y, recipe))) * scale <= 1e-3


@pytest.mark.parametrize("name", RECIPES)
def test_streaming_frames_equal_whole_signal(name: str) -> None:
    recipe = RECIPES[name]
    y = music_like(4.0, recipe.sample_rate, seed=1)
    stream = StreamingLogMel(recipe)
    rng = np.random.default_rng(3)
    parts, position = [], 0
    while position < y.size:
        size = int(rng.integers(1, 3 * recipe.n_fft))
        parts.append(stream.push(y[position : position + size]))
        position += size
    np.testing.assert_allclose(np.concatenate(parts, axis=1), log_mel(y, recipe), atol=1e-4)
    assert stream.pending_samples < recipe.n_fft


@pytest.mark.parametrize("name", ["paper", "musicnn"])
@pytest.mark.parametrize("chunks_per_push", [1, 5])
def test_daemon_windows_spanning_odd_chunks_match_librosa(name: str, chunks_per_push: int) -> None:
    """Windows built by the framer from odd-sized chunks equal librosa on the same samples,
    whether chunks are pushed one at a time or several per spectral pass."""
    recipe = RECIPES[name]
    hop_frames = recipe.n_frames // 2
    hop = hop_frames * recipe.hop_length
    rate = recipe.sample_rate
    y = music_like(12.0, rate, seed=2)
    framer = Framer(recipe, hop_frames)
    start_ms = 0  # the stream starts at the grid origin, so window k starts at sample phase + k * hop
    phase = grid_phase("s", hop, rate)
    sizes = [997, 4801, 13, 7919, 30011, 1]
    arrivals, position, seq = [], 0, 0
    while position < y.size:
        size = sizes[seq % len(sizes)]
        piece = y[position : position + size]
        headers = ChunkHeaders(content_type="audio/pcm;format=f32le", sample_rate=rate, channels=1, seq=seq,
                               ts=start_ms + round(1000 * position / rate))
        arrivals.append(Arrival(Chunk(stream_id="s", headers=headers, samples=piece, sample_rate=rate), 0, seq, 0.0))
        position += size
        seq += 1
    windows = [
        window
        for first in range(0, len(arrivals), chunks_per_push)
        for result in framer.push_many(arrivals[first : first + chunks_per_push])
        for window in result.windows
    ]
    assert [w.window_seq for w in windows] == list(range(len(windows)))
    assert len(windows) == 1 + (y.size - phase - recipe.window_samples) // hop
    for window in windows:
        start = phase + window.window_seq * hop
        assert window.t_start == pytest.approx(start / rate)
        segment = y[start : start + recipe.window_samples]
        scale = 1.0 if recipe.log == "log10_1p" else float(np.max(np.abs(recipe.std)))
        assert np.max(np.abs(window.logmel[0] - reference_window(segment, recipe))) * scale <= 1e-3


def test_clip_windows_are_daemon_windows() -> None:
    recipe = RECIPES["paper"]
    y = music_like(6.0, recipe.sample_rate)
    windows = clip_windows(y, recipe, hop_frames=32)
    hop = 32 * recipe.hop_length
    assert windows.shape == (1 + (y.size - recipe.window_samples) // hop, 1, recipe.n_mels, recipe.n_frames)
    np.testing.assert_allclose(windows[2, 0], reference_window(y[2 * hop : 2 * hop + recipe.window_samples], recipe),
                               atol=1e-4)


def test_recipe_rejects_unknown_keys() -> None:
    with pytest.raises(ValueError, match="unknown feature recipe keys"):
        FeatureRecipe.from_dict({"sample_rate": 16000, "n_fft_typo": 512})


def test_frames_are_read_only_views_of_any_layout() -> None:
    recipe = RECIPES["paper"]
    y = music_like(0.5, recipe.sample_rate)
    expected = np.stack([y[i : i + recipe.n_fft] for i in range(0, y.size - recipe.n_fft + 1, recipe.hop_length)])
    frames = frame_signal(y, recipe)
    assert np.array_equal(frames, expected) and not frames.flags.writeable
    assert np.shares_memory(frames, y)  # a view, not a copy, for the usual contiguous chunk
    strided = np.repeat(y, 2)[::2]  # same samples, non-contiguous (e.g. one channel of interleaved PCM)
    assert np.array_equal(frame_signal(strided, recipe), expected)
    assert frame_signal(y[: recipe.n_fft - 1], recipe).shape == (0, recipe.n_fft)
