"""The shipped model (musicnn taggers + head) reproduces its reported gtzan-mini figure.

Runs in the main venv (onnxruntime only, no TensorFlow): :func:`training.fit_head.evaluate_shipped`
(sidecar recipe, served probabilities) must give the figures ``python -m training.scorecard``
wrote to ``model/report/accurate/report.json``, so a changed model, front end or window cutting
that moves the accuracy shows up here. Skips when the
shared gtzan-mini copy is not on the machine.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from streamgenre.model.features import FeatureRecipe

REPO = Path(__file__).resolve().parents[1]
MINI = REPO.parent / "shared" / "data" / "gtzan-mini"
MODEL = REPO / "model" / "genre_cnn.onnx"
REPORT = REPO / "model" / "report" / "accurate" / "report.json"


def test_contract_outputs_and_dynamic_batch() -> None:
    """``logmel [N,1,96,187]`` → ``probs [N,10]`` (rows sum to 1), ``embedding [N,400]``, raw tags."""
    spec = json.loads(MODEL.with_suffix(".json").read_text())
    recipe = FeatureRecipe.from_dict(spec["features"])
    session = ort.InferenceSession(str(MODEL), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["logmel"]
    names = [o.name for o in session.get_outputs()]
    assert names[:2] == ["probs", "embedding"] and {"msd_tags", "mtt_tags"} <= set(names)
    for n in (1, 3):
        x = np.random.default_rng(n).uniform(0, 3, (n, 1, recipe.n_mels, recipe.n_frames)).astype(np.float32)
        probs, emb, msd, mtt = session.run(["probs", "embedding", "msd_tags", "mtt_tags"], {"logmel": x})
        assert probs.shape == (n, len(spec["labels"])) and emb.shape == (n, spec["embedding_dim"])
        assert msd.shape == mtt.shape == (n, 50)
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert spec["window_s"] == pytest.approx(recipe.window_samples / recipe.sample_rate)


@pytest.mark.skipif(not MINI.is_dir(), reason="../shared/data/gtzan-mini is not on this machine")
def test_mini_test_accuracy_matches_report() -> None:
    from training.fit_head import evaluate_shipped

    reported = json.loads(REPORT.read_text())
    assert reported["version"] == json.loads(MODEL.with_suffix(".json").read_text())["version"]
    reported = reported["mini_test"]
    measured = evaluate_shipped(MODEL, MINI)
    assert measured["n_clips"] == reported["n_clips"]
    assert abs(measured["clip_accuracy"] - reported["clip_accuracy"]) <= 0.005
    assert abs(measured["window_accuracy"] - reported["window_accuracy"]) <= 0.005


STUDENT = REPO / "model" / "student" / "genre_cnn.onnx"


def test_student_serves_with_the_shipped_labels() -> None:
    """The distilled student (``make student``) is a drop-in model: same genres, contract outputs."""
    from streamgenre.model.contract import GenreModel

    student, teacher = GenreModel(STUDENT), json.loads(MODEL.with_suffix(".json").read_text())
    assert student.labels == teacher["labels"]
    recipe = student.recipe
    x = np.random.default_rng(0).standard_normal((3, 1, recipe.n_mels, recipe.n_frames)).astype(np.float32)
    probs, embedding = student.predict(x)
    assert probs.shape == (3, 10) and embedding.shape == (3, 128)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)


@pytest.mark.skipif(not MINI.is_dir(), reason="../shared/data/gtzan-mini is not on this machine")
def test_student_mini_test_accuracy_matches_report() -> None:
    from training.data import load_split
    from training.evaluate import evaluate_onnx

    reported = json.loads((REPO / "model" / "report" / "student" / "report.json").read_text())
    assert reported["version"] == json.loads(STUDENT.with_suffix(".json").read_text())["version"]
    reported = reported["mini_test"]
    measured = evaluate_onnx(STUDENT, load_split(MINI, "mini")["test"], cache_dir=None, progress=False)
    assert measured["n_clips"] == reported["n_clips"]
    assert abs(measured["clip_accuracy"] - reported["clip_accuracy"]) <= 0.005
    assert abs(measured["window_accuracy"] - reported["window_accuracy"]) <= 0.005
