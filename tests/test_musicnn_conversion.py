"""The shipped ONNX tags equal musicnn's own TensorFlow tags on the same input patches.

Needs TensorFlow, tf-keras and musicnn (the ``.venv-convert`` environment of
``training.convert_musicnn``); skipped in the main venv, which has neither.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
pytest.importorskip("tensorflow")
pytest.importorskip("musicnn")
pytest.importorskip("tf2onnx")

from training import convert_musicnn as cm
from training.fit_head import EXAMPLES_ROOT, clip_inputs, make_session

MODEL = Path(__file__).resolve().parents[1] / "model" / "genre_cnn.onnx"


def _patches() -> np.ndarray:
    """Real music, silence and a loud full-scale window: the ranges the front end produces."""
    rng = np.random.default_rng(0)
    real = [
        clip_inputs(EXAMPLES_ROOT / f)[:4]
        for f in ("brahms_hungarian_dance_5.ogg", "macleod_vibe_ace.ogg")
        if (EXAMPLES_ROOT / f).is_file()
    ]
    synthetic = [np.zeros((1, 1, 96, 187), np.float32), rng.uniform(0, 4.5, (2, 1, 96, 187)).astype(np.float32)]
    return np.concatenate(real + synthetic)


def test_onnx_tags_match_musicnn_tensorflow() -> None:
    windows = _patches()
    session = make_session(MODEL, threads=2)
    for name, prefix in cm.TAGGERS.items():
        tagger = cm.load_tagger(name)
        tf_tags, _ = tagger.run(windows)
        (onnx_tags,) = session.run([f"{prefix}_tags"], {"logmel": windows})
        assert np.abs(onnx_tags - tf_tags).max() <= cm.MAX_TAG_DIFF


def test_restore_fails_loudly_on_a_wrong_checkpoint() -> None:
    """A checkpoint of another shape must raise, never fall back to random weights."""
    import tensorflow as tf

    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.get_variable("dense/kernel", shape=[3, 3])
    with tf.compat.v1.Session(graph=graph) as session, pytest.raises(RuntimeError, match="mismatch"):
        cm.restore_strict(session, cm.checkpoint_prefix("MSD_musicnn"))
