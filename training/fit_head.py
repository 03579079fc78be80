"""Genre head on musicnn's tags: features, fitting on gtzan-mini train, evaluation, reports.

This module needs no TensorFlow: it runs ONNX models with onnxruntime, so the main venv's
tests evaluate the shipped model with exactly the code that produced the reported figures
(:func:`evaluate_shipped`). :mod:`training.convert_musicnn` uses it to fit the head that it
bakes into ``model/genre_cnn.onnx``.

Protocol (see ``../shared/data/gtzan-mini/README.md``): the head is fitted only on
``splits/mini_train.txt`` (51 clips), its regularisation chosen by clip-grouped
cross-validation inside mini_train; ``splits/mini_test.txt`` (50 clips) is used only for the
reported figures. Each clip is cut into non-overlapping windows of 187 frames (2.992 s) with
:func:`streamgenre.model.features.clip_windows`, the daemon's own front end; a clip's prediction is
the mean of its window probabilities.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import classification_report, confusion_matrix
from sklearn.model_selection import GroupKFold
from tqdm import tqdm

from streamgenre.model.contract import GenreModel, calibrate, run_batched
from streamgenre.model.features import FeatureRecipe, clip_windows
from training.data import GTZAN_GENRES, REPO, REPORT_DIR, Clip, load_split, read_audio
from training.musicnn_tags import MSD_TAGS, MTT_TAGS, normalised_scores, zero_shot_scores

MINI_ROOT = REPO.parent / "shared" / "data" / "gtzan-mini"
EXAMPLES_ROOT = REPO.parent / "shared" / "data" / "examples"
MODEL_PATH = REPO / "model" / "genre_cnn.onnx"

#: musicnn's front end (16 kHz, 512-point FFT, hop 256, 96 Slaney mels up to 8 kHz, power
#: spectrogram, ``log10(10000·S + 1)``) in float32, with identity normalisation: the model
#: input is exactly what the taggers were trained on, and 187 frames is their 3 s patch.
RECIPE = FeatureRecipe(
    sample_rate=16000,
    n_fft=512,
    hop_length=256,
    win_length=512,
    window="hann",
    n_mels=96,
    fmin=0.0,
    fmax=8000.0,
    htk=False,
    norm="slaney",
    power=2.0,
    log="log10_1p",
    log_scale=10000.0,
    mean=0.0,
    std=1.0,
    n_frames=187,
)
#: Window hop in frames for training, evaluation and the daemon (``hop_s`` in the sidecar):
#: non-overlapping windows, as musicnn's own extractor uses by default; halves the cost of a
#: 50% overlap for a 3 s time resolution that is ample for genre changes.
HOP_FRAMES = 187
#: Candidate inverse regularisation strengths of the logistic head, picked by grouped CV.
C_GRID: tuple[float, ...] = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)
BATCH = 64


def clip_inputs(path: Path, recipe: FeatureRecipe = RECIPE, hop_frames: int = HOP_FRAMES) -> np.ndarray:
    """Model inputs ``(n_windows, 1, 96, 187)`` of one audio file, cut as the daemon cuts them."""
    return clip_windows(read_audio(path, recipe.sample_rate), recipe, hop_frames)


def run_session(session: ort.InferenceSession, windows: np.ndarray, names: Sequence[str]) -> dict[str, np.ndarray]:
    """Outputs ``names`` over ``windows`` in batches of :data:`BATCH`, as float64 for the head fit."""
    return {name: out.astype(np.float64) for name, out in run_batched(session, windows, names, BATCH).items()}


@dataclass
class SplitOutputs:
    """Window-level model outputs of a list of clips.

    Attributes
    ----------
    clips : list of Clip
    labels : np.ndarray, shape (n_clips,)
        Class index of each clip in :data:`GTZAN_GENRES`.
    window_clip : np.ndarray, shape (n_windows,)
        Index into ``clips`` of each window.
    outputs : dict of str to np.ndarray
        Output name → ``(n_windows, dim)`` array.
    """

    clips: list[Clip]
    labels: np.ndarray
    window_clip: np.ndarray
    outputs: dict[str, np.ndarray]

    @property
    def window_labels(self) -> np.ndarray:
        return self.labels[self.window_clip]

    def clip_mean(self, values: np.ndarray) -> np.ndarray:
        """Mean over each clip's windows of a ``(n_windows, dim)`` array → ``(n_clips, dim)``."""
        sums = np.zeros((len(self.clips), values.shape[1]))
        np.add.at(sums, self.window_clip, values)
        return sums / np.bincount(self.window_clip, minlength=len(self.clips))[:, None]


