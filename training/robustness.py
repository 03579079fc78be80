"""Clip accuracy under broadcast degradations, and the labelled example tracks, for any models.

``python -m training.robustness --model model/genre_cnn.onnx model/student/genre_cnn.onnx ...``
writes ``model/report/robustness.json``: for each model, gtzan-mini test clip accuracy on the
clean clips and under each degradation of :data:`CONDITIONS` (level changes from full scale to
-40 dB, telephone and AM band limits, an mp3 round trip at 32 kbit/s through ffmpeg, pink noise
at 10 dB SNR), the points lost against clean, and each labelled track of
``../shared/data/examples/labels.tsv`` (never trained on): predicted genre, mean probability and
how many windows voted for the label.

A degradation is applied to the decoded clip at its own rate, *before* the model's front end,
exactly as a stream would arrive; models then cut windows as the daemon does
(:func:`streamgenre.model.features.clip_windows` at the sidecar's hop). ``yamnet-head:PATH``
evaluates the distillation teacher (YAMNet + the head saved by ``training.distill_scale``).
"""

from __future__ import annotations

import argparse
import csv
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from streamgenre.model.contract import GenreModel
from streamgenre.model.features import clip_windows, resample
from training import yamnet
from training.augment import add_noise, band_limit
from training.corpus import mp3_round_trip
from training.data import GTZAN_GENRES, load_split, read_audio

SAMPLE_RATE = 22050


def _peak(y: np.ndarray, dbfs: float) -> np.ndarray:
    return (y / max(float(np.abs(y).max()), 1e-9) * 10 ** (dbfs / 20)).astype(np.float32)


#: Degradation name → function of (audio at :data:`SAMPLE_RATE`, rng). Levels are peak levels.
CONDITIONS: dict[str, Callable[[np.ndarray, np.random.Generator], np.ndarray]] = {
    "clean": lambda y, rng: y,
    "full scale (peak 0 dBFS)": lambda y, rng: _peak(y, 0.0),
    "level -20 dB": lambda y, rng: (y * 10 ** (-20 / 20)).astype(np.float32),
    "level -40 dB": lambda y, rng: (y * 10 ** (-40 / 20)).astype(np.float32),
    "telephone 300-3400 Hz": lambda y, rng: band_limit(y, SAMPLE_RATE, 300.0, 3400.0),
    "AM 100-5000 Hz": lambda y, rng: band_limit(y, SAMPLE_RATE, 100.0, 5000.0),
    "mp3 32 kbit/s": lambda y, rng: mp3_round_trip(y, SAMPLE_RATE, 32),
    "noise 10 dB SNR": lambda y, rng: add_noise(y, 10.0, rng),
}

Predictor = Callable[[np.ndarray], np.ndarray]


def onnx_predictor(path: Path, max_windows: int | None = None) -> tuple[Predictor, list[str]]:
    """Window probabilities ``[W, C]`` of audio at :data:`SAMPLE_RATE`, cut as the daemon does.

    ``max_windows`` keeps that many windows evenly spread over the clip: the tagger costs ~0.1
    CPU-s a window, and 8 conditions x 500 windows did not fit a shared 2-core box.
    """
    model = GenreModel(path, threads=1)
    recipe = model.recipe

    def predict(y: np.ndarray) -> np.ndarray:
        windows = clip_windows(resample(y, SAMPLE_RATE, recipe.sample_rate), recipe, model.hop_frames)
        if max_windows and len(windows) > max_windows:
            windows = windows[np.linspace(0, len(windows) - 1, max_windows).round().astype(int)]
        return model.predict(windows, batch_size=64)[0]

    return predict, model.labels


