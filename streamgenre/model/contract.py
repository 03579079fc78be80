"""The model contract: one ONNX file plus a JSON sidecar holding its exact feature recipe.

The daemon serves whatever ``model/`` holds. The sidecar says how to turn audio into the
``logmel`` input (see :mod:`streamgenre.model.features`), which labels the ``probs`` columns carry
and how long a window is, so swapping the pretrained tagger for a GTZAN-trained CNN is a file
copy, not a code change.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from pydantic import BaseModel, ConfigDict, Field, field_validator

from streamgenre.model.features import FeatureRecipe


class ModelError(RuntimeError):
    """The model file or its sidecar is missing or breaks the contract."""


class ModelSpec(BaseModel):
    """The JSON sidecar (``<model>.json``)."""

    model_config = ConfigDict(extra="allow")

    version: str
    labels: list[str] = Field(min_length=2)
    window_s: float = Field(gt=0)
    hop_s: float = Field(gt=0)
    features: dict

    @field_validator("features")
    @classmethod
    def _recipe_is_valid(cls, value: dict) -> dict:
        FeatureRecipe.from_dict(value)
        return value

    @property
    def recipe(self) -> FeatureRecipe:
        return FeatureRecipe.from_dict(self.features)

    @property
    def hop_frames(self) -> int:
        """Window hop in mel frames; windows start on frame boundaries so they are slices."""
        recipe = self.recipe
        return max(1, round(self.hop_s * recipe.sample_rate / recipe.hop_length))


def sidecar_path(model_path: Path) -> Path:
    return Path(model_path).with_suffix(".json")


def build_sidecar(
    recipe: FeatureRecipe,
    labels: list[str],
    hop_frames: int,
    embedding_dim: int,
    version: str,
    **extra: Any,
) -> dict[str, Any]:
    """The JSON sidecar of a model, as training and conversion write it (:func:`load_spec` reads it).

    Parameters
    ----------
    recipe : FeatureRecipe
        Front end, including the normalisation estimated on the training set.
    labels : list of str
        Class names, index = class.
    hop_frames : int
        Hop between consecutive windows, in mel frames (``hop_s = hop_frames * hop_length / sr``).
    embedding_dim : int
        Width of the ``embedding`` output.
    version : str
        Model version recorded in outputs.
    **extra
        Further keys (architecture, training data, metrics, ...), stored as given.
    """
    return {
        "version": version,
        "labels": list(labels),
        "window_s": recipe.window_samples / recipe.sample_rate,
        "hop_s": hop_frames * recipe.hop_length / recipe.sample_rate,
        "features": recipe.to_dict(),
        "embedding_dim": embedding_dim,
        **extra,
    }


def load_spec(model_path: Path) -> ModelSpec:
    path = sidecar_path(model_path)
    if not path.is_file():
        raise ModelError(f"model sidecar not found: {path} (expected next to {model_path})")
    try:
        return ModelSpec.model_validate(json.loads(path.read_text()))
    except ValueError as exc:
        raise ModelError(f"invalid model sidecar {path}: {exc}") from exc


class GenreModel:
    """An onnxruntime session over a contract model: ``logmel`` → ``probs``, ``embedding``.

    Parameters
    ----------
    model_path : Path
        The ``.onnx`` file; the sidecar is the same path with ``.json``.
    threads : int
        ``intra_op_num_threads``. One thread per worker process scales better than one
        process with many threads for the small batches a live daemon sees.
    """

    def __init__(self, model_path: Path, threads: int = 1) -> None:
        model_path = Path(model_path)
        if not model_path.is_file():
            raise ModelError(f"model not found: {model_path}")
        self.path = model_path
        self.spec = load_spec(model_path)
        self.recipe = self.spec.recipe
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises several unrelated exception types
            raise ModelError(f"cannot load ONNX model {model_path}: {exc}") from exc
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = {o.name for o in self.session.get_outputs()}
        if "logmel" not in inputs or not {"probs", "embedding"} <= outputs:
            raise ModelError(f"{model_path} breaks the contract: needs input logmel, outputs probs + embedding")
        expected = [self.recipe.n_mels, self.recipe.n_frames]
        shape = inputs["logmel"].shape
        if len(shape) != 4 or [d for d in shape[2:]] != expected:
            raise ModelError(f"{model_path}: logmel shape {shape} does not match sidecar [N, 1, {expected}]")

    @property
    def labels(self) -> list[str]:
        return self.spec.labels

    @property
    def version(self) -> str:
        return self.spec.version

    def predict(self, logmel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Run a batch ``(N, 1, n_mels, n_frames)``; returns ``(probs (N, C), embedding (N, D))``."""
        probs, embedding = self.session.run(["probs", "embedding"], {"logmel": np.ascontiguousarray(logmel)})
        return probs, embedding
