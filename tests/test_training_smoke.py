"""End-to-end smoke test of the training pipeline on generated audio, and the ONNX contract.

The synthetic set (tones and noise per class) proves that the pipeline runs; a model trained on
it is not a genre classifier and is never written outside ``tmp_path``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import soundfile as sf
import torch

from streamgenre.model.contract import GenreModel
from streamgenre.model.features import FeatureRecipe, window_input
from training import augment
from training.cnn import build_model, build_random_onnx, export_onnx
from training.data import cached_log_mel, load_split
from training.distill import aligned_teacher_starts, teacher_targets
from training.evaluate import evaluate_onnx
from training.evaluate import main as evaluate_main
from training.train import main as train_main
from training.train import run_protocol
from training.train_windows import DistillSampler, TrainConfig

SR = 22050
# A small front end keeps the test fast; the pipeline is the same as with the paper recipe.
RECIPE = FeatureRecipe(sample_rate=SR, n_fft=512, hop_length=256, n_mels=32, n_frames=32)


def _clip(kind: str, rng: np.random.Generator, seconds: float = 1.5) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    if kind == "low":
        f0 = rng.uniform(150, 250)
        y = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 4))
    elif kind == "high":
        y = np.sin(2 * np.pi * rng.uniform(2500, 3500) * t)
    else:
        y = rng.standard_normal(len(t)) * (np.sin(2 * np.pi * rng.uniform(2, 4) * t) > 0)
    return (0.3 * y / np.abs(y).max() + 0.01 * rng.standard_normal(len(t))).astype(np.float32)


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    rng = np.random.default_rng(0)
    for genre in ("low", "high", "noise"):
        (root / genre).mkdir()
        for i in range(6):
            sf.write(root / genre / f"{genre}.{i:05d}.wav", _clip(genre, rng), SR)
    return root


@pytest.fixture(scope="module")
def trained(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    out = tmp_path_factory.mktemp("out")
    config = TrainConfig(
        epochs=1,
        variants=1,
        windows_per_clip=4,
        hop_frames=16,
        threads=1,
        batch_size=16,
        benchmark_seconds=0.2,
    )
    summary = run_protocol(
        synthetic_root,
        "random",
        out,
        config,
        report_dir=out / "report",
        cache_dir=out / "cache",
        recipe=RECIPE,
    )
    return out, synthetic_root, summary


def test_one_epoch_exports_a_model_with_the_contract(trained: tuple[Path, Path, dict]) -> None:
    out, _root, summary = trained
    path = out / "genre_cnn.onnx"
    graph = onnx.load(str(path))
    onnx.checker.check_model(graph)
    assert max(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")) >= 17
    (inp,) = graph.graph.input
    assert inp.name == "logmel" and inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    dims = inp.type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [1, 32, 32]
    assert [o.name for o in graph.graph.output] == ["probs", "embedding"]

    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["labels"] == ["high", "low", "noise"]
    assert meta["features"]["n_mels"] == 32 and len(meta["features"]["mean"]) == 32
    assert FeatureRecipe.from_dict(meta["features"]).window_samples == 512 + 31 * 256
    assert meta["window_s"] == pytest.approx((512 + 31 * 256) / SR)
    assert meta["hop_s"] == pytest.approx(16 * 256 / SR)
    assert meta["embedding_dim"] == 128 and meta["version"].startswith("paper-cnn-random-")

    assert summary["onnx_max_abs_diff"]["probs"] <= 1e-4
    assert summary["onnx_max_abs_diff"]["embedding"] <= 1e-4
    assert summary["epochs_run"] == 1
    assert summary["valid"]["torch"]["window_accuracy"] == pytest.approx(
        summary["valid"]["onnx_from_sidecar"]
    )
    metrics = json.loads((out / "report" / "metrics.json").read_text())
    assert set(metrics["random"]) == {"paper_cnn", "baseline_mel_mfcc_logreg"}
    assert (out / "report" / "report.md").read_text().count("paper_cnn") >= 2
    assert (out / "confusion.png").stat().st_size > 0 and (out / "training_curve.png").stat().st_size > 0


# A student front end unlike the teacher's (rate, hop, bands, window length), as the paper CNN's
# is unlike the shipped tagger's, so that the windows have to be aligned in time.
STUDENT = FeatureRecipe(sample_rate=16000, n_fft=512, hop_length=128, n_mels=32, n_frames=40)


def test_teacher_labels_the_student_windows_at_the_same_instants(trained: tuple[Path, Path, dict]) -> None:
    out, root, _summary = trained
    teacher = GenreModel(out / "genre_cnn.onnx")
    # Student frame 16 is 16 * 128 / 16000 = 0.128 s, teacher frame 0.128 * 22050 / 256 = 11.03.
    np.testing.assert_array_equal(aligned_teacher_starts([0, 16, 32], STUDENT, teacher.recipe), [0, 11, 22])

    clip = load_split(root, "random")["train"][0]
    teacher_frames = cached_log_mel(clip.path, teacher.recipe, out / "cache")
    n_student = cached_log_mel(clip.path, STUDENT, out / "cache").shape[1]
    labels = ["noise", "low", "high"]
    targets = teacher_targets(teacher, teacher_frames, n_student, STUDENT, 16, labels)

    n_windows = len(range(0, n_student - STUDENT.n_frames + 1, 16))
    assert 0 < len(targets) <= n_windows
    starts = aligned_teacher_starts(range(0, 16 * len(targets), 16), STUDENT, teacher.recipe)
    windows = np.stack([window_input(teacher_frames[:, s : s + 32], teacher.recipe) for s in starts])
    expected, _ = teacher.predict(windows)
    columns = [teacher.labels.index(label) for label in labels]
    np.testing.assert_allclose(targets, expected[:, columns], atol=1e-6)
    with pytest.raises(ValueError, match="no output for"):
        teacher_targets(teacher, teacher_frames, n_student, STUDENT, 16, ["low", "jazz"])


def test_distill_sampler_mixes_teacher_and_label() -> None:
    frames = [[np.zeros((32, 100), np.float32), np.ones((32, 60), np.float32)]]
    probs = [[np.array([[0.2, 0.8], [0.6, 0.4]], np.float32), np.zeros((0, 2), np.float32)]]
    config = TrainConfig(windows_per_clip=20, hop_frames=16, teacher_weight=0.5, max_gain_db=0.0)
    sampler = DistillSampler(frames, np.array([0]), probs, STUDENT, config, n_classes=2)
    inputs, targets = sampler.epoch(np.random.default_rng(0))
    assert inputs.shape == (20, 1, 32, 40)
    # The second version has no labelled window, so it is never drawn (its frames are ones).
    assert (inputs == 0.0).all() and len(sampler.versions[0]) == 1
    np.testing.assert_allclose(np.unique(targets.round(3), axis=0), [[0.6, 0.4], [0.8, 0.2]], atol=1e-6)


def test_distillation_exports_and_reports_a_student(trained: tuple[Path, Path, dict], tmp_path: Path) -> None:
    out, root, _summary = trained
    config = TrainConfig(
        epochs=1, variants=1, windows_per_clip=4, hop_frames=16, threads=1, batch_size=16, benchmark_seconds=0.2
    )
    summary = run_protocol(
        root,
        "random",
        tmp_path,
        config,
        report_dir=tmp_path / "report",
        cache_dir=out / "cache",
        recipe=STUDENT,
        teacher=out / "genre_cnn.onnx",
    )
    assert summary["teacher"]["path"] == str(out / "genre_cnn.onnx")
    meta = json.loads((tmp_path / "genre_cnn.json").read_text())
    assert meta["version"].startswith("distilled-cnn-random-") and meta["features"]["sample_rate"] == 16000
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert set(metrics["random"]) == {"distilled_cnn", "baseline_mel_mfcc_logreg"}


def test_pytorch_and_onnxruntime_agree_at_any_batch_size(tmp_path: Path) -> None:
    model = build_model(32, 32, 3, seed=1)
    # Non-trivial batch-norm statistics, so that eval-mode export is really exercised.
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    export_onnx(model, RECIPE, ["a", "b", "c"], tmp_path / "m.onnx")
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    model.eval()
    for n in (1, 5, 64):
        x = np.random.default_rng(n).standard_normal((n, 1, 32, 32)).astype(np.float32)
        probs, embedding = session.run(["probs", "embedding"], {"logmel": x})
        with torch.no_grad():
            logits, ref_embedding = model(torch.from_numpy(x))
        assert probs.shape == (n, 3) and embedding.shape == (n, 128)
        np.testing.assert_allclose(probs, torch.softmax(logits, 1).numpy(), atol=1e-4, rtol=0)
        np.testing.assert_allclose(embedding, ref_embedding.numpy(), atol=1e-4, rtol=0)
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def test_evaluate_onnx_scores_every_clip(trained: tuple[Path, Path, dict]) -> None:
    out, root, _summary = trained
    clips = load_split(root, "random")["test"]
    model = GenreModel(out / "genre_cnn.onnx")
    result = evaluate_onnx(model, clips, cache_dir=out / "cache", progress=False)
    assert result["n_clips"] == len(clips) == 3
    assert {c["clip"] for c in result["clips"]} == {c.clip_id for c in clips}
    assert np.asarray(result["confusion"]).sum() == 3
    assert 0.0 <= result["window_accuracy"] <= 1.0 and 0.0 <= result["clip_accuracy"] <= 1.0


def test_random_init_model_for_benchmarks(tmp_path: Path) -> None:
    meta = build_random_onnx(tmp_path / "random.onnx", recipe=RECIPE, labels=["a", "b"])
    assert meta["labels"] == ["a", "b"] and meta["version"] == "paper-cnn-random-init"
    model = GenreModel(tmp_path / "random.onnx")
    probs, embedding = model.predict(np.zeros((3, 1, 32, 32), np.float32))
    assert probs.shape == (3, 2) and embedding.shape == (3, 128)


def test_waveform_augmentations_are_deterministic_and_keep_shape() -> None:
    rng = np.random.default_rng(0)
    y = _clip("low", rng, seconds=1.0)
    specs = augment.variant_specs("low/low.00000", 6, seed=0)
    assert specs == augment.variant_specs("low/low.00000", 6, seed=0)
    for spec in specs:
        out = spec(y, SR)
        assert out.dtype == np.float32 and np.isfinite(out).all()
        np.testing.assert_array_equal(out, spec(y, SR))
    noisy = augment.add_noise(y, 10.0, rng)
    snr = 10 * np.log10(np.mean(y**2) / np.mean((noisy - y) ** 2))
    assert snr == pytest.approx(10.0, abs=0.1)
    spectrum = np.abs(
        np.fft.rfft(augment.codec_lowpass(rng.standard_normal(SR).astype(np.float32), SR, 4000))
    )
    assert spectrum[6000:].mean() < 0.01 * spectrum[:3000].mean()


def test_online_augmentations() -> None:
    rng = np.random.default_rng(0)
    x = np.ones((4, 1, 32, 32), np.float32)
    masked = augment.spec_augment(x.copy(), rng, max_freq=8, max_time=8)
    assert masked.shape == x.shape and set(np.unique(masked)) <= {0.0, 1.0}
    targets = np.eye(3, dtype=np.float32)[[0, 1, 2, 0]]
    mixed_x, mixed_y = augment.mixup(np.arange(4, dtype=np.float32)[:, None], targets, rng)
    np.testing.assert_allclose(mixed_y.sum(axis=1), 1.0, atol=1e-6)
    assert mixed_x.shape == (4, 1)


def test_evaluate_cli_writes_the_report(trained: tuple[Path, Path, dict], tmp_path: Path) -> None:
    out, root, _summary = trained
    args = ["--model", str(out / "genre_cnn.onnx"), "--data", str(root), "--protocol", "random"]
    assert (
        evaluate_main([*args, "--name", "smoke", "--report", str(tmp_path), "--cache", str(out / "cache")])
        == 0
    )
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["random"]["smoke"]["n_clips"] == 3
    assert "smoke" in (tmp_path / "report.md").read_text()


def test_clis_explain_a_missing_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert train_main(["--data", str(tmp_path / "gtzan"), "--out", str(tmp_path / "out"), "--no-report"]) == 2
    assert "does not exist" in capsys.readouterr().err
    build_random_onnx(tmp_path / "m.onnx", recipe=RECIPE)
    args = ["--model", str(tmp_path / "m.onnx"), "--data", str(tmp_path / "gtzan"), "--report", str(tmp_path)]
    assert evaluate_main(args) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
