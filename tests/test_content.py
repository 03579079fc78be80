"""Content state of a window (streamgenre/model/content.py): level, statistics, the shipped model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from streamgenre.apps.tail import format_prediction
from streamgenre.config import SHIPPED_CONTENT_MODEL, SHIPPED_MODEL
from streamgenre.model.content import (
    ContentModel,
    ContentModelError,
    content_features,
    window_level_dbfs,
    without_level,
)
from streamgenre.model.contract import load_spec
from streamgenre.model.features import clip_windows, resample, to_mono
from tests.conftest import SHARED
from tests.modelgen import TEST_RECIPE

SHIPPED = load_spec(SHIPPED_MODEL)
# The shipped front end without its level normalisation: these tests measure levels of inputs whose
# gain is known to be 0 dB (the daemon hands the content stage each window's gain instead).
RAW = without_level(SHIPPED.recipe)
EXAMPLES = SHARED / "data" / "examples"


def first_window(y: np.ndarray, recipe=RAW) -> np.ndarray:
    return clip_windows(y.astype(np.float32), recipe, 10)[0]


@pytest.mark.parametrize("recipe", [RAW, TEST_RECIPE], ids=["log10_1p", "power_to_db"])
def test_level_is_the_rms_in_dbfs(recipe) -> None:
    rng = np.random.default_rng(0)
    t = np.arange(4 * recipe.sample_rate) / recipe.sample_rate
    assert window_level_dbfs(first_window(rng.normal(0, 0.1, t.size), recipe), recipe) == pytest.approx(-20, abs=1)
    assert window_level_dbfs(first_window(np.sin(2 * np.pi * 997 * t), recipe), recipe) == pytest.approx(-3, abs=1)
    quiet = 0.001 * np.sin(2 * np.pi * 220 * t)
    assert window_level_dbfs(first_window(quiet, recipe), recipe) == pytest.approx(-63, abs=1.5)
    assert window_level_dbfs(first_window(np.zeros(t.size), recipe), recipe) < -100  # the floor: amin or -120


def test_statistics_do_not_depend_on_level() -> None:
    y = np.random.default_rng(1).normal(0, 0.2, 4 * 16000) * np.sin(np.linspace(0, 40, 4 * 16000)) ** 2
    loud, quiet = content_features(first_window(y), RAW), content_features(first_window(y * 0.05), RAW)
    np.testing.assert_allclose(loud, quiet, atol=0.05)


def test_silence_is_decided_by_level_and_probabilities_sum_to_one() -> None:
    model = ContentModel(SHIPPED_CONTENT_MODEL, silence_dbfs=-55.0)
    silent = model.classify(first_window(np.random.default_rng(2).normal(0, 1e-4, 64000)), RAW)
    assert silent.state == "silence" and silent.probs["silence"] > 0.99 and silent.level_dbfs < -70
    loud = model.classify(first_window(np.random.default_rng(2).normal(0, 0.1, 64000)), RAW)
    assert loud.state != "silence" and loud.probs["silence"] < 0.01
    for state in (silent, loud):
        assert sum(state.probs.values()) == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize(("name", "expected"), [("librispeech_5703-47212-0000.ogg", "speech"),
                                                ("brahms_hungarian_dance_5.ogg", "music"),
                                                ("hobbs_lets_go_fishin.ogg", "music")])
def test_shipped_model_on_real_examples(name: str, expected: str) -> None:
    """Held-out recordings (never trained on): most windows get their state."""
    path = EXAMPLES / name
    if not path.is_file():
        pytest.skip(f"{path} is absent (shared data not installed)")
    data, rate = sf.read(path, dtype="float32", always_2d=True, frames=30 * 48000)
    windows = clip_windows(resample(to_mono(data), rate, 16000), SHIPPED.recipe, SHIPPED.hop_frames)
    model = ContentModel(SHIPPED_CONTENT_MODEL, silence_dbfs=-55.0)
    states = [model.classify(w, SHIPPED.recipe).state for w in windows]
    assert states.count(expected) >= 0.75 * len(states), states


def test_a_content_model_for_another_front_end_is_refused(tmp_path: Path) -> None:
    model = ContentModel(SHIPPED_CONTENT_MODEL, silence_dbfs=-55.0)
    with pytest.raises(ContentModelError, match="another feature recipe"):
        model.check_recipe(TEST_RECIPE)


@pytest.mark.parametrize("breakage", ["missing", "not json", "wrong classes", "wrong shape"])
def test_broken_content_model_files_are_clear_errors(tmp_path: Path, breakage: str) -> None:
    spec = json.loads(SHIPPED_CONTENT_MODEL.read_text())
    path = tmp_path / "content.json"
    if breakage == "not json":
        path.write_text("{")
    elif breakage == "wrong classes":
        path.write_text(json.dumps(spec | {"classes": ["music", "speech"]}))
    elif breakage == "wrong shape":
        spec["layers"][-1]["bias"] = spec["layers"][-1]["bias"][:2]
        path.write_text(json.dumps(spec))
    with pytest.raises(ContentModelError):
        ContentModel(path, silence_dbfs=-55.0)


def test_tail_shows_state_and_title() -> None:
    base = {"ts": 1_764_000_000_000, "t_start": 1_764_000_000.0, "stream_id": "radio-1", "window_seq": 7,
            "latency_ms": 5.0, "genre": None,
            "confidence": 0.4, "smoothed_genre": None, "smoothed_probs": {"jazz": 0.6}, "state": "speech",
            "state_probs": {"speech": 0.93}, "title": "News at six"}
    line = format_prediction(base)
    assert "speech" in line and "0.93" in line and "News at six" in line
    music = format_prediction(base | {"genre": "jazz", "smoothed_genre": "jazz", "state": "music", "title": None})
    assert "jazz" in music and "0.60" in music and "News" not in music


def test_a_batch_gets_the_states_each_window_gets_alone() -> None:
    """The daemon classifies its micro-batch at once; silent and audible windows mixed."""
    rng = np.random.default_rng(3)
    y = np.concatenate([rng.normal(0, 0.1, 3 * 16000), np.zeros(4 * 16000), rng.normal(0, 0.05, 5 * 16000)])
    y = (y * np.sin(np.linspace(0, 90, y.size)) ** 2).astype(np.float32)
    batch = clip_windows(y, SHIPPED.recipe, 40)
    model = ContentModel(SHIPPED_CONTENT_MODEL, silence_dbfs=-55.0)
    together = model.classify_batch(batch, SHIPPED.recipe)
    assert {s.state for s in together} >= {"silence"} and len({s.state for s in together}) > 1
    for window, state in zip(batch, together, strict=True):
        alone = model.classify(window, SHIPPED.recipe)
        assert alone.state == state.state and alone.level_dbfs == state.level_dbfs
        assert alone.probs == pytest.approx(state.probs, abs=1e-5)
    np.testing.assert_allclose(np.stack([content_features(w, SHIPPED.recipe) for w in batch[:3]]),
                               content_features_batch(batch[:3]), rtol=1e-5, atol=1e-5)


def content_features_batch(batch: np.ndarray) -> np.ndarray:
    from streamgenre.model.content import group_matrix, mel_power, statistics

    return statistics(group_matrix(SHIPPED.recipe) @ mel_power(batch, SHIPPED.recipe), SHIPPED.recipe)


def test_the_daemons_band_power_gives_the_states_of_the_model_inputs() -> None:
    """The daemon classifies the band power its framer kept (``Window.band_power``); training and
    the offline tools classify model inputs. Same windows, same states: speech-like bursts,
    silence and a quiet tone, through the shipped front end with its level normalisation."""
    from streamgenre.stream.framing import Framer

    recipe, rate = SHIPPED.recipe, SHIPPED.recipe.sample_rate
    rng = np.random.default_rng(5)
    t = np.arange(8 * rate) / rate
    y = np.concatenate([rng.normal(0, 0.1, 8 * rate) * (np.sin(2 * np.pi * 4 * t) > 0), np.zeros(8 * rate),
                        0.01 * np.sin(2 * np.pi * 440 * t)]).astype(np.float32)
    windows = Framer(recipe, recipe.n_frames // 4).frame_clip(y, rate)
    model = ContentModel(SHIPPED_CONTENT_MODEL, silence_dbfs=-55.0)
    daemon = model.classify_bands(np.stack([w.band_power for w in windows]), recipe)
    offline = model.classify_batch(np.stack([w.logmel for w in windows]), recipe,
                                   np.array([w.level_gain_db for w in windows]))
    assert len(windows) > 5 and len({s.state for s in daemon}) > 1
    for ours, theirs in zip(daemon, offline, strict=True):
        assert ours.state == theirs.state
        assert ours.level_dbfs == pytest.approx(theirs.level_dbfs, abs=0.05)
        assert ours.probs == pytest.approx(theirs.probs, abs=1e-3)
