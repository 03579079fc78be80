"""Split logic and audio loading of ``training.data`` (no shared data needed)."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from streamgenre.model.features import FeatureRecipe, clip_windows
from training.data import (
    Clip,
    DatasetNotFoundError,
    cached_log_mel,
    drop_unreadable,
    labels_of,
    load_split,
    read_audio,
    scan_clips,
    stratified_split,
    window_starts,
    windows_from_frames,
)

GENRES = ("blues", "classical", "metal")


def _write_dataset(root: Path, per_genre: int = 10, seconds: float = 0.2, sr: int = 22050) -> None:
    rng = np.random.default_rng(0)
    for genre in GENRES:
        (root / genre).mkdir(parents=True)
        for i in range(per_genre):
            # Alternate containers: split lists name .ogg files but matching is by stem.
            ext = ".wav" if i % 2 == 0 else ".flac"
            sf.write(root / genre / f"{genre}.{i:05d}{ext}", 0.1 * rng.standard_normal(int(seconds * sr)), sr)


def test_missing_root_has_a_clear_message(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match="does not exist"):
        load_split(tmp_path / "gtzan", "filtered")


def test_scan_finds_every_clip_once(tmp_path: Path) -> None:
    _write_dataset(tmp_path)
    (tmp_path / "splits").mkdir()
    # A second copy of one clip in another container must not count twice; .wav is preferred.
    sf.write(tmp_path / "blues" / "blues.00000.ogg", np.zeros(4410), 22050)
    clips = scan_clips(tmp_path)
    assert len(clips) == 30
    assert Clip(tmp_path / "blues" / "blues.00000.wav", "blues") in clips


def test_random_split_is_stratified_disjoint_and_seeded(tmp_path: Path) -> None:
    _write_dataset(tmp_path)
    splits = load_split(tmp_path, "random", seed=3)
    sizes = {name: Counter(c.genre for c in clips) for name, clips in splits.items()}
    assert sizes == {
        "train": Counter({g: 8 for g in GENRES}),
        "valid": Counter({g: 1 for g in GENRES}),
        "test": Counter({g: 1 for g in GENRES}),
    }
    ids = [c.clip_id for clips in splits.values() for c in clips]
    assert len(ids) == len(set(ids)) == 30
    assert load_split(tmp_path, "random", seed=3) == splits
    assert load_split(tmp_path, "random", seed=4) != splits
    assert labels_of(splits) == list(GENRES)


def test_stratified_split_rejects_bad_fractions() -> None:
    with pytest.raises(ValueError):
        stratified_split([], fractions=(0.5, 0.1, 0.1))


def test_filtered_lists_match_by_stem_and_skip_missing(tmp_path: Path) -> None:
    _write_dataset(tmp_path)
    (tmp_path / "splits").mkdir()
    lists = {
        "train": [
            "blues/blues.00000.ogg",
            "blues/blues.00001.ogg",
            "metal/metal.00003.ogg",
            "jazz/jazz.00054.ogg",
        ],
        "valid": ["classical/classical.00002.ogg", "", "# comment", "blues/blues.00099.ogg"],
        "test": ["metal/metal.00009.au"],
    }
    for name, lines in lists.items():
        (tmp_path / "splits" / f"filtered_{name}.txt").write_text("\n".join(lines) + "\n")
    splits = load_split(tmp_path, "filtered")
    train_ids = [c.clip_id for c in splits["train"]]
    assert train_ids == ["blues/blues.00000", "blues/blues.00001", "metal/metal.00003"]
    assert splits["train"][1].path.suffix == ".flac"
    assert [c.clip_id for c in splits["valid"]] == ["classical/classical.00002"]
    assert [c.clip_id for c in splits["test"]] == ["metal/metal.00009"]


def test_overlapping_lists_are_refused(tmp_path: Path) -> None:
    _write_dataset(tmp_path)
    (tmp_path / "splits").mkdir()
    (tmp_path / "splits" / "mini_train.txt").write_text("blues/blues.00000.ogg\n")
    (tmp_path / "splits" / "mini_test.txt").write_text("blues/blues.00000.wav\n")
    with pytest.raises(ValueError, match="share clips"):
        load_split(tmp_path, "mini")


def test_protocol_without_its_lists_is_an_error(tmp_path: Path) -> None:
    _write_dataset(tmp_path)
    with pytest.raises(DatasetNotFoundError, match="split list"):
        load_split(tmp_path, "mini")
    with pytest.raises(ValueError, match="unknown protocol"):
        load_split(tmp_path, "kfold")


def test_read_audio_downmixes_and_resamples(tmp_path: Path) -> None:
    t = np.arange(44100) / 44100
    stereo = np.stack([np.sin(2 * np.pi * 440 * t), np.sin(2 * np.pi * 440 * t)], axis=1) * 0.5
    sf.write(tmp_path / "a.wav", stereo, 44100)
    y = read_audio(tmp_path / "a.wav", 22050)
    assert y.dtype == np.float32 and y.shape == (22050,)
    assert np.abs(y).max() == pytest.approx(0.5, abs=0.01)


def test_cached_frames_give_the_daemons_windows(tmp_path: Path) -> None:
    recipe = FeatureRecipe(n_fft=512, hop_length=256, n_mels=32, n_frames=16, mean=-20.0, std=10.0)
    rng = np.random.default_rng(1)
    sf.write(tmp_path / "x.wav", 0.3 * rng.standard_normal(22050), 22050)
    first = cached_log_mel(tmp_path / "x.wav", recipe, cache_dir=tmp_path / "cache")
    again = cached_log_mel(tmp_path / "x.wav", recipe, cache_dir=tmp_path / "cache")
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 1
    np.testing.assert_array_equal(first, again)
    windows = windows_from_frames(first, recipe, window_starts(first.shape[1], recipe.n_frames, 8))
    expected = clip_windows(read_audio(tmp_path / "x.wav", 22050), recipe, 8)
    np.testing.assert_array_equal(windows, expected)
    with pytest.raises(ValueError, match="transform_key"):
        cached_log_mel(tmp_path / "x.wav", recipe, cache_dir=None, transform=lambda y, sr: y)


def test_replaced_recipe_does_not_reuse_the_cached_normaliser() -> None:
    # Training derives the normalised recipe with dataclasses.replace(); a shared cache made the
    # copy keep the original's (mean=0, std=1) normaliser, so training and serving disagreed.
    raw = FeatureRecipe(n_mels=4)
    assert raw.normaliser[0].ravel().tolist() == [0.0] * 4
    normalised = replace(raw, mean=[1.0, 2.0, 3.0, 4.0], std=2.0)
    assert normalised.normaliser[0].ravel().tolist() == [1.0, 2.0, 3.0, 4.0]
    assert normalised.normaliser[1].ravel().tolist() == [2.0] * 4


def test_unreadable_clips_are_dropped(tmp_path: Path) -> None:
    _write_dataset(tmp_path)
    (tmp_path / "metal" / "metal.00003.wav").write_bytes(b"not audio at all")
    splits, dropped = drop_unreadable(load_split(tmp_path, "random"))
    assert dropped == ["metal/metal.00003"]
    assert sum(len(v) for v in splits.values()) == 29


def test_data_and_evaluation_modules_do_not_import_torch() -> None:
    # The daemon and the similarity tools reuse these modules; torch stays a training-only import.
    code = (
        "import sys, training.data, training.evaluate, training.baseline, training.augment; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])