def split_windows(clips: Sequence[Clip], recipe: FeatureRecipe = RECIPE, hop_frames: int = HOP_FRAMES
                  ) -> tuple[np.ndarray, np.ndarray]:
    """All windows of ``clips`` stacked, and the clip index of each window."""
    windows, owner = [], []
    for i, clip in enumerate(tqdm(clips, desc="features", unit="clip", leave=False)):
        w = clip_inputs(clip.path, recipe, hop_frames)
        if len(w) == 0:
            raise ValueError(f"{clip.path} is shorter than one {RECIPE.window_samples}-sample window")
        windows.append(w)
        owner.append(np.full(len(w), i))
    return np.concatenate(windows), np.concatenate(owner)


def model_outputs(
    session: ort.InferenceSession,
    clips: Sequence[Clip],
    names: Sequence[str],
    windows: np.ndarray | None = None,
    window_clip: np.ndarray | None = None,
) -> SplitOutputs:
    """Run a model over every window of ``clips`` (windows are computed unless given)."""
    if windows is None or window_clip is None:
        windows, window_clip = split_windows(clips)
    labels = np.array([GTZAN_GENRES.index(c.genre) for c in clips])
    return SplitOutputs(list(clips), labels, window_clip, run_session(session, windows, names))


#: The tag outputs the shipped head reads, in the order of its weight rows.
TAG_OUTPUTS: tuple[str, ...] = ("msd_tags", "mtt_tags")


def head_features(outputs: dict[str, np.ndarray], tag_names: Sequence[str] = TAG_OUTPUTS) -> np.ndarray:
    """The head's inputs: the tag probabilities of ``tag_names`` side by side (MSD 50 then MTT 50)."""
    return np.concatenate([outputs[name] for name in tag_names], axis=1)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


@dataclass
class Head:
    """Multinomial logistic regression on the 100 tags, as one affine map + softmax.

    ``weight`` ``(100, 10)`` and ``bias`` ``(10,)`` already include the feature standardisation
    (mean/std of mini_train windows), so the graph needs only MatMul + Add + Softmax.
    """

    weight: np.ndarray
    bias: np.ndarray
    c: float
    cv_clip_accuracy: dict[float, float]

    def probs(self, features: np.ndarray) -> np.ndarray:
        return softmax(features @ self.weight + self.bias)


def _fit_logistic(x: np.ndarray, y: np.ndarray, c: float) -> tuple[np.ndarray, np.ndarray]:
    """Fit on standardised features; return the weights folded back onto raw features."""
    mu, sd = x.mean(axis=0), x.std(axis=0) + 1e-6
    clf = LogisticRegression(C=c, max_iter=10000)
    clf.fit((x - mu) / sd, y)
    if list(clf.classes_) != list(range(len(GTZAN_GENRES))):
        # Every genre must be in the training windows, or the weight columns would shift.
        raise ValueError(f"training data lacks classes: {sorted(set(range(10)) - set(clf.classes_))}")
    weight = clf.coef_.T / sd[:, None]
    bias = clf.intercept_ - (mu / sd) @ clf.coef_.T
    return weight, bias


def fit_head(train: SplitOutputs, n_folds: int = 5, tag_names: Sequence[str] = TAG_OUTPUTS) -> Head:
    """Fit the head on window tags of mini_train; choose ``C`` by clip-grouped K-fold CV.

    Windows are the training samples (each labelled with its clip's genre), but folds split by
    clip and are scored at clip level (mean of window probabilities), as the test is, so no
    clip's windows are on both sides of a fold. Ties go to the smaller ``C`` (stronger
    regularisation), the safer choice with ~40 training clips per fold.
    """
    x, y, groups = head_features(train.outputs, tag_names), train.window_labels, train.window_clip
    scores: dict[float, float] = {}
    for c in C_GRID:
        correct = 0
        for tr, te in GroupKFold(n_splits=n_folds).split(x, y, groups):
            weight, bias = _fit_logistic(x[tr], y[tr], c)
            probs = softmax(x[te] @ weight + bias)
            held = np.unique(groups[te])
            for clip in held:
                mask = groups[te] == clip
                correct += int(probs[mask].mean(axis=0).argmax() == train.labels[clip])
        scores[c] = correct / len(train.clips)
    best = max(C_GRID, key=lambda c: (scores[c], -c))
    weight, bias = _fit_logistic(x, y, best)
    return Head(weight.astype(np.float32), bias.astype(np.float32), best, scores)


