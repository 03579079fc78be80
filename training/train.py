"""Train the paper's CNN from scratch, export it to ONNX and report it next to the baseline.

``python -m training.train --data ../shared/data/gtzan --protocol filtered random --out build/paper_cnn``

For each protocol, in order:

1. Load the splits (:func:`training.data.load_split`). A protocol without a validation list
   (``mini``) gets one carved out of its training clips (stratified, fixed seed), since early
   stopping needs it and the test split must stay untouched.
2. Compute the log-mel frames of every clip and of ``--variants`` waveform augmentations of each
   training clip (:mod:`training.augment`), in ``--threads`` processes, cached on disk.
3. Estimate the per-mel mean/std on the training windows; they become the recipe's ``mean`` and
   ``std``, so the daemon normalises exactly as training did.
4. Train with Adam + cross-entropy on randomly placed windows (random gain, SpecAugment, mixup),
   early stopping on validation window accuracy, fixed seeds; keep the best epoch. With
   ``--teacher MODEL`` the targets are mostly that model's probabilities on the same audio,
   original and variants alike (distillation, :mod:`training.distill`), and the result is
   reported as ``distilled_cnn``.
5. Export ``<out>/<protocol>/genre_cnn.onnx`` + sidecar, check PyTorch vs onnxruntime, measure
   windows/s on one core at batch 64.
6. Evaluate the exported ONNX (:func:`training.evaluate.evaluate_onnx`) and the baseline
   (:mod:`training.baseline`) on the test split; write ``metrics.json``, ``report.md`` and the
   confusion matrix to ``--report`` and a training curve to ``<out>/<protocol>/``.

Everything here runs on CPU; ``--threads`` bounds both the feature processes and torch.

What a run trains on (config, frames, normaliser, samplers) lives in :mod:`training.train_windows`;
this module keeps the loop, the export and the report. It stays near 500 lines because
:func:`run_protocol` is the script of steps 1-6 in one place, so their order reads top-down.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from torch import nn
from tqdm import tqdm

from streamgenre.model.contract import GenreModel, load_spec
from streamgenre.model.features import FeatureRecipe, median_level_db
from training import baseline
from training.augment import WaveformAugmentation, mixup, spec_augment, variant_specs
from training.cnn import benchmark_onnx, build_model, count_parameters, default_recipe, export_onnx
from training.data import (
    DEFAULT_CACHE,
    PROTOCOLS,
    REPORT_DIR,
    Clip,
    DatasetNotFoundError,
    drop_unreadable,
    labels_of,
    load_split,
    stratified_split,
)
from training.distill import teacher_targets
from training.evaluate import (
    DEFAULT_DATA,
    evaluate_onnx,
    plot_confusion,
    write_report,
)
from training.train_windows import (
    DistillSampler,
    TrainConfig,
    ValidationSet,
    WindowSampler,
    compute_frames,
    fit_normaliser,
)

#: Training facts copied into the report next to the CNN's scores.
REPORTED_TRAINING_KEYS = (
    "config",
    "n_parameters",
    "epochs_run",
    "best_epoch",
    "feature_seconds",
    "train_seconds",
    "total_seconds",
    "torch_threads",
    "onnx_windows_per_s_1core_batch64",
)


def predict(model: nn.Module, windows: np.ndarray, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """``(probs, embeddings)`` of the model in eval mode, as float32 numpy arrays."""
    model.eval()
    probs, embeddings = [], []
    with torch.no_grad():
        for start in range(0, len(windows), batch_size):
            logits, emb = model(torch.from_numpy(windows[start : start + batch_size]))
            probs.append(torch.softmax(logits, dim=1).numpy())
            embeddings.append(emb.numpy())
    return np.concatenate(probs), np.concatenate(embeddings)


def validate(model: nn.Module, valid: ValidationSet) -> dict[str, float]:
    """Window loss and accuracy and clip accuracy (mean of window probabilities) on validation."""
    probs, _ = predict(model, valid.windows)
    loss = float(-np.log(np.maximum(probs[np.arange(len(probs)), valid.window_targets], 1e-12)).mean())
    clip_probs = np.stack(
        [probs[valid.window_clip == i].mean(axis=0) for i in range(len(valid.clip_targets))]
    )
    return {
        "loss": loss,
        "window_accuracy": float((probs.argmax(axis=1) == valid.window_targets).mean()),
        "clip_accuracy": float((clip_probs.argmax(axis=1) == valid.clip_targets).mean()),
    }


def train_model(
    sampler: WindowSampler, valid: ValidationSet, n_classes: int, config: TrainConfig
) -> tuple[nn.Module, list[dict[str, float]]]:
    """Train a fresh :class:`training.cnn.PaperCNN`; return the best-validation model and history.

    Loss is the cross-entropy against the sampler's target distributions (one-hot labels, or
    teacher probabilities when distilling), mixup-softened; Adam; the learning rate
    halves after ``patience // 2`` epochs without improvement; training stops after ``patience``
    such epochs, at ``config.epochs``, or when ``config.time_budget_min`` is spent.
    """
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    recipe = sampler.recipe
    model = build_model(recipe.n_mels, recipe.n_frames, n_classes, seed=config.seed)
    optimiser = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimiser, mode="max", factor=0.5, patience=max(1, config.patience // 2)
    )
    best: tuple[float, float] = (-1.0, 0.0)
    best_state: dict[str, torch.Tensor] = {}
    history: list[dict[str, float]] = []
    start, stale = time.perf_counter(), 0
    for epoch in range(1, config.epochs + 1):
        inputs, targets = sampler.epoch(rng)
        model.train()
        losses = []
        batches = range(0, len(inputs), config.batch_size)
        for b in tqdm(batches, desc=f"epoch {epoch}", unit="batch", leave=False):
            x, y = inputs[b : b + config.batch_size].copy(), targets[b : b + config.batch_size]
            if config.spec_augment:
                x = spec_augment(x, rng)
            x, y = mixup(x, y, rng, config.mixup_alpha)
            logits, _ = model(torch.from_numpy(x))
            loss = -(torch.from_numpy(y) * torch.log_softmax(logits, dim=1)).sum(dim=1).mean()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            losses.append(loss.item())
        scores = validate(model, valid)
        scheduler.step(scores["window_accuracy"])
        history.append(
            {
                "epoch": epoch,
                "train_loss": float(np.mean(losses)),
                **scores,
                "lr": optimiser.param_groups[0]["lr"],
                "elapsed_s": time.perf_counter() - start,
            }
        )
        improved = (scores["window_accuracy"], -scores["loss"]) > best
        if improved:
            best, stale = (scores["window_accuracy"], -scores["loss"]), 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            stale += 1
        print(
            f"epoch {epoch:3d}  train loss {history[-1]['train_loss']:.3f}  valid loss {scores['loss']:.3f}  "
            f"window acc {scores['window_accuracy']:.3f}  clip acc {scores['clip_accuracy']:.3f}"
            f"{'  *' if improved else ''}",
            flush=True,
        )
        over_budget = (
            config.time_budget_min is not None and time.perf_counter() - start > 60 * config.time_budget_min
        )
        if stale >= config.patience or over_budget:
            break
    model.load_state_dict(best_state)
    model.eval()
    return model, history


def plot_history(history: list[dict[str, float]], path: Path, title: str) -> None:
    """Training loss and validation loss/accuracy per epoch, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [h["train_loss"] for h in history], label="train (augmented, mixup)")
    ax_loss.plot(epochs, [h["loss"] for h in history], label="valid")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("cross-entropy")
    ax_loss.legend()
    ax_acc.plot(epochs, [h["window_accuracy"] for h in history], label="valid window")
    ax_acc.plot(epochs, [h["clip_accuracy"] for h in history], label="valid clip")
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("accuracy")
    ax_acc.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def onnx_parity(model: nn.Module, onnx_path: Path, windows: np.ndarray) -> dict[str, float]:
    """Max abs difference of ``probs`` and ``embedding`` between PyTorch and onnxruntime."""
    probs, embeddings = predict(model, windows)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    onnx_probs, onnx_embeddings = session.run(["probs", "embedding"], {"logmel": windows})
    return {
        "probs": float(np.abs(probs - onnx_probs).max()),
        "embedding": float(np.abs(embeddings - onnx_embeddings).max()),
    }


