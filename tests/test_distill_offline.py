"""Offline distillation: teacher labels of clean audio, damaged views, crops that follow the audio."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import librosa
import numpy as np
import onnxruntime as ort
import pytest
import soundfile as sf
import torch

from streamgenre.model.features import log_mel
from training import distill_views
from training.augment import band_limit, coloured_noise
from training.channel import ChannelSimulator, band_gains
from training.cnn import build_model, build_random_onnx, default_recipe, export_onnx, load_exported_weights
from training.corpus import CorpusFile, scan_corpus
from training.data import GTZAN_GENRES
from training.distill_offline import ViewSampler, train
from training.distill_views import FileViews, ViewConfig, prepare_file

RATE = 22050
RECIPE = replace(default_recipe(), mean=-30.0, std=20.0)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random paper CNN stands in for the tagger: the pipeline needs its contract, not its skill."""
    path = tmp_path_factory.mktemp("teacher") / "genre_cnn.onnx"
    build_random_onnx(path, RECIPE, list(GTZAN_GENRES))
    distill_views.init_worker(str(path))
    return path


def tone(path: Path, seconds: float, freq: float) -> CorpusFile:
    t = np.arange(int(seconds * RATE)) / RATE
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), RATE)
    return scan_corpus([path.parent]).files[0]


def test_views_keep_the_file_length_and_the_cache_returns_the_same(tmp_path: Path, teacher: Path) -> None:
    f = tone(tmp_path / "corpus" / "rock.00012.wav", 9.0, 440.0)
    config = ViewConfig(views=3, p_speed=1.0, p_mp3=1.0, p_band=1.0, p_noise=1.0)
    first = prepare_file((f, RECIPE, config, str(teacher), tmp_path / "cache"))
    assert isinstance(first, FileViews)
    assert first.label == GTZAN_GENRES.index("rock")
    assert len(first.frames) == 3 and first.speeds[0] == 1.0 and first.speeds[1] != 1.0
    clean_frames = first.frames[0].shape[1]
    for frames, speed in zip(first.frames[1:], first.speeds[1:], strict=True):
        assert frames.shape[0] == RECIPE.n_mels
        assert frames.shape[1] == pytest.approx(clean_frames / speed, abs=3)  # faster = shorter
        assert np.isfinite(frames.astype(np.float32)).all()
    assert first.teacher_logprobs.shape == (len(first.teacher_centres_s), len(GTZAN_GENRES))
    assert np.allclose(np.exp(first.teacher_logprobs).sum(1), 1.0, atol=1e-3)
    again = prepare_file((f, RECIPE, config, str(teacher), tmp_path / "cache"))
    assert isinstance(again, FileViews)
    assert all(np.array_equal(a, b) for a, b in zip(first.frames, again.frames, strict=True))
    assert np.array_equal(first.teacher_logprobs, again.teacher_logprobs)


def test_another_teacher_reuses_the_views_and_labels_the_file_anew(tmp_path: Path, teacher: Path) -> None:
    f = tone(tmp_path / "corpus" / "rock.00013.wav", 6.0, 440.0)
    config = ViewConfig(views=2, p_mp3=1.0)
    first = prepare_file((f, RECIPE, config, str(teacher), tmp_path / "cache"))
    views_files = sorted((tmp_path / "cache" / "views").iterdir())
    other = tmp_path / "other" / "genre_cnn.onnx"
    build_random_onnx(other, RECIPE, list(GTZAN_GENRES), seed=7)
    distill_views.init_worker(str(other))
    try:
        second = prepare_file((f, RECIPE, config, str(other), tmp_path / "cache"))
    finally:
        distill_views.init_worker(str(teacher))
    assert isinstance(first, FileViews) and isinstance(second, FileViews)
    assert sorted((tmp_path / "cache" / "views").iterdir()) == views_files  # no new views were made
    assert all(np.array_equal(a, b) for a, b in zip(first.frames, second.frames, strict=True))
    assert len(list((tmp_path / "cache" / "teacher").iterdir())) == 2
    assert not np.allclose(first.teacher_logprobs, second.teacher_logprobs)


def test_a_file_that_does_not_decode_is_reported_not_raised(tmp_path: Path, teacher: Path) -> None:
    good = tone(tmp_path / "c" / "a.wav", 4.0, 300.0)
    broken = tmp_path / "c" / "a.wav"
    broken.write_bytes(b"RIFF" + b"\x00" * 100)  # same header scan, no audio behind it
    result = prepare_file((good, RECIPE, ViewConfig(views=2), str(teacher), tmp_path / "cache"))
    assert isinstance(result, str) and "a.wav" in result


