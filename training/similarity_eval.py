"""Evaluate track embeddings for similarity search.

Evaluation (the paper's "recommendation and similarity system from the test data")::

    python -m training.similarity_eval --data ../shared/data/gtzan-mini --protocol mini \\
        --model model/genre_cnn.onnx

On the test split of a protocol (:func:`training.data.load_split`), every clip is embedded as
the catalogue embeds it (:func:`streamgenre.model.similarity.embed_file`: mean of window embeddings,
L2-normalised) and used once as a query against all the other test clips (leave-one-out):

- precision@k (k = 1, 5, 10): fraction of the k nearest clips with the query's genre;
- mean average precision over the whole ranking;
- kNN accuracy: majority genre of the 5 nearest clips (ties go to the tied genre whose member
  ranks first) against the query's genre.

The same metrics are computed for a baseline embedding without the model: per-mel-band mean and
standard deviation of the clip's log-mel frames (the model's own front end), standardised with
the statistics of the train split, L2-normalised. Chance levels are reported too. Outputs, in
``--out`` (default ``model/report``): ``similarity_<protocol>.json``, a t-SNE map
``embedding_map_<protocol>.png`` and ``similarity.md`` (rebuilt from every protocol's JSON).

The ANN libraries behind the catalogue are benchmarked by :mod:`training.ann_benchmark`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from streamgenre.model.contract import GenreModel
from streamgenre.model.features import log_mel
from streamgenre.model.similarity import embed_audio, l2_normalise, load_audio
from training.data import REPORT_DIR, DatasetNotFoundError, load_split

K_VALUES: tuple[int, ...] = (1, 5, 10)
KNN_K = 5
PROTOCOL_ORDER: tuple[str, ...] = ("filtered", "random", "mini")


def leave_one_out_metrics(
    embeddings: np.ndarray, labels: Sequence[str], ks: Sequence[int] = K_VALUES, knn_k: int = KNN_K
) -> dict[str, Any]:
    """Retrieval metrics of a set of embeddings, each item querying all the others.

    Parameters
    ----------
    embeddings : np.ndarray, shape (n, D)
        One vector per item; compared by cosine similarity (normalised here).
    labels : sequence of str, length n
        Genre of each item; an item is relevant to a query when the genres are equal.
    ks : sequence of int
        Cut-offs of precision@k.
    knn_k : int
        Neighbours voting in the kNN classification.

    Returns
    -------
    dict
        ``precision_at_k`` ({str(k): float}), ``map``, ``knn_accuracy``, ``knn_k``, ``n``, and
        ``per_genre`` ({genre: {"precision_at_5", "average_precision", "knn_accuracy", "n"}}).
        Average precision is averaged over queries that have at least one relevant item.
    """
    x = l2_normalise(embeddings)
    y = np.asarray(labels)
    n = len(y)
    if n < 2:
        raise ValueError("leave-one-out needs at least two items")
    sims = x @ x.T
    np.fill_diagonal(sims, -np.inf)
    # Stable sort: equal similarities are ranked by item order, so results are reproducible.
    order = np.argsort(-sims, axis=1, kind="stable")[:, : n - 1]
    relevant = y[order] == y[:, None]
    n_relevant = relevant.sum(axis=1)
    precision_at_rank = np.cumsum(relevant, axis=1) / np.arange(1, n)
    has_relevant = n_relevant > 0
    ap_sum = (precision_at_rank * relevant).sum(axis=1)
    ap = np.where(has_relevant, ap_sum / np.maximum(n_relevant, 1), np.nan)
    knn_pred = np.array([_vote(y[row[:knn_k]]) for row in order])
    correct = knn_pred == y
    k5 = min(5, n - 1)
    per_genre = {}
    for genre in sorted(set(y.tolist())):
        sel = y == genre
        per_genre[genre] = {
            "precision_at_5": float(relevant[sel, :k5].mean()),
            "average_precision": float(np.nanmean(ap[sel])) if has_relevant[sel].any() else None,
            "knn_accuracy": float(correct[sel].mean()),
            "n": int(sel.sum()),
        }
    return {
        "n": n,
        "precision_at_k": {str(k): float(relevant[:, : min(k, n - 1)].mean()) for k in ks},
        "map": float(np.nanmean(ap)),
        "knn_accuracy": float(correct.mean()),
        "knn_k": knn_k,
        "per_genre": per_genre,
    }


def _vote(neighbour_labels: np.ndarray) -> str:
    values, counts = np.unique(neighbour_labels, return_counts=True)
    tied = set(values[counts == counts.max()].tolist())
    # Among tied genres, the one whose member is nearest wins.
    return next(label for label in neighbour_labels.tolist() if label in tied)


def chance_levels(labels: Sequence[str], ks: Sequence[int] = K_VALUES) -> dict[str, Any]:
    """Reference levels of the leave-one-out metrics for these labels.

    Returns
    -------
    dict
        ``precision_at_k`` and ``map`` of a random ranking (mean of ``(n_genre - 1) / (n - 1)``;
        approximate for mAP), ``knn_accuracy_majority_class``, and ``best_precision_at_k``: the
        ceiling of precision@k, ``mean(min(k, n_genre - 1) / k)``, below 1 when k exceeds the
        number of other clips of a genre (P@10 with 5 clips a genre cannot exceed 0.4).
    """
    y = np.asarray(labels)
    n = len(y)
    counts = {g: int((y == g).sum()) for g in set(y.tolist())}
    expected = float(np.mean([(counts[g] - 1) / (n - 1) for g in y.tolist()]))
    return {
        "precision_at_k": {str(k): expected for k in ks},
        "map": expected,
        "knn_accuracy_majority_class": max(counts.values()) / n,
        "best_precision_at_k": {str(k): float(np.mean([min(k, counts[g] - 1) / k for g in y.tolist()])) for k in ks},
    }


def baseline_features(y: np.ndarray, model: GenreModel) -> np.ndarray:
    """Per-band mean and standard deviation of a clip's log-mel frames (model's front end), (2 n_mels,)."""
    frames = log_mel(y, model.recipe)
    return np.concatenate([frames.mean(axis=1), frames.std(axis=1)]).astype(np.float32)


def embed_split(
    clips: Sequence[Any], model: GenreModel, with_model: bool, desc: str
) -> tuple[np.ndarray | None, np.ndarray]:
    """Model track embeddings (if ``with_model``) and baseline features of ``clips``, decoding once."""
    model_rows, base_rows = [], []
    for clip in tqdm(clips, desc=desc, unit="clip"):
        y, duration_s = load_audio(clip.path, model.recipe.sample_rate)
        if with_model:
            model_rows.append(embed_audio(y, model, duration_s=duration_s).embedding)
        base_rows.append(baseline_features(y, model))
    return (np.stack(model_rows) if with_model else None), np.stack(base_rows)


def dataset_name(root: Path, protocol: str, n: int) -> str:
    """Name under which results are reported, e.g. ``"gtzan-mini test (50 clips)"``."""
    root = Path(root).resolve()
    if protocol == "mini":
        return f"{root.name} test ({n} clips)"
    return f"{root.name} {protocol}-protocol test ({n} clips)"


def evaluate(
    root: Path, protocol: str, model_path: Path, threads: int = 2, baseline: bool = True
) -> tuple[dict[str, Any], dict]:
    """Leave-one-out similarity metrics of the model and the baseline on a protocol's test split.

    Parameters
    ----------
    root : Path
        Dataset root.
    protocol : {"filtered", "random", "mini"}
    model_path : Path
        Contract ONNX model.
    threads : int
        onnxruntime threads.
    baseline : bool
        Also evaluate the log-mel baseline (needs a pass over the train split for its statistics).

    Returns
    -------
    result : dict
        The content of ``similarity_<protocol>.json``.
    embeddings : dict
        ``{"model": (n, D), "baseline": (n, 2 n_mels) or None, "labels": list of str}`` for plotting.
    """
    splits = load_split(root, protocol)
    test = splits["test"]
    if len(test) < 2:
        raise DatasetNotFoundError(f"protocol {protocol!r} has {len(test)} test clips under {root}; need at least 2")
    model = GenreModel(model_path, threads=threads)
    started = time.perf_counter()
    model_emb, base_test = embed_split(test, model, True, "test clips")
    # Standardise the baseline with label-free statistics of the train split (the test split's own
    # when there is no train split), so that no band dominates the cosine by its scale alone.
    train = splits["train"]
    labels = [clip.genre for clip in test]
    metrics = {"model": leave_one_out_metrics(model_emb, labels)}
    base_emb = None
    if baseline:
        base_ref = embed_split(train, model, False, "train clips (baseline stats)")[1] if train else base_test
        mean, std = base_ref.mean(axis=0), base_ref.std(axis=0) + 1e-6
        base_emb = (base_test - mean) / std
        metrics["baseline"] = leave_one_out_metrics(base_emb, labels)
    result = {
        "dataset": dataset_name(root, protocol, len(test)),
        "protocol": protocol,
        "split": "test",
        "n_clips": len(test),
        "model": {
            "path": str(model_path),
            "version": model.version,
            "embedding_dim": int(model_emb.shape[1]),
            "trained_on": (model.spec.model_extra or {}).get("trained_on"),
        },
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seconds": round(time.perf_counter() - started, 1),
        "method": {
            "track_embedding": "mean of window embeddings (sidecar hop), L2-normalised; cosine similarity",
            "baseline": "per-band mean+std of log-mel frames (model front end), z-scored with "
            f"{'train' if train else 'test'}-split statistics, L2-normalised",
            "protocol": "leave-one-out within the test split",
            "knn": f"k={KNN_K} majority vote, ties to the nearest tied genre",
        },
        "metrics": metrics,
        "chance": chance_levels(labels),
        "clips": [clip.clip_id for clip in test],
    }
    return result, {"model": model_emb, "baseline": base_emb, "labels": labels}


def plot_map(embeddings: dict, title: str, out: Path) -> None:
    """Side-by-side t-SNE maps (cosine metric) of model and baseline embeddings, coloured by genre."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.manifold import TSNE

    labels = np.asarray(embeddings["labels"])
    genres = sorted(set(labels.tolist()))
    colours = plt.get_cmap("tab10" if len(genres) <= 10 else "tab20")
    fig, axes = plt.subplots(1, 2, figsize=(13, 6))
    for ax, key, name in zip(
        axes, ("model", "baseline"), ("model embedding", "baseline: log-mel mean+std"), strict=True
    ):
        x = l2_normalise(embeddings[key])
        # Perplexity must stay below the number of points; small test splits need a small one.
        perplexity = float(min(30.0, max(2.0, (len(x) - 1) / 3)))
        xy = TSNE(n_components=2, perplexity=perplexity, metric="cosine", init="pca", random_state=0).fit_transform(x)
        for i, genre in enumerate(genres):
            sel = labels == genre
            ax.scatter(xy[sel, 0], xy[sel, 1], s=28, color=colours(i), label=genre)
        ax.set_title(name)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[1].legend(loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    fig.suptitle(f"t-SNE of track embeddings — {title}")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def write_markdown(report_dir: Path) -> Path:
    """Rebuild ``similarity.md`` from every ``similarity_<protocol>.json`` in ``report_dir``."""
    sections = [
        "# Similarity search: evaluation\n",
        "Generated by `python -m training.similarity_eval` from the `similarity_<protocol>.json` files "
        "beside it; do not edit by hand. Method and catalogue format: `docs/similarity.md`.\n",
        "Leave-one-out on the test split: each clip queries all other test clips by cosine similarity "
        "of track embeddings (mean of window embeddings, L2-normalised). Precision@k = share of the k "
        f"nearest with the query's genre; mAP over the full ranking; kNN = {KNN_K}-nearest majority vote. "
        "Baseline = per-band mean+std of the log-mel frames (same front end), z-scored, no model.\n",
    ]
    for protocol in PROTOCOL_ORDER:
        path = report_dir / f"similarity_{protocol}.json"
        if not path.is_file():
            continue
        r = json.loads(path.read_text())
        m, b, c = r["metrics"]["model"], r["metrics"]["baseline"], r["chance"]
        ks = list(m["precision_at_k"])
        rows = [
            ("model embedding", m["precision_at_k"], m["map"], m["knn_accuracy"]),
            ("baseline (log-mel mean+std)", b["precision_at_k"], b["map"], b["knn_accuracy"]),
            ("chance (random ranking)", c["precision_at_k"], c["map"], None),
            ("best possible", c["best_precision_at_k"], 1.0, 1.0),
        ]
        sections.append(f"## {r['dataset']}\n")
        model = r["model"]
        sections.append(
            f"Protocol `{protocol}`, model `{model['path']}` version `{model['version']}` "
            f"(embedding dim {model['embedding_dim']}), computed {r['created']}.\n"
        )
        if model.get("trained_on"):
            sections.append(f"Model training data (from its sidecar): {model['trained_on']}\n")
        header = "| embedding | " + " | ".join(f"P@{k}" for k in ks) + " | mAP | kNN acc |"
        lines = [header, "|---" * (len(ks) + 3) + "|"]
        for name, pk, ap, knn in rows:
            cells = [_fmt(pk[k]) for k in ks] + [_fmt(ap), _fmt(knn)]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        sections.append("\n".join(lines) + "\n")
        columns = ["genre", "n", "model P@5", "model AP", "model kNN", "baseline P@5", "baseline AP", "baseline kNN"]
        lines = ["| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"]
        keys = ("precision_at_5", "average_precision", "knn_accuracy")
        for genre, g in m["per_genre"].items():
            cells = [_fmt(g[key]) for key in keys] + [_fmt(b["per_genre"][genre][key]) for key in keys]
            lines.append(f"| {genre} | {g['n']} | " + " | ".join(cells) + " |")
        sections.append("Per genre:\n\n" + "\n".join(lines) + "\n")
        sections.append(f"![t-SNE map]({f'embedding_map_{protocol}.png'})\n")
        if protocol == "mini":
            sections.append(
                "gtzan-mini's test clips are neighbours in GTZAN's numbering and often share "
                "an artist with each other, so these figures are optimistic; they are not "
                "GTZAN results.\n"
            )
    out = report_dir / "similarity.md"
    out.write_text("\n".join(sections))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.similarity_eval", description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="dataset root (<genre>/<clip>.<ext> + splits/)")
    parser.add_argument("--protocol", choices=PROTOCOL_ORDER, default="filtered")
    parser.add_argument("--model", type=Path, default=Path("model/genre_cnn.onnx"))
    parser.add_argument("--out", type=Path, default=REPORT_DIR, help="report folder (default model/report)")
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime threads")
    args = parser.parse_args(argv)
    try:
        result, embeddings = evaluate(args.data, args.protocol, args.model, args.threads)
    except DatasetNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"similarity_{args.protocol}.json").write_text(json.dumps(result, indent=1))
    plot_map(embeddings, result["dataset"], args.out / f"embedding_map_{args.protocol}.png")
    write_markdown(args.out)
    m, b = result["metrics"]["model"], result["metrics"]["baseline"]
    for name, r in (("model", m), ("baseline", b)):
        pk = " ".join(f"P@{k}={v:.3f}" for k, v in r["precision_at_k"].items())
        print(f"{result['dataset']}: {name:8s} {pk} mAP={r['map']:.3f} kNN={r['knn_accuracy']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
