"""Build the shipped model: musicnn's MSD and MTT taggers + a genre head, as one ONNX file.

``python -m training.convert_musicnn`` (in ``.venv-convert``, which has TensorFlow, tf-keras,
tf2onnx and musicnn; see ``model/MODEL_CARD.md``) reproduces every figure of the model card:

1. builds each tagger's TF1 graph with musicnn's own ``musicnn.models.define_model`` and
   restores its checkpoint, checking that every variable was found and loaded (musicnn's
   extractor hides a failed restore behind a bare ``except`` and then runs random weights);
2. freezes both graphs and imports them side by side behind one input ``logmel``
   ``[N, 1, 96, 187]`` (our normalised log-mel, here exactly ``log10(10000·S + 1)``),
   transposed inside the graph to musicnn's ``[N, frames, mels]``, and converts the result
   with tf2onnx (opset 17): outputs ``msd_tags``, ``mtt_tags`` (sigmoids) and ``embedding``
   (MSD then MTT penultimate layer, 200 + 200 = 400 features);
3. checks that the ONNX tags equal musicnn's TF tags on every window used below (max abs
   diff ≤ 1e-4, else it stops);
4. fits the logistic head on mini_train (:mod:`training.fit_head`) and appends it to the graph
   as ONNX nodes ``Concat → MatMul → Add → Softmax`` giving ``probs`` over the 10 genres;
5. evaluates on mini_test (head, zero-shot baselines), runs the example recordings, measures
   onnxruntime throughput, and writes ``model/genre_cnn.{onnx,json}`` and ``model/report/mini_test.*``.

Everything runs in float32: musicnn's extractor casts the mel spectrogram to float16 before the
log, which overflows on loud frames; our front end (:mod:`streamgenre.model.features`) never does.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# tf.compat.v1.layers needs Keras 2 (tf-keras); this must be set before TensorFlow is imported.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import musicnn
import numpy as np
import onnx
import tensorflow as tf
import tf2onnx
from musicnn import configuration as musicnn_config
from musicnn import models as musicnn_models
from onnx import TensorProto, helper, numpy_helper

from streamgenre.model.contract import build_sidecar, make_session, run_batched, session_throughput
from training.data import GTZAN_GENRES, REPORT_DIR, load_split
from training.fit_head import (
    EXAMPLES_ROOT,
    HOP_FRAMES,
    MINI_ROOT,
    MODEL_PATH,
    RECIPE,
    Head,
    classification_metrics,
    clip_inputs,
    evaluate_shipped,
    examples_check,
    fit_head,
    head_features,
    model_outputs,
    run_session,
    split_windows,
    write_reports,
    zero_shot_metrics,
)
from training.musicnn_tags import MSD_TAGS, MTT_TAGS

tf.compat.v1.disable_eager_execution()

#: musicnn checkpoints converted, and the output-name prefix each gets in our graph.
TAGGERS: dict[str, str] = {"MSD_musicnn": "msd", "MTT_musicnn": "mtt"}
OPSET = 17
VERSION = "musicnn-msd+mtt-head-1"
#: Largest accepted |ONNX − TF| on tag probabilities (issue 4's acceptance threshold).
MAX_TAG_DIFF = 1e-4
COMMAND = "TF_USE_LEGACY_KERAS=1 .venv-convert/bin/python -m training.convert_musicnn"


@dataclass
class Tagger:
    """One musicnn tagger restored in its own TF graph and session.

    The graph is musicnn's own (``define_model`` under ``name_scope('model')`` with a
    ``[N, 187, 96]`` placeholder, as ``musicnn.extractor`` builds it), so it is also the reference
    the ONNX model is checked against. ``is_training`` is the constant False (inference: batch
    norm uses its moving statistics, dropout is off), which keeps ``tf.cond`` out of the graph.
    """

    name: str
    session: tf.compat.v1.Session
    x: tf.Tensor
    tags: tf.Tensor
    penultimate: tf.Tensor
    n_params: int

    def run(self, windows: np.ndarray, batch: int = 64) -> tuple[np.ndarray, np.ndarray]:
        """TF tags and penultimate features of our ``[N, 1, 96, 187]`` windows."""
        tags, pens = [], []
        for start in range(0, len(windows), batch):
            x = windows[start : start + batch, 0].transpose(0, 2, 1)
            t, p = self.session.run([self.tags, self.penultimate], {self.x: x})
            tags.append(t)
            pens.append(p)
        return np.concatenate(tags), np.concatenate(pens)

    def frozen_graph_def(self) -> tf.compat.v1.GraphDef:
        """The inference graph with variables turned into constants."""
        return tf.compat.v1.graph_util.convert_variables_to_constants(
            self.session, self.session.graph.as_graph_def(), [self.tags.op.name, self.penultimate.op.name]
        )


def checkpoint_prefix(name: str) -> str:
    """musicnn's checkpoint prefix: the model folder with an empty file name (``.../MSD_musicnn/``)."""
    return os.path.join(os.path.dirname(musicnn.__file__), name, "")