def test_sampler_targets_follow_the_clean_recording_and_mixup_drops_labels(tmp_path: Path, teacher: Path) -> None:
    items = [
        prepare_file((tone(tmp_path / d / name, 8.0, hz), RECIPE, ViewConfig(views=2), str(teacher), tmp_path / "k"))
        for d, name, hz in (("a", "jazz.00001.wav", 220.0), ("b", "free.wav", 880.0))
    ]
    assert all(isinstance(i, FileViews) for i in items)
    sampler = ViewSampler(items, RECIPE, seed=1, p_mixup=0.0)
    x, logp, emb, labels = sampler.batch(32)
    assert x.shape == (32, 1, RECIPE.n_mels, RECIPE.n_frames) and np.isfinite(x.numpy()).all()
    assert emb.shape[0] == 32 and set(labels.tolist()) <= {-1, GTZAN_GENRES.index("jazz")}
    # Each crop's target is a (renormalised) interpolation of its own file's teacher outputs.
    assert np.allclose(logp.exp().sum(1).numpy(), 1.0, atol=0.02)
    mixed = ViewSampler(items, RECIPE, seed=1, p_mixup=1.0).batch(16)
    assert (mixed[3] == -1).all() and np.isfinite(mixed[0].numpy()).all()
    assert np.allclose(mixed[1].exp().sum(1).numpy(), 1.0, atol=0.02)


def test_channel_band_gains_match_a_real_telephone_filter_in_and_near_its_band() -> None:
    """The mel-domain gain of a band-pass predicts what the real filter does to a recording's mel power."""
    rng = np.random.default_rng(0)
    y = (0.1 * coloured_noise(RATE * 6, rng, 1.0)).astype(np.float32)
    clean = 10 ** (log_mel(y, RECIPE).mean(axis=1) / 10)
    filtered = 10 ** (log_mel(band_limit(y, RATE, 300.0, 3400.0), RECIPE).mean(axis=1) / 10)
    gains = band_gains(RECIPE, 300.0, 3400.0, order=4, passes=2)
    centres = librosa.mel_frequencies(RECIPE.n_mels + 2, fmin=RECIPE.fmin, fmax=RATE / 2)[1:-1]
    near = (centres > 250) & (centres < 4000)
    error_db = 10 * np.log10(filtered[near]) - 10 * np.log10(clean[near] * gains[near])
    assert np.abs(error_db).max() < 3.0
    assert 10 * np.log10(gains[centres > 8000]).max() < -40  # the band above the line is gone


def test_channel_noise_is_added_at_the_drawn_snr_and_the_sampler_keeps_clean_targets(tmp_path: Path,
                                                                                      teacher: Path) -> None:
    simulator = ChannelSimulator(RECIPE, p_band=0.0, p_noise=1.0, seed=3)
    power = torch.ones(4, 1, RECIPE.n_mels, RECIPE.n_frames)
    noisy = simulator(power)
    snr_db = 10 * torch.log10(power.sum(dim=(1, 2, 3)) / (noisy - power).sum(dim=(1, 2, 3)))
    assert ((snr_db >= 5 - 1e-3) & (snr_db <= 30 + 1e-3)).all() and torch.equal(power, torch.ones_like(power))
    items = [prepare_file((tone(tmp_path / "a" / "jazz.00002.wav", 8.0, 330.0), RECIPE, ViewConfig(views=1),
                           str(teacher), tmp_path / "k"))]
    plain = ViewSampler(items, RECIPE, seed=5, p_mixup=0.0).batch(8)
    through = ViewSampler(items, RECIPE, seed=5, p_mixup=0.0, p_channel=1.0).batch(8)
    # Same crops and the same clean targets; only the inputs went through channels.
    assert torch.equal(plain[1], through[1]) and not torch.allclose(plain[0], through[0])
    assert np.isfinite(through[0].numpy()).all()