def group_versions(
    train: Sequence[Clip],
    specs: Sequence[tuple[Clip, WaveformAugmentation]],
    originals: Sequence[np.ndarray],
    variants: Sequence[np.ndarray],
) -> list[list[np.ndarray]]:
    """Per training clip ``train[i]``: its original's frames, then its variants' in ``specs`` order."""
    position = {c.clip_id: i for i, c in enumerate(train)}
    versions = [[f] for f in originals]
    for (clip, _spec), frames in zip(specs, variants, strict=True):
        versions[position[clip.clip_id]].append(frames)
    return versions


def label_with_teacher(
    teacher_path: Path,
    train: Sequence[Clip],
    specs: Sequence[tuple[Clip, WaveformAugmentation]],
    versions: list[list[np.ndarray]],
    labels: list[str],
    recipe: FeatureRecipe,
    config: TrainConfig,
    cache_dir: Path | None,
) -> list[list[np.ndarray]]:
    """Teacher probabilities for every student window of every version of every training clip.

    ``versions[i]`` holds clip ``train[i]``'s original then its variants in ``specs`` order; the
    teacher sees the same waveforms (same augmentation chains) through its own front end.
    Returns the parallel structure of :func:`training.distill.teacher_targets` arrays.
    """
    teacher = GenreModel(Path(teacher_path), threads=config.threads)
    jobs = [(c.path, None) for c in train] + [(c.path, spec) for c, spec in specs]
    teacher_frames = compute_frames(jobs, teacher.recipe, cache_dir, config.threads, desc="teacher features")
    frames_by_clip = group_versions(train, specs, teacher_frames[: len(train)], teacher_frames[len(train) :])
    return [
        [
            teacher_targets(teacher, t, s.shape[1], recipe, config.hop_frames, labels)
            for t, s in zip(teacher_version, student_versions, strict=True)
        ]
        for teacher_version, student_versions in tqdm(
            zip(frames_by_clip, versions, strict=True), total=len(train), desc="teacher labels", unit="clip"
        )
    ]


