"""What a user would pick instead: musicnn's own extractor, against our default model (issue 20, point 4).

``musicnn.extractor.extractor`` as shipped (TensorFlow, librosa front end, ``input_length`` 3 s,
``input_overlap`` 1.5 s, i.e. a 1.5 s hop), run once per tagger (MSD_musicnn and MTT_musicnn,
the two our shipped model is built from) on every gtzan-mini test clip; genre = our shipped
genre head (the logistic regression on the 100 tag probabilities, read from
``model/genre_cnn.onnx``) applied to each 3-s patch, clip = mean of the patches' probabilities,
exactly as our model card scores ours. So the two sides differ only in what a user would run:
musicnn's extractor end to end (file decode, resample, mel, TF graph built per call, as the
API does) against ours (``Settings().model_path``: decode, resample, the shared log-mel,
batched ONNX, one thread).

Both sides are timed in CPU-seconds of this process (all threads), per clip, decode included.
Needs TensorFlow, so it runs in the converter's virtualenv (``make musicnn-compare``)::

    TF_USE_LEGACY_KERAS=1 PYTHONPATH=. .venv-convert/bin/python -m training.musicnn_extractor_compare

Writes ``benchmarks/results/musicnn-extractor-<time>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # musicnn's tf.compat.v1.layers need Keras 2
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np

from streamgenre.config import SHIPPED_MODEL, Settings
from streamgenre.model.contract import GenreModel
from streamgenre.model.features import clip_windows
from training.data import load_split, read_audio

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
TAGGERS = ("MSD_musicnn", "MTT_musicnn")  # the head's input order: MSD 50 tags, then MTT 50
HOP_S, INPUT_LENGTH_S = 1.5, 3.0


def shipped_head(path: Path = SHIPPED_MODEL) -> tuple[np.ndarray, np.ndarray]:
    """The genre head's weight ``(100, n_genres)`` and bias from the shipped ONNX graph."""
    import onnx
    from onnx import numpy_helper

    init = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}
    return init["head_weight"], init["head_bias"]


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def theirs(path: Path, weight: np.ndarray, bias: np.ndarray) -> tuple[np.ndarray, float]:
    """Clip probabilities from musicnn's extractor (both taggers) + our head, and its CPU-seconds."""
    from musicnn.extractor import extractor

    cpu0 = time.process_time()
    taggrams = [extractor(str(path), model=m, input_length=INPUT_LENGTH_S, input_overlap=HOP_S,
                          extract_features=False)[0] for m in TAGGERS]
    cpu = time.process_time() - cpu0
    n = min(t.shape[0] for t in taggrams)
    tags = np.concatenate([t[:n] for t in taggrams], axis=1)
    return softmax(tags @ weight + bias).mean(axis=0), cpu


def ours(path: Path, model: GenreModel) -> tuple[np.ndarray, float]:
    """Clip probabilities from our default model on the same file, and its CPU-seconds."""
    cpu0 = time.process_time()
    windows = clip_windows(read_audio(path, model.recipe.sample_rate), model.recipe, model.spec.hop_frames)
    probs = model.predict(windows)[0]
    return probs.mean(axis=0), time.process_time() - cpu0


def summarise(rows: list[dict]) -> dict[str, float]:
    """Audio-seconds per CPU-second of both sides, their ratio, and both clip accuracies."""
    audio = sum(r["audio_s"] for r in rows)
    summary = {
        "clips": len(rows),
        "audio_s": round(audio, 1),
        "theirs_audio_s_per_cpu_s": round(audio / sum(r["theirs_cpu_s"] for r in rows), 2),
        "ours_audio_s_per_cpu_s": round(audio / sum(r["ours_cpu_s"] for r in rows), 1),
        "theirs_clip_accuracy": round(float(np.mean([r["theirs"] == r["genre"] for r in rows])), 3),
        "ours_clip_accuracy": round(float(np.mean([r["ours"] == r["genre"] for r in rows])), 3),
    }
    summary["ours_over_theirs"] = round(summary["ours_audio_s_per_cpu_s"] / summary["theirs_audio_s_per_cpu_s"], 1)
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/gtzan-mini")
    parser.add_argument("--limit", type=int, default=0, help="first N test clips only (0: all)")
    args = parser.parse_args()
    import tensorflow as tf

    tf.compat.v1.disable_eager_execution()
    clips = load_split(args.data, "mini")["test"]
    clips = clips[: args.limit] if args.limit else clips
    weight, bias = shipped_head()
    default = Path(Settings().model_path)
    model = GenreModel(default, threads=1)
    shipped_labels = GenreModel(SHIPPED_MODEL, threads=1).labels
    # One untimed pass of each first: lazy imports, TF's and onnxruntime's first-run set-up.
    theirs(clips[0].path, weight, bias)
    ours(clips[0].path, model)
    path = RESULTS / f"musicnn-extractor-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    header = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": " ".join(sys.argv),
        "ours_model": str(default), "theirs": f"musicnn.extractor {TAGGERS}, input_length {INPUT_LENGTH_S} s, "
                                              f"input_overlap {HOP_S} s, + the shipped genre head",
        "tensorflow": tf.__version__, "python": platform.python_version(), "loadavg": os.getloadavg(),
        "clips_in_split": len(clips),
    }
    rows: list[dict[str, object]] = []
    for clip in clips:
        audio_s = float(len(read_audio(clip.path, 16000)) / 16000)
        p_theirs, cpu_theirs = theirs(clip.path, weight, bias)
        p_ours, cpu_ours = ours(clip.path, model)
        rows.append({"clip": clip.path.name, "genre": clip.genre, "audio_s": round(audio_s, 2),
                     "theirs": shipped_labels[int(np.argmax(p_theirs))], "theirs_cpu_s": round(cpu_theirs, 3),
                     "ours": model.labels[int(np.argmax(p_ours))], "ours_cpu_s": round(cpu_ours, 4)})
        print(rows[-1], flush=True)
        # Written after every clip: a run stopped early still leaves its figures (with their count).
        path.write_text(json.dumps({**header, "summary": summarise(rows), "clips": rows}, indent=2) + "\n")
    print(json.dumps(summarise(rows)), f"\nwritten {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