def restore_strict(session: tf.compat.v1.Session, prefix: str) -> None:
    """Restore every global variable of the session's graph from ``prefix``, or raise.

    Checks, beyond ``Saver.restore``: every graph variable exists in the checkpoint with the
    same shape, every non-optimizer checkpoint variable is used by the graph, and the values
    in the session afterwards equal the checkpoint's.
    """
    reader = tf.compat.v1.train.NewCheckpointReader(prefix)
    shapes = reader.get_variable_to_shape_map()
    variables = session.graph.get_collection(tf.compat.v1.GraphKeys.GLOBAL_VARIABLES)
    names = {v.op.name: v for v in variables}
    missing = [n for n in names if n not in shapes]
    wrong = [n for n, v in names.items() if n in shapes and list(shapes[n]) != v.shape.as_list()]
    # Adam slots and the step counter are training state, not part of the model.
    unused = [n for n in shapes if n not in names and "Adam" not in n and n not in ("beta1_power", "beta2_power")]
    if missing or wrong or unused:
        raise RuntimeError(f"{prefix}: checkpoint/graph mismatch: missing={missing} shape={wrong} unused={unused}")
    tf.compat.v1.train.Saver(var_list=variables).restore(session, prefix)
    for name, value in zip(names, session.run(list(names.values())), strict=True):
        if not np.array_equal(value, reader.get_tensor(name)):
            raise RuntimeError(f"{prefix}: variable {name} differs from the checkpoint after restore")


def load_tagger(name: str) -> Tagger:
    """Build musicnn's graph for ``name`` and restore its checkpoint (strictly)."""
    n_tags = len(MSD_TAGS if name.startswith("MSD") else MTT_TAGS)
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, RECIPE.n_frames, RECIPE.n_mels], name="x")
        with tf.name_scope("model"):
            logits, *_, penultimate = musicnn_models.define_model(x, False, name, n_tags)
            tags = tf.nn.sigmoid(logits)
        trainable = graph.get_collection(tf.compat.v1.GraphKeys.TRAINABLE_VARIABLES)
        n_params = int(sum(np.prod(v.shape.as_list()) for v in trainable))
    session = tf.compat.v1.Session(graph=graph)
    restore_strict(session, checkpoint_prefix(name))
    return Tagger(name, session, x, tags, penultimate, n_params)


def combined_graph_def(taggers: list[Tagger]) -> tf.compat.v1.GraphDef:
    """Both frozen taggers behind one ``logmel`` input, with named outputs.

    ``logmel`` is ``[N, 1, n_mels, n_frames]`` (our contract); musicnn wants
    ``[N, frames, mels]``, hence the squeeze and transpose in the graph.
    """
    graph = tf.Graph()
    with graph.as_default():
        logmel = tf.compat.v1.placeholder(tf.float32, [None, 1, RECIPE.n_mels, RECIPE.n_frames], name="logmel")
        x = tf.transpose(tf.squeeze(logmel, axis=1), [0, 2, 1])
        penultimates = []
        for tagger in taggers:
            prefix = TAGGERS[tagger.name]
            tags, pen = tf.compat.v1.import_graph_def(
                tagger.frozen_graph_def(),
                input_map={tagger.x.name: x},
                return_elements=[tagger.tags.name, tagger.penultimate.name],
                name=prefix,
            )
            tf.identity(tags, name=f"{prefix}_tags")
            penultimates.append(pen)
        tf.concat(penultimates, axis=1, name="embedding")
    return graph.as_graph_def()


def convert_taggers(taggers: list[Tagger]) -> onnx.ModelProto:
    """tf2onnx conversion of :func:`combined_graph_def`: ``logmel`` → tags and ``embedding``."""
    outputs = [f"{TAGGERS[t.name]}_tags" for t in taggers] + ["embedding"]
    model, _ = tf2onnx.convert.from_graph_def(
        combined_graph_def(taggers),
        name="musicnn_msd_mtt",
        input_names=["logmel:0"],
        output_names=[f"{o}:0" for o in outputs],
        opset=OPSET,
        tensors_to_rename={f"{o}:0": o for o in ["logmel", *outputs]},
    )
    return model