def run_protocol(
    data: Path,
    protocol: str,
    out_dir: Path,
    config: TrainConfig,
    report_dir: Path | None = REPORT_DIR,
    cache_dir: Path | None = DEFAULT_CACHE,
    recipe: FeatureRecipe | None = None,
    teacher: Path | None = None,
) -> dict[str, Any]:
    """Train, export, check and evaluate the paper CNN on one protocol (see the module docstring).

    Parameters
    ----------
    data : Path
        Dataset root.
    protocol : {"filtered", "random", "mini"}
    out_dir : Path
        Receives ``genre_cnn.onnx``, ``genre_cnn.json``, ``training.json``, ``training_curve.png``
        and ``confusion.png``.
    config : TrainConfig
    report_dir : Path or None
        Where ``metrics.json`` / ``report.md`` / ``confusion_<protocol>.png`` are updated
        (None = only ``out_dir``).
    cache_dir : Path or None
        Feature cache.
    recipe : FeatureRecipe, optional
        Front end (default :func:`training.cnn.default_recipe`); mean/std are re-estimated.
    teacher : Path, optional
        An ONNX model with the serving contract to distil (e.g. ``model/genre_cnn.onnx``).

    Returns
    -------
    dict
        The training summary written to ``training.json`` plus the test results.
    """
    t_start = time.perf_counter()
    torch.set_num_threads(config.threads)
    splits, dropped = drop_unreadable(load_split(data, protocol, seed=config.seed))
    if dropped:
        print(f"warning: skipping unreadable clips {dropped}", file=sys.stderr)
    if not splits["valid"]:
        carved = stratified_split(
            splits["train"], (1 - config.valid_fraction, config.valid_fraction, 0.0), config.seed
        )
        splits = {"train": carved["train"], "valid": carved["valid"], "test": splits["test"]}
    if not splits["train"] or not splits["valid"] or not splits["test"]:
        raise DatasetNotFoundError(
            f"{protocol!r} on {data}: empty split ({ {k: len(v) for k, v in splits.items()} })"
        )
    labels = labels_of(splits)
    index = {label: i for i, label in enumerate(labels)}
    recipe = recipe or default_recipe()
    sizes = {k: len(v) for k, v in splits.items()}
    print(f"{protocol}: {sizes} clips, labels {labels}")

    # Step 2: frames of originals (all splits) and of the training clips' waveform variants.
    train, valid_clips, test = splits["train"], splits["valid"], splits["test"]
    originals = compute_frames(
        [(c.path, None) for c in train + valid_clips],
        recipe,
        cache_dir,
        config.threads,
        desc=f"{protocol} features",
    )
    train_frames, valid_frames = originals[: len(train)], originals[len(train) :]
    specs = [(c, spec) for c in train for spec in variant_specs(c.clip_id, config.variants, config.seed)]
    variant_frames = compute_frames(
        [(c.path, spec) for c, spec in specs],
        recipe,
        cache_dir,
        config.threads,
        desc=f"{protocol} augmentation",
    )
    versions = group_versions(train, specs, train_frames, variant_frames)
    teacher_probs = None
    if teacher is not None:
        teacher_probs = label_with_teacher(teacher, train, specs, versions, labels, recipe, config, cache_dir)
    t_features = time.perf_counter() - t_start

    # Step 3: normalisation from the original training windows only (augmented ones are not the
    # distribution the daemon sees).
    # Level normalisation before it: the statistics are then those of windows at the reference
    # level, as the daemon presents them.
    if config.level_normalisation:
        recipe = replace(recipe, level_ref_db=median_level_db(train_frames, recipe, config.hop_frames))
    recipe = fit_normaliser(train_frames, recipe, config.hop_frames)
    train_targets = np.array([index[c.genre] for c in train])
    if teacher_probs is None:
        sampler = WindowSampler(versions, train_targets, recipe, config, len(labels))
    else:
        sampler = DistillSampler(versions, train_targets, teacher_probs, recipe, config, len(labels))
    valid = ValidationSet.build(
        valid_frames, [index[c.genre] for c in valid_clips], recipe, config.hop_frames
    )

    # Step 4.
    t_train = time.perf_counter()
    model, history = train_model(sampler, valid, len(labels), config)
    t_train = time.perf_counter() - t_train

    # Step 5.
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = out_dir / "genre_cnn.onnx"
    summary: dict[str, Any] = {
        "protocol": protocol,
        "data": str(data),
        "split_sizes": {k: len(v) for k, v in splits.items()},
        "config": asdict(config),
        "n_parameters": count_parameters(model),
        "epochs_run": len(history),
        "best_epoch": max(history, key=lambda h: (h["window_accuracy"], -h["loss"]))["epoch"],
        "feature_seconds": round(t_features, 1),
        "train_seconds": round(t_train, 1),
        "torch_threads": config.threads,
    }
    name = "paper_cnn"
    if teacher is not None:
        name = "distilled_cnn"
        summary["teacher"] = {"path": str(teacher), "version": load_spec(teacher).version}
    version = f"{name.replace('_', '-')}-{protocol}-{datetime.now(UTC).strftime('%Y%m%d%H%M')}"
    export_onnx(
        model,
        recipe,
        labels,
        onnx_path,
        hop_frames=config.hop_frames,
        version=version,
        trained_on=f"{data} ({protocol} train split)",
        training=summary,
    )
    summary["onnx_max_abs_diff"] = onnx_parity(model, onnx_path, valid.windows[:256])
    # Train/serve skew check: the exported model, fed by the sidecar's recipe exactly as the
    # daemon is, must score the validation clips as the training loop did.
    trained_valid = validate(model, valid)
    served_valid = evaluate_onnx(onnx_path, valid_clips, cache_dir, progress=False)
    summary["valid"] = {"torch": trained_valid, "onnx_from_sidecar": served_valid["window_accuracy"]}
    if abs(trained_valid["window_accuracy"] - served_valid["window_accuracy"]) > 0.01:
        raise RuntimeError(f"train/serve skew: validation window accuracy {summary['valid']}")
    rate = benchmark_onnx(onnx_path, batch=64, threads=1, seconds=config.benchmark_seconds)
    summary["onnx_windows_per_s_1core_batch64"] = {k: round(v, 1) for k, v in rate.items()}
    print(
        f"exported {onnx_path}: {summary['n_parameters']} parameters, PyTorch vs onnxruntime max abs diff "
        f"{summary['onnx_max_abs_diff']}; onnxruntime, 1 thread, batch 64: {rate['wall']:.0f} windows/s "
        f"wall clock, {rate['cpu']:.0f} per CPU-second",
        flush=True,
    )
    plot_history(history, out_dir / "training_curve.png", f"{name}, {protocol} protocol")

    # Step 6.
    cnn_result = evaluate_onnx(onnx_path, test, cache_dir)
    base_model = baseline.fit_baseline(
        baseline.clip_statistics(train, recipe, config.hop_frames, cache_dir, desc="baseline train"),
        train_targets,
        config.seed,
    )
    base_result = baseline.evaluate_baseline(
        base_model,
        baseline.clip_statistics(test, recipe, config.hop_frames, cache_dir, desc="baseline test"),
        test,
        labels,
    )
    plot_confusion(
        cnn_result["confusion"],
        labels,
        f"{name}, {protocol} test: clip accuracy {cnn_result['clip_accuracy']:.1%}",
        out_dir / "confusion.png",
    )
    summary["total_seconds"] = round(time.perf_counter() - t_start, 1)
    summary["history"] = history
    (out_dir / "training.json").write_text(json.dumps(summary, indent=1) + "\n")
    for model_name, result in ((name, cnn_result), (baseline.NAME, base_result)):
        print(
            f"{model_name}: test window acc {result['window_accuracy']:.3f}, clip acc {result['clip_accuracy']:.3f}"
        )
        print(result["report_text"])
    if report_dir is not None:
        cnn_entry = {**cnn_result, "training": {k: summary[k] for k in REPORTED_TRAINING_KEYS}}
        context = {k: summary[k] for k in ("data", "split_sizes")}
        write_report(report_dir, protocol, {name: cnn_entry, baseline.NAME: base_result}, **context)
    return {**summary, "test": {name: cnn_result, baseline.NAME: base_result}}


