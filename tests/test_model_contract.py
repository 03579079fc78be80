"""One model contract: a graph that disagrees with its sidecar is refused at load; batching is invisible."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from streamgenre.model.contract import GenreModel, ModelError, time_calls
from streamgenre.model.features import FeatureRecipe
from tests.modelgen import TEST_LABELS, TEST_RECIPE, make_test_model


def edit_sidecar(path: Path, **changes: object) -> None:
    sidecar = path.with_suffix(".json")
    sidecar.write_text(json.dumps({**json.loads(sidecar.read_text()), **changes}))


def test_a_matching_model_loads(tmp_path: Path) -> None:
    model = GenreModel(make_test_model(tmp_path))
    assert model.labels == TEST_LABELS and model.embedding_dim == 16
    assert model.hop_frames == TEST_RECIPE.n_frames


def test_input_shape_mismatch_is_refused(tmp_path: Path) -> None:
    path = make_test_model(tmp_path)
    edit_sidecar(path, features=replace(TEST_RECIPE, n_frames=TEST_RECIPE.n_frames + 1).to_dict())
    with pytest.raises(ModelError, match=r"logmel shape .* does not match the sidecar's \[N, 1, 32, 63\]"):
        GenreModel(path)


def test_label_count_mismatch_is_refused(tmp_path: Path) -> None:
    path = make_test_model(tmp_path)
    edit_sidecar(path, labels=TEST_LABELS[:9])
    with pytest.raises(ModelError, match="probs has 10 columns, the sidecar names 9 labels"):
        GenreModel(path)


def test_embedding_width_mismatch_is_refused(tmp_path: Path) -> None:
    path = make_test_model(tmp_path)
    edit_sidecar(path, embedding_dim=400)
    with pytest.raises(ModelError, match="embedding_dim 400"):
        GenreModel(path)


def test_broken_sidecar_and_graph_are_refused(tmp_path: Path) -> None:
    path = make_test_model(tmp_path)
    edit_sidecar(path, features={**TEST_RECIPE.to_dict(), "n_mel": 3})
    with pytest.raises(ModelError, match="unknown feature recipe keys"):
        GenreModel(path)
    edit_sidecar(path, features=TEST_RECIPE.to_dict())
    path.write_bytes(b"not onnx")
    with pytest.raises(ModelError, match="cannot load ONNX model"):
        GenreModel(path)


def test_batched_predict_equals_one_call(tmp_path: Path) -> None:
    model = GenreModel(make_test_model(tmp_path))
    x = np.random.default_rng(0).normal(size=(7, 1, TEST_RECIPE.n_mels, TEST_RECIPE.n_frames)).astype(np.float32)
    whole, batched = model.predict(x), model.predict(x, batch_size=3)
    np.testing.assert_allclose(whole[0], batched[0], atol=1e-6)
    np.testing.assert_allclose(whole[1], batched[1], atol=1e-6)
    empty_probs, empty_embedding = model.predict(x[:0])
    assert empty_probs.shape == (0, 10) and empty_embedding.shape == (0, 16)


def test_hop_seconds_frames_round_trip() -> None:
    recipe = FeatureRecipe(sample_rate=16000, hop_length=256)
    assert recipe.seconds_to_frames(2.992) == 187
    assert recipe.frames_to_seconds(187) == pytest.approx(2.992)
    assert recipe.seconds_to_frames(0.0001) == 1  # a hop is never zero frames


def test_time_calls_counts_calls_and_cpu() -> None:
    rate = time_calls(lambda: sum(range(1000)), seconds=0.05)
    assert rate.calls > 0 and rate.wall_s >= 0.05 and rate.cpu_s > 0
    assert rate.per_s(2) == pytest.approx(2 * rate.calls / rate.wall_s)


def test_model_profiles_resolve_to_files(tmp_path: Path) -> None:
    from streamgenre.config import MODEL_PROFILES, Settings

    assert Settings(model="fast", model_dir=tmp_path).model_path == tmp_path / MODEL_PROFILES["fast"]
    assert Settings(model=str(tmp_path / "x.onnx")).model_path == tmp_path / "x.onnx"
    assert Settings(model="fast", model_path=tmp_path / "y.onnx").model_path == tmp_path / "y.onnx"
    for name in MODEL_PROFILES:  # every profile the settings name is shipped and honours the contract
        GenreModel(Settings(model=name).model_path)


def test_each_profile_gets_a_content_model_for_its_own_front_end() -> None:
    """Regression: `STREAMGENRE_MODEL=student` kept model/content.json (the tagger's 16 kHz front
    end), which the content stage refuses against the student's 22.05 kHz recipe."""
    from streamgenre.config import MODEL_PROFILES, SHIPPED_CONTENT_MODEL, Settings
    from streamgenre.model.content import ContentModel

    for name in MODEL_PROFILES:
        settings = Settings(model=name)
        content = ContentModel(settings.content_model_path, settings.silence_dbfs)
        content.check_recipe(GenreModel(settings.model_path).recipe)
    assert Settings(model="student").content_model_path == SHIPPED_CONTENT_MODEL.parent / "student" / "content.json"
    assert Settings(model="student", content_model_path=None).content_model_path is None
