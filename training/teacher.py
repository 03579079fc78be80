"""Build the musicnn tagger's served variants from the shipped ONNX file, without TensorFlow.

``python -m training.teacher --branches msd --out model/fast/genre_cnn.onnx``

The shipped model (``model/genre_cnn.onnx``, :mod:`training.convert_musicnn`) holds two taggers
(MSD_musicnn, MTT_musicnn) behind one input, their tag outputs and a baked logistic head. This
module makes the variants the profiles serve, in this order:

1. **prune**: keep the branches asked for (``msd``, ``mtt`` or both), i.e. only the nodes
   their outputs depend on (:func:`prune`), so the
   MSD-only graph costs half the convolutions and needs no re-conversion from TensorFlow;
2. **level normalisation**: the recipe gets ``level_ref_db`` = the median level of the
   mini_train windows (:func:`streamgenre.model.features.level_db`), the training set's own
   typical level, so that a window at a typical level is barely changed;
3. **head**: the logistic head is refitted on the level-normalised mini_train windows
   (:func:`training.fit_head.fit_head`, ``C`` by clip-grouped CV) — the head must see the inputs
   it will be served — and baked in as ``Concat → MatMul → Add → Softmax``. Its input is the kept
   branches' tag probabilities (``--head-input tags``, 50 per branch, as the shipped model) or
   their penultimate layer (``--head-input embedding``, 200 per branch: the tags are a 50-way
   summary of it trained for MSD's tags, not for genres);
4. **calibration**: a temperature for the served probabilities, fitted on the clip-grouped
   validation folds of mini_train (:mod:`training.calibration`), stored in the sidecar;
5. writes the ONNX file and its sidecar; :mod:`training.evaluate` then scores it.

mini_test is used by none of these steps.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from streamgenre.model.contract import ModelError, build_sidecar, load_spec, make_session, run_batched
from streamgenre.model.features import FeatureRecipe, median_level_db, window_starts, windows_from_frames
from training.calibration import fit_temperature_grouped
from training.data import GTZAN_GENRES, DatasetNotFoundError, cached_log_mel, load_split
from training.fit_head import HOP_FRAMES, MINI_ROOT, MODEL_PATH, SplitOutputs, fit_head, head_features

#: Penultimate layer (200 batch-normed features) of each branch in the tf2onnx graph.
EMBEDDING_TENSORS = {
    "msd": "msd/model/batch_normalization_10/batchnorm/add_1:0",
    "mtt": "mtt/model/batch_normalization_10/batchnorm/add_1:0",
}
#: The most a window is boosted: a stream 40 dB down still reaches the reference (the quietest
#: tenth of mini_train windows sits ~10 dB under the median), while -60 dBFS hiss (a window level
#: ~47 dB under the reference for this front end) stays well below music.
DEFAULT_MAX_GAIN_DB = 50.0


def prune(source: onnx.ModelProto, branches: Sequence[str]) -> onnx.ModelProto:
    """The tagger graph of ``branches`` only: outputs ``embedding`` then ``<branch>_tags``, no head.

    Keeps exactly the nodes (and weights) the wanted outputs depend on, walking the graph
    backwards from them. Hand-written rather than :class:`onnx.utils.Extractor` because that one
    needs every kept tensor in the shape-inferred value infos, and tf2onnx's reshapes leave the
    penultimate layers without them.
    """
    unknown = set(branches) - set(EMBEDDING_TENSORS)
    if unknown or not branches:
        raise ValueError(f"branches must be among {sorted(EMBEDDING_TENSORS)}, got {list(branches)}")
    graph = source.graph
    tags = [f"{b}_tags" for b in branches]
    needed = {EMBEDDING_TENSORS[b] for b in branches} | set(tags)
    kept = []
    for node in reversed(graph.node):
        if needed & set(node.output):
            kept.append(node)
            needed.update(i for i in node.input if i)
    kept.reverse()
    kept.append(helper.make_node("Concat", [EMBEDDING_TENSORS[b] for b in branches], ["embedding"], axis=1,
                                 name="embedding_concat"))
    outputs = [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", 200 * len(branches)])]
    outputs += [helper.make_tensor_value_info(t, TensorProto.FLOAT, ["N", 50]) for t in tags]
    pruned = helper.make_graph(kept, f"musicnn_{'_'.join(branches)}", list(graph.input), outputs,
                               [i for i in graph.initializer if i.name in needed])
    model = helper.make_model(pruned, opset_imports=list(source.opset_import), producer_name="training.teacher")
    model.ir_version = source.ir_version
    return model


def bake_head(tagger: onnx.ModelProto, weight: np.ndarray, bias: np.ndarray, inputs: Sequence[str]
              ) -> onnx.ModelProto:
    """Append ``probs = Softmax(Concat(inputs) · W + b)``; outputs in contract order (probs, embedding, tags)."""
    model = onnx.ModelProto()
    model.CopyFrom(tagger)
    graph = model.graph
    graph.initializer.extend([numpy_helper.from_array(weight.astype(np.float32), "head_weight"),
                              numpy_helper.from_array(bias.astype(np.float32), "head_bias")])
    graph.node.extend([
        helper.make_node("Concat", list(inputs), ["head_input"], axis=1, name="head_concat"),
        helper.make_node("MatMul", ["head_input", "head_weight"], ["head_matmul"], name="head_matmul"),
        helper.make_node("Add", ["head_matmul", "head_bias"], ["head_logits"], name="head_add"),
        helper.make_node("Softmax", ["head_logits"], ["probs"], axis=-1, name="head_softmax"),
    ])
    rest = list(graph.output)
    del graph.output[:]
    graph.output.extend([helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", len(bias)]), *rest])
    onnx.checker.check_model(model, full_check=True)
    return model


def training_windows(clips: Sequence[Any], recipe: FeatureRecipe, hop_frames: int) -> tuple[list[np.ndarray], int]:
    """Compressed frames of every clip (cached) and how many windows they hold."""
    frames = [cached_log_mel(c.path, recipe) for c in clips]
    return frames, sum(len(window_starts(f.shape[1], recipe.n_frames, hop_frames)) for f in frames)


def build(source: Path, out: Path, branches: Sequence[str], data: Path = MINI_ROOT, level: bool = True,
          max_gain_db: float = DEFAULT_MAX_GAIN_DB, version: str | None = None, head_input: str = "tags"
          ) -> dict[str, Any]:
    """Prune, level-normalise, refit the head, calibrate; write ``out`` and its sidecar.

    Returns the sidecar written.
    """
    spec = load_spec(source)
    recipe = replace(spec.recipe, level_ref_db=None)
    hop_frames = spec.hop_frames if spec.hop_frames else HOP_FRAMES
    train = load_split(data, "mini")["train"]
    frames, _ = training_windows(train, recipe, hop_frames)
    if level:
        recipe = replace(recipe, level_ref_db=median_level_db(frames, recipe, hop_frames),
                         level_max_gain_db=max_gain_db)
    tagger = prune(onnx.load(str(source)), branches)
    tag_names = [f"{b}_tags" for b in branches]
    name = "+".join(branches)
    if head_input == "tags":
        head_names, head_what, default_version = tag_names, "tag probabilities", f"musicnn-{name}-head-level-2"
    else:
        head_names, head_what, default_version = ["embedding"], "penultimate layer", f"musicnn-{name}-embedding-head"
    session = make_session(tagger.SerializeToString(), threads=1)
    windows, owner = [], []
    for i, f in enumerate(frames):
        w = windows_from_frames(f, recipe, window_starts(f.shape[1], recipe.n_frames, hop_frames))
        windows.append(w)
        owner.append(np.full(len(w), i))
    x, window_clip = np.concatenate(windows), np.concatenate(owner)
    print(f"{head_input} of {len(x)} mini_train windows through the {'+'.join(branches)} tagger", file=sys.stderr)
    features = {k: v.astype(np.float64) for k, v in run_batched(session, x, head_names, 32).items()}
    labels = np.array([GTZAN_GENRES.index(c.genre) for c in train])
    split = SplitOutputs(list(train), labels, window_clip, features)
    head = fit_head(split, tag_names=head_names)
    temperature = fit_temperature_grouped(head_features(features, head_names), split.window_labels, window_clip,
                                          head.c)
    model = bake_head(tagger, head.weight, head.bias, head_names)
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out))
    sidecar = build_sidecar(
        recipe, list(GTZAN_GENRES), hop_frames, 200 * len(branches),
        version or default_version,
        temperature=temperature["temperature"],
        description=(f"musicnn tagger(s) {name} (Pons & Serra, ISC licence; pruned from model/genre_cnn.onnx) "
                     f"with a logistic genre head on their {head_what}. Outputs: "
                     f"probs (10 genres, before the sidecar's temperature), embedding (penultimate layer per "
                     f"branch, 200 each), {', '.join(tag_names)}."),
        trained_on=("Taggers: musicnn's published checkpoints (not retrained). Head and temperature: gtzan-mini "
                    "splits/mini_train.txt (51 clips, non-overlapping 2.992 s windows, level-normalised)."),
        head={"c": head.c, "cv_clip_accuracy": {str(c): a for c, a in head.cv_clip_accuracy.items()},
              "inputs": head_names},
        calibration=temperature,
        built_by=f"python -m training.teacher --source {os.path.relpath(source)} --branches {' '.join(branches)} "
                 f"--head-input {head_input} --out {out}",
    )
    out.with_suffix(".json").write_text(json.dumps(sidecar, indent=2) + "\n")
    return sidecar


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.teacher", description=__doc__.split("\n")[0])
    parser.add_argument("--source", type=Path, default=MODEL_PATH, help="the shipped MSD+MTT model")
    parser.add_argument("--branches", nargs="+", choices=sorted(EMBEDDING_TENSORS), default=["msd", "mtt"])
    parser.add_argument("--out", type=Path, required=True, help="ONNX path to write (sidecar beside it)")
    parser.add_argument("--data", type=Path, default=MINI_ROOT, help="gtzan-mini root")
    parser.add_argument("--no-level", action="store_true", help="no level normalisation")
    parser.add_argument("--max-gain-db", type=float, default=DEFAULT_MAX_GAIN_DB)
    parser.add_argument("--head-input", choices=("tags", "embedding"), default="tags",
                        help="what the genre head reads: the tag probabilities or the penultimate layer")
    parser.add_argument("--version", help="model version (default: musicnn-<branches>[-embedding]-head...)")
    args = parser.parse_args(argv)
    if args.out.resolve() == args.source.resolve():
        print("error: --out must differ from --source (the source is read while the output is written)",
              file=sys.stderr)
        return 2
    try:
        sidecar = build(args.source, args.out, args.branches, args.data, not args.no_level, args.max_gain_db,
                        args.version, args.head_input)
    except (DatasetNotFoundError, FileNotFoundError, ModelError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps({k: sidecar[k] for k in ("version", "temperature", "head")}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