def main(argv: Sequence[str] | None = None) -> int:
    defaults = TrainConfig()
    parser = argparse.ArgumentParser(prog="python -m training.train", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--data", type=Path, default=DEFAULT_DATA, help="dataset root (default ../shared/data/gtzan)"
    )
    parser.add_argument("--protocol", choices=PROTOCOLS, nargs="+", default=["filtered", "random"])
    parser.add_argument(
        "--out", type=Path, default=Path("build/paper_cnn"), help="models go to OUT/<protocol>/"
    )
    parser.add_argument(
        "--report", type=Path, default=REPORT_DIR, help="report folder (metrics.json, report.md)"
    )
    parser.add_argument("--no-report", action="store_true", help="write only to OUT")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="feature cache folder")
    parser.add_argument(
        "--teacher", type=Path, default=None, help="distil this ONNX model (e.g. model/genre_cnn.onnx)"
    )
    for name, value in asdict(defaults).items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=value)
        else:
            parser.add_argument(flag, type=float if name == "time_budget_min" else type(value), default=value)
    args = parser.parse_args(argv)
    config = TrainConfig(**{name: getattr(args, name) for name in asdict(defaults)})
    try:
        for protocol in args.protocol:
            run_protocol(
                args.data,
                protocol,
                args.out / protocol,
                config,
                None if args.no_report else args.report,
                args.cache,
                teacher=args.teacher,
            )
    except DatasetNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
