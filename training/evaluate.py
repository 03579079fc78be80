"""Evaluate an ONNX genre model (+ sidecar) on a dataset split and write the report.

``python -m training.evaluate --model model/genre_cnn.onnx --data ../shared/data/gtzan --protocol filtered``

The model's own sidecar fixes the front end: windows are cut from each clip exactly as the
daemon cuts them (:func:`streamgenre.model.features.clip_windows` with the sidecar's recipe and hop,
through the on-disk frame cache of :mod:`training.data`), so a model with another recipe
(e.g. musicnn's 16 kHz ``log10_1p``) is evaluated unchanged. Clip prediction = mean of the
window probabilities.

Reported: window- and clip-level accuracy, scikit-learn's classification report (clip level),
the clip-level confusion matrix (JSON and PNG) and per-clip predictions. Results accumulate in
``<report>/metrics.json`` keyed by protocol and model name; ``report.md`` is regenerated from
it each time, so several models and protocols share one report.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import classification_report, confusion_matrix
from tqdm import tqdm

from streamgenre.model.contract import GenreModel, ModelError
from streamgenre.model.features import FeatureRecipe
from training.data import (
    DEFAULT_CACHE,
    PROTOCOLS,
    REPO,
    REPORT_DIR,
    Clip,
    DatasetNotFoundError,
    cached_log_mel,
    drop_unreadable,
    load_split,
    window_starts,
    windows_from_frames,
)

DEFAULT_DATA = REPO.parent / "shared" / "data" / "gtzan"
#: Protocols whose confusion matrix is drawn into the report folder (``gtzan-mini`` results
#: are smoke figures; their plots belong to whoever ships the model evaluated on it).
PLOTTED_PROTOCOLS = ("filtered", "random")
PROTOCOL_TITLES = {
    "filtered": "GTZAN fault-filtered split (Kereliuk/Sturm: 443 / 197 / 290 clips)",
    "random": "GTZAN random stratified 80/10/10 split (optimistic: replicas and artists leak)",
    "mini": "gtzan-mini test (50 clips): smoke figure, NOT GTZAN accuracy (neighbouring clips share artists)",
}


def clip_inputs(
    clip: Clip, recipe: FeatureRecipe, hop_frames: int, cache_dir: Path | None = DEFAULT_CACHE
) -> np.ndarray:
    """Model inputs of every window of a clip, as the daemon would cut them.

    Equal to ``clip_windows(read_audio(clip.path, sr), recipe, hop_frames)``; frames come from
    the on-disk cache. Returns float32 ``(n_windows, 1, n_mels, n_frames)``.
    """
    frames = cached_log_mel(clip.path, recipe, cache_dir)
    return windows_from_frames(frames, recipe, window_starts(frames.shape[1], recipe.n_frames, hop_frames))


def iter_clip_outputs(
    model: GenreModel,
    clips: Sequence[Clip],
    cache_dir: Path | None = DEFAULT_CACHE,
    progress: bool = True,
) -> Iterator[tuple[Clip, np.ndarray, np.ndarray]]:
    """Yield ``(clip, window_probs [W, C], window_embeddings [W, D])`` for each clip.

    Clips too short for one window yield empty arrays.
    """
    for clip in tqdm(clips, desc=f"evaluate {model.path.name}", unit="clip", disable=not progress):
        yield (clip, *model.predict(clip_inputs(clip, model.recipe, model.hop_frames, cache_dir), batch_size=64))


def score(
    labels: list[str],
    window_true: np.ndarray,
    window_probs: np.ndarray,
    clip_true: np.ndarray,
    clip_probs: np.ndarray,
) -> dict[str, Any]:
    """Accuracy, classification report and confusion matrix from predicted probabilities.

    Parameters
    ----------
    labels : list of str
        Class names (index = class).
    window_true, clip_true : np.ndarray of int, shapes (W,), (K,)
        True class of each window / clip.
    window_probs, clip_probs : np.ndarray, shapes (W, C), (K, C)
        Predicted probabilities; a clip's are the mean of its windows'.

    Returns
    -------
    dict
        ``window_accuracy``, ``clip_accuracy``, ``macro_f1`` (clip level), ``report`` (sklearn's
        ``output_dict``), ``report_text`` and ``confusion`` (rows = true, columns = predicted).
    """
    classes = list(range(len(labels)))
    clip_pred = clip_probs.argmax(axis=1)
    window_pred = window_probs.argmax(axis=1)
    report = classification_report(
        clip_true, clip_pred, labels=classes, target_names=labels, output_dict=True, zero_division=0
    )
    return {
        "n_clips": len(clip_true),
        "n_windows": len(window_true),
        "window_accuracy": float((window_pred == window_true).mean()) if len(window_true) else None,
        "clip_accuracy": float((clip_pred == clip_true).mean()) if len(clip_true) else None,
        "macro_f1": float(report["macro avg"]["f1-score"]),
        "report": report,
        "report_text": classification_report(
            clip_true, clip_pred, labels=classes, target_names=labels, digits=3, zero_division=0
        ),
        "confusion": confusion_matrix(clip_true, clip_pred, labels=classes).tolist(),
    }


def evaluate_onnx(
    model_path: Path | str | GenreModel,
    clips: Sequence[Clip],
    cache_dir: Path | None = DEFAULT_CACHE,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate an ONNX model with the serving contract on labelled clips.

    Parameters
    ----------
    model_path : Path, str or GenreModel
        ``.onnx`` file with its sidecar next to it, or an already loaded model.
    clips : sequence of Clip
        Each clip's genre must be one of the model's labels. Clips shorter than one window are
        skipped (and counted in ``skipped``).
    cache_dir : Path or None
        Frame cache (see :func:`training.data.cached_log_mel`); ``None`` disables it.
    progress : bool
        Show a tqdm bar.

    Returns
    -------
    dict
        :func:`score`'s keys plus ``model``, ``version``, ``labels``, ``skipped`` and ``clips``
        (per clip: ``clip`` id, ``genre``, ``predicted``, ``probs`` and ``n_windows``).
    """
    model = model_path if isinstance(model_path, GenreModel) else GenreModel(Path(model_path), threads=0)
    unknown = sorted({c.genre for c in clips} - set(model.labels))
    if unknown:
        raise ValueError(f"clips of genres {unknown} that {model.path.name} cannot predict ({model.labels})")
    index = {label: i for i, label in enumerate(model.labels)}
    window_true, window_probs, clip_true, clip_probs, per_clip, skipped = [], [], [], [], [], []
    for clip, probs, _embedding in iter_clip_outputs(model, clips, cache_dir, progress):
        if len(probs) == 0:
            skipped.append(clip.clip_id)
            continue
        mean = probs.mean(axis=0)
        window_true.append(np.full(len(probs), index[clip.genre]))
        window_probs.append(probs)
        clip_true.append(index[clip.genre])
        clip_probs.append(mean)
        per_clip.append(
            {
                "clip": clip.clip_id,
                "genre": clip.genre,
                "predicted": model.labels[int(mean.argmax())],
                "probs": [round(float(p), 5) for p in mean],
                "n_windows": len(probs),
            }
        )
    if not clip_true:
        raise ValueError("no clip long enough for one window")
    result = score(
        model.labels,
        np.concatenate(window_true),
        np.concatenate(window_probs),
        np.array(clip_true),
        np.stack(clip_probs),
    )
    return {
        "model": str(model.path),
        "version": model.version,
        "labels": model.labels,
        **result,
        "skipped": skipped,
        "clips": per_clip,
    }


