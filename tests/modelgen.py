"""A small ONNX model with the production contract, built without torch, for plumbing tests.

``logmel [N, 1, n_mels, n_frames]`` → mean over time → dense+ReLU (``embedding``) → dense →
softmax (``probs``). Its weights are seeded random: it proves the pipeline moves the right
numbers to the right places, it is no classifier.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from streamgenre.model.features import FeatureRecipe

TEST_LABELS = ["blues", "classical", "country", "disco", "hiphop", "jazz", "metal", "pop", "reggae", "rock"]
TEST_RECIPE = FeatureRecipe(
    sample_rate=16000, n_fft=512, hop_length=256, n_mels=32, n_frames=62, fmax=8000.0, mean=-40.0, std=20.0
)


def make_test_model(
    directory: Path,
    recipe: FeatureRecipe = TEST_RECIPE,
    labels: list[str] = TEST_LABELS,
    hop_s: float | None = None,
    embedding_dim: int = 16,
    seed: int = 0,
) -> Path:
    """Write ``test_model.onnx`` + sidecar into ``directory``; return the ONNX path."""
    rng = np.random.default_rng(seed)
    w1 = rng.normal(0, 1 / np.sqrt(recipe.n_mels), (recipe.n_mels, embedding_dim)).astype(np.float32)
    b1 = np.full(embedding_dim, 0.1, np.float32)
    w2 = rng.normal(0, 1 / np.sqrt(embedding_dim), (embedding_dim, len(labels))).astype(np.float32)
    nodes = [
        helper.make_node("ReduceMean", ["logmel", "time_axes"], ["pooled"], keepdims=0),
        helper.make_node("Reshape", ["pooled", "flat_shape"], ["flat"]),
        helper.make_node("MatMul", ["flat", "w1"], ["hidden"]),
        helper.make_node("Add", ["hidden", "b1"], ["hidden_b"]),
        helper.make_node("Relu", ["hidden_b"], ["embedding"]),
        helper.make_node("MatMul", ["embedding", "w2"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=-1),
    ]
    initializers = [
        numpy_helper.from_array(np.array([3], np.int64), "time_axes"),
        numpy_helper.from_array(np.array([-1, recipe.n_mels], np.int64), "flat_shape"),
        numpy_helper.from_array(w1, "w1"),
        numpy_helper.from_array(b1, "b1"),
        numpy_helper.from_array(w2, "w2"),
    ]
    graph = helper.make_graph(
        nodes, "streamgenre_test_model",
        [helper.make_tensor_value_info("logmel", TensorProto.FLOAT, ["N", 1, recipe.n_mels, recipe.n_frames])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", len(labels)]),
         helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", embedding_dim])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "test_model.onnx"
    onnx.save(model, path)
    window_s = recipe.window_samples / recipe.sample_rate
    sidecar = {
        "version": f"test-{seed}",
        "labels": labels,
        "window_s": window_s,
        "hop_s": hop_s if hop_s is not None else recipe.n_frames * recipe.hop_length / recipe.sample_rate,
        "features": recipe.to_dict(),
        "embedding_dim": embedding_dim,
    }
    path.with_suffix(".json").write_text(json.dumps(sidecar, indent=2))
    return path