def add_head(tagger_model: onnx.ModelProto, head: Head) -> onnx.ModelProto:
    """Append ``probs = Softmax(Concat(msd_tags, mtt_tags) · W + b)`` to the tagger graph."""
    model = onnx.ModelProto()
    model.CopyFrom(tagger_model)
    graph = model.graph
    graph.initializer.extend(
        [
            numpy_helper.from_array(head.weight.astype(np.float32), "head_weight"),
            numpy_helper.from_array(head.bias.astype(np.float32), "head_bias"),
        ]
    )
    graph.node.extend(
        [
            helper.make_node("Concat", ["msd_tags", "mtt_tags"], ["head_input"], axis=1, name="head_concat"),
            helper.make_node("MatMul", ["head_input", "head_weight"], ["head_matmul"], name="head_matmul"),
            helper.make_node("Add", ["head_matmul", "head_bias"], ["head_logits"], name="head_add"),
            helper.make_node("Softmax", ["head_logits"], ["probs"], axis=-1, name="head_softmax"),
        ]
    )
    # Contract order: probs, embedding first; the raw tags stay as extra outputs.
    by_name = {o.name: o for o in graph.output}
    del graph.output[:]
    graph.output.extend(
        [
            helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", len(GTZAN_GENRES)]),
            by_name["embedding"],
            by_name["msd_tags"],
            by_name["mtt_tags"],
        ]
    )
    graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"
    for out in graph.output:
        out.type.tensor_type.shape.dim[0].dim_param = "N"
    model.doc_string = (
        "musicnn MSD_musicnn + MTT_musicnn taggers (Pons & Serra, ISC licence) with a logistic genre head "
        "fitted on gtzan-mini train; input logmel = log10(10000*S+1) of 96 Slaney mels at 16 kHz."
    )
    onnx.checker.check_model(model, full_check=True)
    return model


def conversion_check(taggers: list[Tagger], model: onnx.ModelProto, windows: np.ndarray) -> dict[str, Any]:
    """Max |ONNX − TF| of tags and embeddings on ``windows``; raises above :data:`MAX_TAG_DIFF`."""
    session = make_session(model.SerializeToString(), threads=2)
    onnx_out = run_batched(session, windows, ["msd_tags", "mtt_tags", "embedding"], 64)
    result: dict[str, Any] = {"n_windows": len(windows)}
    tf_pens = []
    for tagger in taggers:
        prefix = TAGGERS[tagger.name]
        tf_tags, tf_pen = tagger.run(windows)
        tf_pens.append(tf_pen)
        result[f"{prefix}_tags_max_abs_diff"] = float(np.abs(onnx_out[f"{prefix}_tags"] - tf_tags).max())
    tf_embedding = np.concatenate(tf_pens, axis=1)
    result["embedding_max_abs_diff"] = float(np.abs(onnx_out["embedding"] - tf_embedding).max())
    result["embedding_max_abs"] = float(np.abs(tf_embedding).max())
    worst = max(result["msd_tags_max_abs_diff"], result["mtt_tags_max_abs_diff"])
    if worst > MAX_TAG_DIFF:
        raise RuntimeError(f"ONNX tags differ from musicnn TF by {worst:.2e} > {MAX_TAG_DIFF}: {result}")
    return result


def throughput(model_path: Path, threads: int, batch: int = 64, seconds: float = 8.0) -> float:
    """Windows/s of ``probs`` + ``embedding`` at ``batch`` with ``threads`` intra-op threads."""
    session = make_session(model_path, threads)
    return session_throughput(session, batch, seconds, outputs=["probs", "embedding"])["wall"]