def classification_metrics(window_scores: np.ndarray, split: SplitOutputs) -> dict[str, Any]:
    """Clip- and window-level accuracy, per-genre report and confusion matrix (clip level).

    ``window_scores`` ``(n_windows, 10)``: probabilities or any per-genre scores; a clip's
    prediction is the argmax of the mean of its windows' scores.
    """
    labels = list(range(len(GTZAN_GENRES)))
    clip_pred = split.clip_mean(window_scores).argmax(axis=1)
    window_pred = window_scores.argmax(axis=1)
    report = classification_report(
        split.labels,
        clip_pred,
        labels=labels,
        target_names=list(GTZAN_GENRES),
        output_dict=True,
        zero_division=0,
    )
    return {
        "clip_accuracy": float((clip_pred == split.labels).mean()),
        "window_accuracy": float((window_pred == split.window_labels).mean()),
        "n_clips": len(split.clips),
        "n_windows": len(window_pred),
        "per_genre": {g: report[g] for g in GTZAN_GENRES},
        "macro_f1": report["macro avg"]["f1-score"],
        "confusion": confusion_matrix(split.labels, clip_pred, labels=labels).tolist(),
        "clip_predictions": {c.clip_id: GTZAN_GENRES[int(p)] for c, p in zip(split.clips, clip_pred, strict=True)},
    }


def zero_shot_metrics(train: SplitOutputs, test: SplitOutputs) -> dict[str, Any]:
    """Zero-shot tag → genre baselines on ``test``.

    ``zero_shot``: argmax of the mapped tags. ``zero_shot_normalised``: each genre's score
    divided by its mean clip score over *mini_train* (no test statistics). For comparison with
    the figure in issue 4, ``zero_shot_normalised_test_means`` divides by the mean over the
    test clips themselves (transductive: it uses the test set's statistics, not labels).
    """
    train_scores = zero_shot_scores(train.outputs["msd_tags"], train.outputs["mtt_tags"])
    test_scores = zero_shot_scores(test.outputs["msd_tags"], test.outputs["mtt_tags"])
    train_means = train.clip_mean(train_scores).mean(axis=0)
    test_means = test.clip_mean(test_scores).mean(axis=0)
    return {
        "zero_shot": classification_metrics(test_scores, test),
        "zero_shot_normalised": classification_metrics(normalised_scores(test_scores, train_means), test),
        "zero_shot_normalised_test_means": classification_metrics(normalised_scores(test_scores, test_means), test),
    }


def evaluate_shipped(model_path: Path = MODEL_PATH, data_root: Path = MINI_ROOT, threads: int = 2) -> dict[str, Any]:
    """Metrics of the shipped model's ``probs`` on gtzan-mini test (the reported figures).

    Windows are cut with the model's own sidecar recipe (level normalisation included), through
    the one loader that checks it; probabilities are the served ones (sidecar temperature), whose
    clip means decide the clip, as in :mod:`training.scorecard`.
    """
    model = GenreModel(Path(model_path), threads)
    test = load_split(data_root, "mini")["test"]
    windows, owner = split_windows(test, model.recipe, model.hop_frames)
    split = model_outputs(model.session, test, ["probs"], windows, owner)
    return classification_metrics(calibrate(split.outputs["probs"], model.spec.temperature), split)


def top_tags(values: np.ndarray, names: Sequence[str], k: int = 3) -> list[list[Any]]:
    """The ``k`` largest entries of a tag vector as ``[name, value]`` pairs (rounded)."""
    order = np.argsort(values)[::-1][:k]
    return [[names[i], round(float(values[i]), 3)] for i in order]


def examples_check(session: ort.InferenceSession, root: Path = EXAMPLES_ROOT) -> list[dict[str, Any]]:
    """Predicted genre (mean over windows), top genres and top tags of every example file.

    A sanity check, not a measurement: a handful of tracks catches a model that is badly
    wrong, and the speech and animal clips show what the model does outside its taxonomy.
    """
    rows = []
    lines = (root / "labels.tsv").read_text().splitlines()
    header = lines[0].split("\t")
    for line in lines[1:]:
        meta = dict(zip(header, line.split("\t"), strict=True))
        windows = clip_inputs(root / meta["file"])
        row: dict[str, Any] = {"file": meta["file"], "kind": meta["kind"], "label": meta["genre"] or None}
        if len(windows) == 0:
            row["prediction"] = None
            row["note"] = f"shorter than one {RECIPE.window_samples / RECIPE.sample_rate:.3f} s window"
            rows.append(row)
            continue
        out = run_session(session, windows, ["probs", "msd_tags", "mtt_tags"])
        probs = out["probs"].mean(axis=0)
        row.update(
            n_windows=len(windows),
            prediction=GTZAN_GENRES[int(probs.argmax())],
            top_genres=top_tags(probs, GTZAN_GENRES),
            top_msd_tags=top_tags(out["msd_tags"].mean(axis=0), MSD_TAGS),
            top_mtt_tags=top_tags(out["mtt_tags"].mean(axis=0), MTT_TAGS),
        )
        rows.append(row)
    return rows