def teacher_predictor(head_path: Path, window_s: float = 67072 / 22050) -> tuple[Predictor, list[str]]:
    """The distillation teacher: YAMNet logits of level-normalised windows → the genre head."""
    head = np.load(head_path, allow_pickle=True)
    model = yamnet.Yamnet.load(threads=1)
    n = round(window_s * yamnet.SAMPLE_RATE)

    def predict(y: np.ndarray) -> np.ndarray:
        y16 = resample(y, SAMPLE_RATE, yamnet.SAMPLE_RATE)
        windows = [y16[s : s + n] for s in range(0, len(y16) - n + 1, n // 2)]
        if not windows:
            return np.zeros((0, len(GTZAN_GENRES)), np.float32)
        logits = yamnet.window_features(model, windows)[0] @ head["W"] + head["b"]
        e = np.exp(logits - logits.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    return predict, list(GTZAN_GENRES)


def robustness(
    predict: Predictor, labels: list[str], clips: list, name: str, conditions: list[str], save: Callable[[dict], None]
) -> dict[str, Any]:
    """Clip accuracy per condition (same noise seed per clip for every model).

    ``save`` gets the partial result after every condition, so a slow model (the tagger on a
    loaded box) leaves the conditions it finished even if it has to be stopped.
    """
    audio = [read_audio(c.path, SAMPLE_RATE) for c in clips]
    out: dict[str, Any] = {}
    for condition in conditions:
        degrade = CONDITIONS[condition]
        correct = 0
        for i, (clip, y) in enumerate(
            tqdm(list(zip(clips, audio, strict=True)), desc=f"{name}: {condition}", leave=False)
        ):
            probs = predict(degrade(y, np.random.default_rng(i)))
            correct += labels[int(probs.mean(0).argmax())] == clip.genre
        out[condition] = round(correct / len(clips), 4)
        if "clean" in out:
            out["worst_drop_points"] = round(100 * max(out["clean"] - v for k, v in out.items() if k in CONDITIONS), 1)
        save(out)
    return out


def examples(predict: Predictor, labels: list[str], folder: Path) -> list[dict[str, Any]]:
    """Every music track of ``labels.tsv``: clip-mean prediction, and window votes for the label."""
    rows = []
    with open(folder / "labels.tsv") as handle:
        for row in csv.DictReader(handle, delimiter="\t"):
            if row["kind"] != "music":
                continue
            probs = predict(read_audio(folder / row["file"], SAMPLE_RATE))
            if len(probs) == 0:
                continue
            mean = probs.mean(0)
            votes = np.bincount(probs.argmax(1), minlength=len(labels))
            entry = {
                "file": row["file"],
                "label": row["genre"] or None,
                "predicted": labels[int(mean.argmax())],
                "probability": round(float(mean.max()), 3),
                "windows": len(probs),
            }
            if row["genre"]:
                entry["windows_for_label"] = int(votes[labels.index(row["genre"])])
                entry["correct"] = entry["predicted"] == row["genre"]
            rows.append(entry)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.robustness", description=__doc__.split("\n")[0])
    parser.add_argument("--model", nargs="+", required=True, help="ONNX models, or yamnet-head:PATH.npz")
    parser.add_argument("--gtzan-mini", type=Path, default=Path("../shared/data/gtzan-mini"))
    parser.add_argument("--examples", type=Path, default=Path("../shared/data/examples"))
    parser.add_argument("--out", type=Path, default=Path("model/report/robustness.json"))
    parser.add_argument("--conditions", nargs="+", choices=list(CONDITIONS), default=list(CONDITIONS))
    parser.add_argument("--skip-examples", action="store_true", help="only the mini_test conditions")
    parser.add_argument("--max-windows", type=int, default=None, help="ONNX models: at most this many windows a clip")
    args = parser.parse_args(argv)
    clips = load_split(args.gtzan_mini, "mini")["test"]
    results = json.loads(args.out.read_text()) if args.out.is_file() else {}
    for spec in args.model:
        if spec.startswith("yamnet-head:"):
            predict, labels = teacher_predictor(Path(spec.split(":", 1)[1]))
        else:
            predict, labels = onnx_predictor(Path(spec), args.max_windows)
        entry: dict[str, Any] = {"max_windows_per_clip": None if spec.startswith("yamnet-head:") else args.max_windows}
        results[spec] = entry

        def save(partial: dict[str, Any], entry: dict[str, Any] = entry) -> None:
            entry["mini_test_clip_accuracy"] = partial
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(results, indent=1) + "\n")

        robustness(predict, labels, clips, Path(spec).name, args.conditions, save)
        entry["examples"] = [] if args.skip_examples else examples(predict, labels, args.examples)
        acc = results[spec]["mini_test_clip_accuracy"]
        ex = results[spec]["examples"]
        right = sum(e.get("correct", False) for e in ex)
        print(
            f"{spec}: clean {acc.get('clean', float('nan')):.0%}, worst drop {acc.get('worst_drop_points')} points; "
            f"labelled examples {right}/{sum('correct' in e for e in ex)}"
        )
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