def sidecar(embedding_dim: int) -> dict[str, Any]:
    """The JSON sidecar of the shipped model (``model/genre_cnn.json``)."""
    return build_sidecar(
        RECIPE, list(GTZAN_GENRES), HOP_FRAMES, embedding_dim, VERSION,
        description=(
            "musicnn taggers MSD_musicnn and MTT_musicnn (pretrained on the Million Song Dataset and "
            "MagnaTagATune, ISC licence), converted to ONNX, with a logistic-regression genre head on "
            "their 100 tag probabilities. Outputs: probs (10 genres), embedding (MSD then MTT "
            "penultimate layer, 200 + 200), msd_tags and mtt_tags (50 sigmoids each)."
        ),
        trained_on=(
            "Taggers: musicnn's published checkpoints (not retrained). Head: gtzan-mini "
            "splits/mini_train.txt, 51 real GTZAN clips (non-overlapping 2.992 s windows). "
            "Not trained or evaluated on full GTZAN."
        ),
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=MINI_ROOT, help="gtzan-mini root")
    parser.add_argument("--examples", type=Path, default=EXAMPLES_ROOT, help="example recordings")
    parser.add_argument("--out", type=Path, default=MODEL_PATH, help="ONNX path (sidecar beside it)")
    parser.add_argument("--report-dir", type=Path, default=REPORT_DIR)
    args = parser.parse_args(argv)

    if (list(MSD_TAGS), list(MTT_TAGS)) != (musicnn_config.MSD_LABELS, musicnn_config.MTT_LABELS):
        raise RuntimeError("training.musicnn_tags is out of date with musicnn.configuration")

    print("[1/6] building and restoring musicnn graphs")
    taggers = [load_tagger(name) for name in TAGGERS]
    print("[2/6] converting to ONNX")
    tagger_model = convert_taggers(taggers)

    splits = load_split(args.data, "mini")
    cache = {name: split_windows(splits[name]) for name in ("train", "test")}
    example_windows = np.concatenate(
        [clip_inputs(args.examples / name) for name in sorted(p.name for p in args.examples.glob("*.ogg"))]
    )
    check_windows = np.concatenate([cache["train"][0], cache["test"][0], example_windows])
    print(f"[3/6] checking ONNX against musicnn TF on {len(check_windows)} windows")
    conversion = conversion_check(taggers, tagger_model, check_windows)
    print(f"      {conversion}")

    print("[4/6] fitting the head on mini_train")
    tagger_session = make_session(tagger_model.SerializeToString(), threads=2)
    tag_names = ["msd_tags", "mtt_tags", "embedding"]
    train = model_outputs(tagger_session, splits["train"], tag_names, *cache["train"])
    test = model_outputs(tagger_session, splits["test"], tag_names, *cache["test"])
    head = fit_head(train)
    model = add_head(tagger_model, head)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(args.out))
    embedding_dim = int(test.outputs["embedding"].shape[1])
    args.out.with_suffix(".json").write_text(json.dumps(sidecar(embedding_dim), indent=2) + "\n")

    print("[5/6] evaluating on mini_test")
    shipped = evaluate_shipped(args.out, args.data)
    # Batched: one 500-window run would need ~14 GB of activations.
    onnx_probs = run_session(make_session(args.out, 2), cache["test"][0], ["probs"])["probs"]
    head_max_diff = float(np.abs(head.probs(head_features(test.outputs)) - onnx_probs).max())
    examples = examples_check(make_session(args.out, 2), args.examples)

    print("[6/6] measuring onnxruntime throughput")
    speed = {f"threads_{n}": throughput(args.out, n) for n in (1, 2)}
    results = {
        "model_version": VERSION,
        "command": COMMAND,
        "window_s": RECIPE.window_samples / RECIPE.sample_rate,
        "hop_s": RECIPE.frames_to_seconds(HOP_FRAMES),
        "head": shipped,
        **zero_shot_metrics(train, test),
        "head_train_fit": classification_metrics(head.probs(head_features(train.outputs)), train)["clip_accuracy"],
        "train": {
            "n_clips": len(train.clips),
            "n_windows": len(train.window_clip),
            "c": head.c,
            "cv_clip_accuracy": {str(c): a for c, a in head.cv_clip_accuracy.items()},
        },
        "conversion": {**conversion, "head_probs_max_abs_diff_numpy_vs_onnx": head_max_diff},
        "throughput_windows_per_s_batch64": speed,
        "parameters": {
            **{t.name: t.n_params for t in taggers},
            "head": int(head.weight.size + head.bias.size),
            "onnx_file_bytes": args.out.stat().st_size,
        },
        "embedding_dim": embedding_dim,
        "examples": examples,
    }
    write_reports(results, args.report_dir)
    print(
        json.dumps({k: results[k] for k in ("conversion", "throughput_windows_per_s_batch64", "parameters")}, indent=2)
    )
    print(
        f"head (shipped) clip accuracy {shipped['clip_accuracy']:.3f}, window {shipped['window_accuracy']:.3f}; "
        f"zero-shot {results['zero_shot']['clip_accuracy']:.3f}, normalised "
        f"{results['zero_shot_normalised']['clip_accuracy']:.3f}"
    )


if __name__ == "__main__":
    main()
