"""Level normalisation: the model input does not depend on the level a stream arrives at."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from streamgenre.model.features import (
    FeatureRecipe,
    clip_windows,
    level_db,
    level_gain_db,
    log_mel,
    reference_window,
    window_input,
)
from streamgenre.stream.framing import Arrival, Framer
from streamgenre.stream.streamstate import grid_phase
from streamgenre.stream.wire import Chunk, ChunkHeaders

RECIPES = {
    "musicnn": FeatureRecipe(sample_rate=16000, n_fft=512, hop_length=256, n_mels=96, n_frames=187, fmax=8000.0,
                             log="log10_1p", log_scale=10000.0, level_ref_db=-5.6, level_max_gain_db=50.0),
    "paper": FeatureRecipe(sample_rate=22050, n_fft=2048, hop_length=512, n_mels=128, n_frames=64,
                           top_db=80.0, mean=-20.0, std=15.0, level_ref_db=5.9, level_max_gain_db=50.0),
}


def music_like(seconds: float, rate: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    tones = sum(np.sin(2 * np.pi * f * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 0.7 * t)) for f in (220, 440, 1320))
    return (0.2 * tones + 0.05 * rng.normal(size=t.size)).astype(np.float32)


def one_window(y: np.ndarray, recipe: FeatureRecipe) -> np.ndarray:
    return window_input(log_mel(y[: recipe.window_samples], recipe), recipe)[0]


@pytest.mark.parametrize("name", RECIPES)
@pytest.mark.parametrize("gain_db", [-40.0, -20.0, 6.0])
def test_input_is_gain_invariant(name: str, gain_db: float) -> None:
    recipe = RECIPES[name]
    y = music_like(recipe.window_samples / recipe.sample_rate, recipe.sample_rate)
    scaled = (y * 10 ** (gain_db / 20)).astype(np.float32)
    np.testing.assert_allclose(one_window(scaled, recipe), one_window(y, recipe), atol=2e-3)
    # Without the normalisation the same gain moves the input a lot: the test can fail.
    off = replace(recipe, level_ref_db=None)
    assert np.abs(one_window(scaled, off) - one_window(y, off)).max() > 0.1


@pytest.mark.parametrize("name", RECIPES)
def test_level_matches_the_contracts_librosa_definition(name: str) -> None:
    recipe = RECIPES[name]
    y = 0.01 * music_like(recipe.window_samples / recipe.sample_rate, recipe.sample_rate, seed=3)
    scale = 1.0 if recipe.log == "log10_1p" else float(np.max(np.abs(recipe.std)))
    assert np.abs(one_window(y, recipe) - reference_window(y[: recipe.window_samples], recipe)).max() * scale <= 2e-3


@pytest.mark.parametrize("name", RECIPES)
def test_silence_is_not_boosted_into_noise(name: str) -> None:
    recipe = RECIPES[name]
    n = recipe.window_samples
    hiss = (1e-5 * np.random.default_rng(1).normal(size=n)).astype(np.float32)  # -100 dBFS
    frames = log_mel(hiss, recipe)
    assert level_gain_db(frames, recipe) == recipe.level_max_gain_db
    boosted = level_db(frames, recipe) + level_gain_db(frames, recipe)
    assert boosted < recipe.level_ref_db - 20.0  # stays far below music at the reference level
    zeros = log_mel(np.zeros(n, np.float32), recipe)
    off = replace(recipe, level_ref_db=None)
    np.testing.assert_array_equal(window_input(zeros, recipe), window_input(zeros, off))


def test_old_sidecars_keep_their_meaning() -> None:
    recipe = FeatureRecipe.from_dict({"sample_rate": 16000, "n_mels": 32, "n_frames": 40})
    assert recipe.level_ref_db is None
    frames = log_mel(music_like(1.0, 16000), recipe)[:, :40]
    assert level_gain_db(frames, recipe) == 0.0


@pytest.mark.parametrize("name", RECIPES)
def test_streaming_windows_equal_offline_windows(name: str) -> None:
    """The daemon's framer (odd chunks, several per pass, a quiet stream) gives clip_windows' inputs."""
    recipe = RECIPES[name]
    hop_frames = recipe.n_frames // 2
    rate = recipe.sample_rate
    y = (0.003 * music_like(9.0, rate, seed=2)).astype(np.float32)  # about -50 dB below full scale
    framer = Framer(recipe, hop_frames)
    arrivals, position, seq = [], 0, 0
    for size in [997, 4801, 13, 7919, 30011, 1] * 20:
        if position >= y.size:
            break
        headers = ChunkHeaders(content_type="audio/pcm;format=f32le", sample_rate=rate, channels=1, seq=seq,
                               ts=round(1000 * position / rate))
        arrivals.append(Arrival(Chunk(stream_id="s", headers=headers, samples=y[position : position + size],
                                      sample_rate=rate), 0, seq, 0.0))
        position, seq = position + size, seq + 1
    windows = [w for first in range(0, len(arrivals), 3) for r in framer.push_many(arrivals[first : first + 3])
               for w in r.windows]
    phase = grid_phase("s", hop_frames * recipe.hop_length, rate)
    offline = clip_windows(y[phase:], recipe, hop_frames)
    assert len(windows) == len(offline) > 2
    for window in windows:
        np.testing.assert_allclose(window.logmel, offline[window.window_seq], atol=1e-4)


def test_content_level_sees_the_streams_real_level() -> None:
    """Silence and dBFS are measured on the audio as it arrived, not at the reference level: the
    band power the framer keeps (the daemon's path) gives the level of the model input with its
    gain undone (the offline path), and the level of a front end without normalisation."""
    from streamgenre.model.content import group_matrix, level_of, mel_power, undo_level_gain
    from streamgenre.stream.content import level_only_states

    recipe = RECIPES["musicnn"]
    y = (0.001 * music_like(2 * recipe.window_samples / recipe.sample_rate, recipe.sample_rate)).astype(np.float32)
    window = Framer(recipe, recipe.n_frames // 2).frame_clip(y, recipe.sample_rate)[0]
    plain = Framer(replace(recipe, level_ref_db=None), recipe.n_frames // 2).frame_clip(y, recipe.sample_rate)[0]
    assert window.level_gain_db > 20.0 and plain.level_gain_db == 0.0  # the quiet window is raised
    (daemon,) = level_only_states(window.band_power[None], -55.0)
    (unnormalised,) = level_only_states(plain.band_power[None], -55.0)
    offline = level_of(group_matrix(recipe) @ undo_level_gain(mel_power(window.logmel[None], recipe),
                                                              np.array([window.level_gain_db])))
    assert daemon.level_dbfs == pytest.approx(float(offline[0]), abs=0.05)
    assert daemon.level_dbfs == pytest.approx(unnormalised.level_dbfs, abs=0.05)
    assert daemon.state == unnormalised.state