def test_an_exported_student_loads_back_into_torch_and_computes_the_same(tmp_path: Path) -> None:
    """Batch norm is folded into the convs on export; loading it back must not change the function."""
    model = build_model(RECIPE.n_mels, RECIPE.n_frames, 10, seed=3, center_input=True, widths=(8, 16, 24, 32))
    with torch.no_grad():  # trained-looking batch-norm statistics, so that folding them matters
        for norm in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
            norm.running_mean.uniform_(-1, 1)
            norm.running_var.uniform_(0.5, 2)
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.5, 0.5)
    path = tmp_path / "student.onnx"
    model.features[1].eval()  # a frozen batch norm, as in fine-tuning
    export_onnx(model, RECIPE, list(GTZAN_GENRES), path)
    assert model.training and not model.features[1].training  # each module's mode kept
    loaded = build_model(RECIPE.n_mels, RECIPE.n_frames, 10, seed=9, center_input=True, widths=(8, 16, 24, 32))
    load_exported_weights(loaded, path)
    x = torch.randn(4, 1, RECIPE.n_mels, RECIPE.n_frames)
    loaded.eval()
    with torch.no_grad():
        probs = torch.softmax(loaded(x)[0], 1).numpy()
    served = ort.InferenceSession(str(path)).run(["probs"], {"logmel": x.numpy()})[0]
    assert np.allclose(probs, served, atol=1e-5)
    other = build_model(RECIPE.n_mels, RECIPE.n_frames, 10, widths=(8, 16, 24, 48), center_input=True)
    with pytest.raises(ValueError, match="conv"):
        load_exported_weights(other, path)


WIDTHS = (8, 16, 24, 32)


def _sampler_and_first_student(tmp_path: Path, teacher: Path) -> tuple[ViewSampler, Path]:
    """A one-file sampler, and the folder of a student exported from it untrained (zero steps)."""
    items = [prepare_file((tone(tmp_path / "c" / "rock.00011.wav", 8.0, 330.0), RECIPE, ViewConfig(views=2),
                           str(teacher), tmp_path / "k"))]
    sampler = ViewSampler(items, RECIPE, seed=1)
    first = tmp_path / "first"
    train(sampler, RECIPE, first, minutes=0.0, kd_temperature=1.0, widths=WIDTHS, version="v1")
    return sampler, first


def test_training_continues_from_an_exported_student(tmp_path: Path, teacher: Path) -> None:
    """A warm restart starts from the file's function, not from a random model."""
    sampler, first = _sampler_and_first_student(tmp_path, teacher)
    summary = train(sampler, RECIPE, tmp_path / "second", minutes=0.0, kd_temperature=1.0, widths=WIDTHS,
                    seed=5, init=first / "genre_cnn.onnx", version="v2")
    x = np.random.default_rng(0).standard_normal((3, 1, RECIPE.n_mels, RECIPE.n_frames)).astype(np.float32)
    before, after = (ort.InferenceSession(str(d / "genre_cnn.onnx")).run(["probs"], {"logmel": x})[0]
                     for d in (first, tmp_path / "second"))
    assert np.allclose(before, after, atol=1e-5)  # zero steps: the seed-5 model was replaced by the file's
    assert summary["initialised_from"] == str(first / "genre_cnn.onnx") and summary["steps"] == 0


def test_weight_averaging_starts_from_the_exported_student(tmp_path: Path, teacher: Path) -> None:
    """SWA's mean begins with the file's weights and takes one more sample every ``average_every`` steps."""
    sampler, first = _sampler_and_first_student(tmp_path, teacher)
    with pytest.raises(ValueError, match="init"):
        train(sampler, RECIPE, tmp_path / "x", minutes=0.0, kd_temperature=1.0, widths=WIDTHS, average_every=1)
    still = train(sampler, RECIPE, tmp_path / "still", minutes=0.0, kd_temperature=1.0, widths=WIDTHS,
                  init=first / "genre_cnn.onnx", average_every=1, version="v2")
    x = np.random.default_rng(0).standard_normal((3, 1, RECIPE.n_mels, RECIPE.n_frames)).astype(np.float32)
    before, after = (ort.InferenceSession(str(d / "genre_cnn.onnx")).run(["probs"], {"logmel": x})[0]
                     for d in (first, tmp_path / "still"))
    assert still["weights_averaged"] == 1 and np.allclose(before, after, atol=1e-5)
    moved = train(sampler, RECIPE, tmp_path / "moved", minutes=0.02, kd_temperature=1.0, widths=WIDTHS, batch=4,
                  init=first / "genre_cnn.onnx", average_every=2, lr=1e-2, version="v3")
    assert moved["steps"] >= 2 and moved["weights_averaged"] == 1 + moved["steps"] // 2
    averaged = ort.InferenceSession(str(tmp_path / "moved" / "genre_cnn.onnx")).run(["probs"], {"logmel": x})[0]
    assert not np.allclose(before, averaged, atol=1e-5)
