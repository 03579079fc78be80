"""The faster teacher is the shipped graph minus a branch: same MSD tags and embedding, no TensorFlow."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from streamgenre.model.contract import make_session
from training.teacher import bake_head, prune

MODEL = Path(__file__).resolve().parents[1] / "model" / "genre_cnn.onnx"


def test_pruned_msd_branch_equals_the_full_graph() -> None:
    source = onnx.load(str(MODEL))
    pruned = prune(source, ["msd"])
    assert len(pruned.graph.node) < 0.6 * len(source.graph.node)  # the MTT branch is gone
    assert not any(n.name.startswith("mtt/") for n in pruned.graph.node)
    x = np.random.default_rng(0).uniform(0, 3, (2, 1, 96, 187)).astype(np.float32)
    full = make_session(source.SerializeToString()).run(["msd_tags", "embedding"], {"logmel": x})
    embedding, tags = make_session(pruned.SerializeToString()).run(["embedding", "msd_tags"], {"logmel": x})
    np.testing.assert_allclose(tags, full[0], atol=1e-6)
    np.testing.assert_allclose(embedding, full[1][:, :200], atol=1e-5)  # MSD's half of the 400


def test_baked_head_is_the_numpy_head() -> None:
    pruned = prune(onnx.load(str(MODEL)), ["msd"])
    rng = np.random.default_rng(1)
    weight, bias = rng.normal(size=(50, 10)).astype(np.float32), rng.normal(size=10).astype(np.float32)
    session = make_session(bake_head(pruned, weight, bias, ["msd_tags"]).SerializeToString())
    assert [o.name for o in session.get_outputs()][:2] == ["probs", "embedding"]
    x = rng.uniform(0, 3, (2, 1, 96, 187)).astype(np.float32)
    probs, tags = session.run(["probs", "msd_tags"], {"logmel": x})
    logits = tags @ weight + bias
    expected = np.exp(logits - logits.max(axis=1, keepdims=True))
    np.testing.assert_allclose(probs, expected / expected.sum(axis=1, keepdims=True), atol=1e-5)


def test_a_head_on_the_embedding_reads_the_penultimate_layer() -> None:
    pruned = prune(onnx.load(str(MODEL)), ["msd"])
    rng = np.random.default_rng(2)
    weight, bias = rng.normal(size=(200, 10)).astype(np.float32) / 10, rng.normal(size=10).astype(np.float32)
    session = make_session(bake_head(pruned, weight, bias, ["embedding"]).SerializeToString())
    x = rng.uniform(0, 3, (2, 1, 96, 187)).astype(np.float32)
    probs, embedding = session.run(["probs", "embedding"], {"logmel": x})
    logits = embedding @ weight + bias
    expected = np.exp(logits - logits.max(axis=1, keepdims=True))
    np.testing.assert_allclose(probs, expected / expected.sum(axis=1, keepdims=True), atol=1e-5)