def _fmt(x: float) -> str:
    return f"{100 * x:.1f}%"


def write_reports(results: dict[str, Any], report_dir: Path = REPORT_DIR) -> None:
    """Write ``mini_test.json``, ``mini_test.md`` and ``confusion_mini_test.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    report_dir.mkdir(parents=True, exist_ok=True)
    (report_dir / "mini_test.json").write_text(json.dumps(results, indent=2) + "\n")

    head = results["head"]
    conf = np.array(head["confusion"])
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    ax.imshow(conf, cmap="Blues")
    ax.set_xticks(range(10), GTZAN_GENRES, rotation=45, ha="right")
    ax.set_yticks(range(10), GTZAN_GENRES)
    for i in range(10):
        for j in range(10):
            if conf[i, j]:
                ax.text(
                    j,
                    i,
                    str(conf[i, j]),
                    ha="center",
                    va="center",
                    color="white" if conf[i, j] > conf.max() / 2 else "black",
                )
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(
        f"{results['model_version']}: gtzan-mini test, {head['n_clips']} clips\n"
        f"clip accuracy {_fmt(head['clip_accuracy'])}"
    )
    fig.tight_layout()
    fig.savefig(report_dir / "confusion_mini_test.png", dpi=110)
    plt.close(fig)

    rows = [
        ("musicnn tags + logistic head (shipped)", head),
        ("zero-shot tag mapping", results["zero_shot"]),
        ("zero-shot, normalised by mini_train means", results["zero_shot_normalised"]),
        ("zero-shot, normalised by mini_test means (transductive)", results["zero_shot_normalised_test_means"]),
    ]
    lines = [
        f"# gtzan-mini test: {results['model_version']}",
        "",
        f"gtzan-mini test ({head['n_clips']} clips, {head['n_windows']} windows of "
        f"{results['window_s']:.3f} s, hop {results['hop_s']:.3f} s). **Not GTZAN accuracy**: "
        "neighbouring GTZAN clips share artists, so this split is optimistic. Head fitted on "
        f"mini_train only ({results['train']['n_clips']} clips, {results['train']['n_windows']} windows), "
        f"C = {results['train']['c']} chosen by 5-fold clip-grouped CV on mini_train "
        f"(CV clip accuracy {_fmt(results['train']['cv_clip_accuracy'][str(results['train']['c'])])}).",
        "",
        "| model | clip accuracy | window accuracy | macro F1 (clip) |",
        "|---|---|---|---|",
        *[
            f"| {name} | {_fmt(m['clip_accuracy'])} | {_fmt(m['window_accuracy'])} | {m['macro_f1']:.3f} |"
            for name, m in rows
        ],
        "",
        "Zero-shot mapping: see `training/musicnn_tags.py` (reggae has no tag and is never predicted).",
        "",
        "## Per-genre, shipped model (clip level)",
        "",
        "| genre | precision | recall | F1 | clips |",
        "|---|---|---|---|---|",
        *[
            f"| {g} | {r['precision']:.2f} | {r['recall']:.2f} | {r['f1-score']:.2f} | {int(r['support'])} |"
            for g, r in head["per_genre"].items()
        ],
        "",
        "Confusion matrix (rows true, columns predicted): `confusion_mini_test.png`.",
        "",
        "## Example recordings (sanity check, not a measurement)",
        "",
        "| file | kind | label | predicted | top genres | top MSD tags | top MTT tags |",
        "|---|---|---|---|---|---|---|",
    ]
    for ex in results["examples"]:
        if ex["prediction"] is None:
            lines.append(f"| {ex['file']} | {ex['kind']} | {ex['label'] or ''} | — ({ex['note']}) | | | |")
            continue
        fmt = ", ".join
        lines.append(
            f"| {ex['file']} | {ex['kind']} | {ex['label'] or ''} | {ex['prediction']} | "
            f"{fmt(f'{n} {v:.2f}' for n, v in ex['top_genres'])} | "
            f"{fmt(f'{n} {v:.2f}' for n, v in ex['top_msd_tags'])} | "
            f"{fmt(f'{n} {v:.2f}' for n, v in ex['top_mtt_tags'])} |"
        )
    lines += ["", f"Reproduce: `{results['command']}`", ""]
    (report_dir / "mini_test.md").write_text("\n".join(lines))