def write_training_report(out: Path, report: dict[str, Any], result: dict[str, Any]) -> None:
    """Write a training run's ``report.json`` with its mini_test summary (from :func:`evaluate_onnx`) last."""
    summary = {k: result[k] for k in ("clip_accuracy", "window_accuracy", "macro_f1", "n_clips", "confusion")}
    (out / "report.json").write_text(json.dumps({**report, "mini_test": summary}, indent=1, default=str))
    print(f"gtzan-mini test (50 clips): clip {result['clip_accuracy']:.1%}, window {result['window_accuracy']:.1%}")


def plot_confusion(confusion: Sequence[Sequence[int]], labels: list[str], title: str, path: Path) -> None:
    """Draw a confusion matrix (rows = true, columns = predicted) as a PNG with counts."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers; must precede pyplot's import
    import matplotlib.pyplot as plt

    matrix = np.asarray(confusion)
    fig, ax = plt.subplots(figsize=(7, 6))
    image = ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=10)
    threshold = matrix.max() / 2 if matrix.size else 0
    for (i, j), value in np.ndenumerate(matrix):
        if value:
            colour = "white" if value > threshold else "black"
            ax.text(j, i, str(value), ha="center", va="center", color=colour)
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def update_metrics(
    report_dir: Path, protocol: str, name: str, result: dict[str, Any], **context: Any
) -> dict[str, Any]:
    """Merge one model's result into ``<report_dir>/metrics.json`` and return the whole file.

    Stored under ``[protocol][name]``, with ``context`` (data root, split sizes, timing...) and
    a UTC timestamp; per-clip predictions are kept so the figures can be re-derived.
    """
    path = report_dir / "metrics.json"
    metrics = json.loads(path.read_text()) if path.is_file() else {}
    metrics.setdefault(protocol, {})[name] = {
        **{k: v for k, v in result.items() if k != "report_text"},
        **context,
        "evaluated_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    report_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(metrics, indent=1) + "\n")
    return metrics


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def render_report(metrics: dict[str, Any]) -> str:
    """``report.md`` from the contents of ``metrics.json``: one section per protocol."""
    lines = [
        "# streamgenre evaluation report",
        "",
        "Generated by `training/evaluate.py` from `metrics.json`.",
        "",
    ]
    if not any(p in metrics for p in PLOTTED_PROTOCOLS):
        lines += [
            "**No GTZAN results yet.** The full GTZAN set is not on this machine; when it is at",
            "`../shared/data/gtzan/`, `make train` trains the paper CNN on both protocols and",
            "`python -m training.evaluate` evaluates any model; their sections appear here. Figures",
            "below are smoke figures on gtzan-mini and say nothing about GTZAN accuracy.",
            "",
        ]
    for protocol in [p for p in PROTOCOLS if p in metrics] + sorted(set(metrics) - set(PROTOCOLS)):
        entries = metrics[protocol]
        lines += [f"## {PROTOCOL_TITLES.get(protocol, protocol)}", ""]
        lines += [
            "| model | version | data | test clips | window acc. | clip acc. | macro F1 |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, entry in entries.items():
            lines.append(
                f"| {name} | {entry.get('version') or '-'} | `{entry.get('data', '-')}` | "
                f"{entry['n_clips']} | "
                f"{_pct(entry['window_accuracy'])} | {_pct(entry['clip_accuracy'])} | "
                f"{entry['macro_f1']:.3f} |"
            )
        lines.append("")
        labels = next(iter(entries.values()))["labels"]
        lines += [
            "Per-genre F1 (clip level):",
            "",
            "| model | " + " | ".join(labels) + " |",
            "|---|" + "---|" * len(labels),
        ]
        for name, entry in entries.items():
            f1 = [entry["report"].get(label, {}).get("f1-score", 0.0) for label in labels]
            lines.append(f"| {name} | " + " | ".join(f"{v:.2f}" for v in f1) + " |")
        lines.append("")
        for name, entry in entries.items():
            extra = {k: entry[k] for k in ("training", "split_sizes") if k in entry}
            if extra:
                lines += [f"`{name}`: " + json.dumps(extra), ""]
        if protocol in PLOTTED_PROTOCOLS:
            lines += [
                f"Confusion matrix (of the model last evaluated; named in its title): "
                f"![confusion](confusion_{protocol}.png)",
                "",
            ]
        if protocol == "mini":
            lines += [
                "Models trained here used only `splits/mini_train.txt` (a stratified fifth of it held",
                "out for early stopping); none of them is served. `distilled_cnn` (the tagger distilled",
                "into the paper CNN on mini_train alone) was the first student; the served one is",
                "distilled offline on the whole corpus (`training/distill_offline.py`, model card).",
                "50 test clips: one clip is 2 points.",
                "",
            ]
    return "\n".join(lines) + "\n"


def write_report(
    report_dir: Path, protocol: str, results: dict[str, dict[str, Any]], **context: Any
) -> dict[str, Any]:
    """Record ``results`` (model name -> :func:`evaluate_onnx`-style dict) and regenerate the report.

    Writes ``metrics.json`` (merged), ``report.md`` and, for GTZAN protocols
    (:data:`PLOTTED_PROTOCOLS`), ``confusion_<protocol>.png`` of the first model in ``results``
    (each model's matrix is also in ``metrics.json``).
    """
    metrics: dict[str, Any] = {}
    for name, result in results.items():
        metrics = update_metrics(report_dir, protocol, name, result, **context)
    if protocol in PLOTTED_PROTOCOLS and results:
        name, first = next(iter(results.items()))
        plot_confusion(
            first["confusion"],
            first["labels"],
            f"{name} — {protocol} test, clip accuracy {_pct(first['clip_accuracy'])}",
            report_dir / f"confusion_{protocol}.png",
        )
    (report_dir / "report.md").write_text(render_report(metrics))
    return metrics


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--model",
        type=Path,
        default=REPO / "model" / "genre_cnn.onnx",
        help="ONNX model; its sidecar .json must lie next to it",
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="dataset root")
    parser.add_argument("--protocol", choices=PROTOCOLS, nargs="+", default=["filtered", "random"])
    parser.add_argument("--split", choices=("train", "valid", "test"), default="test")
    parser.add_argument("--name", help="key of this model in metrics.json (default: the model's file stem)")
    parser.add_argument("--report", type=Path, default=REPORT_DIR, help="report folder")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="feature cache folder")
    args = parser.parse_args(argv)
    try:
        model = GenreModel(args.model, threads=0)
        for protocol in args.protocol:
            splits, dropped = drop_unreadable(load_split(args.data, protocol))
            if dropped:
                print(f"warning: skipping unreadable clips {dropped}", file=sys.stderr)
            clips = splits[args.split]
            result = evaluate_onnx(model, clips, args.cache)
            print(
                f"{protocol}/{args.split}: {len(clips)} clips, "
                f"window acc {_pct(result['window_accuracy'])}, clip acc {_pct(result['clip_accuracy'])}"
            )
            print(result["report_text"])
            write_report(
                args.report,
                protocol,
                {args.name or args.model.stem: result},
                data=str(args.data),
                split=args.split,
            )
    except (DatasetNotFoundError, FileNotFoundError, ModelError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
