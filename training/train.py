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
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from threadpoolctl import threadpool_limits
from torch import nn
from tqdm import tqdm

from streamgenre.model.contract import GenreModel, load_spec
from streamgenre.model.features import FeatureRecipe, median_level_db, window_input
from training import baseline
from training.augment import WaveformAugmentation, gain_db, mixup, spec_augment, variant_specs
from training.cnn import benchmark_onnx, build_model, count_parameters, default_recipe, export_onnx
from training.data import (
    DEFAULT_CACHE,
    PROTOCOLS,
    Clip,
    DatasetNotFoundError,
    cached_log_mel,
    drop_unreadable,
    labels_of,
    load_split,
    stratified_split,
    window_starts,
    windows_from_frames,
)
from training.distill import teacher_targets
from training.evaluate import (
    DEFAULT_DATA,
    DEFAULT_REPORT,
    evaluate_onnx,
    plot_confusion,
    write_report,
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


@dataclass
class TrainConfig:
    """Hyper-parameters of one training run (all recorded in the sidecar and the report).

    Attributes
    ----------
    epochs : int
        Upper bound on epochs; early stopping usually ends sooner.
    patience : int
        Epochs without a better validation window accuracy before stopping.
    batch_size : int
    lr, weight_decay : float
        Adam learning rate and L2 weight decay.
    windows_per_clip : int
        Random windows drawn per training clip per epoch (an epoch's size).
    variants : int
        Precomputed waveform augmentations per training clip (0 = none).
    hop_frames : int
        Hop between evaluation windows, in frames (64 = 1.49 s at 22.05 kHz, hop 512); also the
        sidecar's ``hop_s``.
    mixup_alpha : float
        Beta parameter of mixup (0 = off).
    spec_augment : bool
        Apply SpecAugment masks to training windows.
    max_gain_db : float
        Range of the random gain of training windows (0 = off).
    valid_fraction : float
        Fraction of training clips held out when the protocol has no validation list.
    time_budget_min : float or None
        Stop training (keeping the best epoch) once this many minutes have passed.
    teacher_weight : float
        With a teacher (distillation), the target of a window is ``teacher_weight`` times the
        teacher's probabilities plus the rest times the clip's one-hot label.
    level_normalisation : bool
        Give the recipe ``level_ref_db`` = the median level of the training windows, so the
        model sees every window at that level whatever the stream's gain
        (:func:`streamgenre.model.features.level_gain_db`).
    seed : int
    threads : int
        Torch threads and feature-extraction processes.
    benchmark_seconds : float
        How long the exported model's onnxruntime throughput is measured.
    """

    epochs: int = 60
    patience: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    windows_per_clip: int = 8
    variants: int = 3
    hop_frames: int = 64
    mixup_alpha: float = 0.2
    spec_augment: bool = True
    max_gain_db: float = 6.0
    valid_fraction: float = 0.2
    time_budget_min: float | None = None
    teacher_weight: float = 0.7
    level_normalisation: bool = True
    seed: int = 0
    threads: int = 2
    benchmark_seconds: float = 3.0


def _frames_job(
    path: Path, recipe: FeatureRecipe, cache_dir: Path | None, aug: WaveformAugmentation | None
) -> np.ndarray:
    # One process per core: keep BLAS/FFT pools at one thread each so they do not oversubscribe.
    with threadpool_limits(1):
        if aug is None:
            return cached_log_mel(path, recipe, cache_dir)
        return cached_log_mel(path, recipe, cache_dir, transform=aug, transform_key=aug.key)


def compute_frames(
    jobs: Sequence[tuple[Path, WaveformAugmentation | None]],
    recipe: FeatureRecipe,
    cache_dir: Path | None,
    threads: int,
    desc: str,
) -> list[np.ndarray]:
    """Log-mel frames of ``(path, augmentation)`` jobs, in ``threads`` processes, with a progress bar.

    Returns one ``(n_mels, T)`` float32 array per job, in order. Cached jobs cost a file read.
    """
    if threads <= 1:
        return [_frames_job(p, recipe, cache_dir, a) for p, a in tqdm(jobs, desc=desc, unit="clip")]
    # spawn, not fork: the parent may already run OpenMP threads (torch), which fork does not copy.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=threads, mp_context=context) as pool:
        futures = [pool.submit(_frames_job, p, recipe, cache_dir, a) for p, a in jobs]
        return [f.result() for f in tqdm(futures, desc=desc, unit="clip")]


def fit_normaliser(frames: Sequence[np.ndarray], recipe: FeatureRecipe, hop_frames: int) -> FeatureRecipe:
    """Recipe with per-mel ``mean``/``std`` estimated on the windows of the training clips.

    Statistics are taken over the windows the daemon would cut (after ``top_db`` clipping, which
    :func:`streamgenre.model.features.window_input` applies per window), so that normalised inputs
    have zero mean and unit variance per band on the training set.
    """
    raw = replace(recipe, mean=0.0, std=1.0)
    total = np.zeros(recipe.n_mels, np.float64)
    total_sq = np.zeros(recipe.n_mels, np.float64)
    count = 0
    for f in frames:
        windows = windows_from_frames(f, raw, window_starts(f.shape[1], recipe.n_frames, hop_frames))
        total += windows.sum(axis=(0, 1, 3), dtype=np.float64)
        total_sq += (windows.astype(np.float64) ** 2).sum(axis=(0, 1, 3))
        count += windows.shape[0] * windows.shape[3]
    if count == 0:
        raise ValueError("no training clip is long enough for one window")
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 1e-12))
    return replace(recipe, mean=[round(float(m), 6) for m in mean], std=[round(float(s), 6) for s in std])


class WindowSampler:
    """Draws an epoch of training windows at random positions of random versions of each clip.

    Parameters
    ----------
    versions : list of list of np.ndarray
        Per training clip, the frames of the original and of its augmented variants.
    targets : np.ndarray of int, shape (n_clips,)
    recipe : FeatureRecipe
        Normalised recipe; windows go through :func:`streamgenre.model.features.window_input`.
    config : TrainConfig
    n_classes : int
    """

    def __init__(
        self,
        versions: list[list[np.ndarray]],
        targets: np.ndarray,
        recipe: FeatureRecipe,
        config: TrainConfig,
        n_classes: int,
    ) -> None:
        # A variant shorter than one window (e.g. a fast time-stretch of a short clip) is unusable.
        self.versions = [[f for f in vs if f.shape[1] >= recipe.n_frames] for vs in versions]
        self.keep = [i for i, vs in enumerate(self.versions) if vs]
        self.versions = [self.versions[i] for i in self.keep]
        self.one_hot = np.eye(n_classes, dtype=np.float32)[np.asarray(targets)[self.keep]]
        self.recipe = recipe
        self.config = config

    def draw(self, clip: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """One window of training clip ``clip``: ``(frames (n_mels, n_frames), target distribution)``."""
        frames = self.versions[clip][int(rng.integers(len(self.versions[clip])))]
        start = int(rng.integers(0, frames.shape[1] - self.recipe.n_frames + 1))
        return frames[:, start : start + self.recipe.n_frames], self.one_hot[clip]

    def epoch(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``(inputs [W, 1, n_mels, n_frames], target distributions [W, n_classes])``, shuffled."""
        n = self.config.windows_per_clip
        inputs, targets = [], []
        for clip in range(len(self.versions)):
            gains = gain_db(rng, n, self.config.max_gain_db) if self.config.max_gain_db else np.zeros(n)
            for gain in gains:
                frames, target = self.draw(clip, rng)
                inputs.append(window_input(frames + gain, self.recipe))
                targets.append(target)
        order = rng.permutation(len(inputs))
        return np.stack(inputs)[order], np.stack(targets)[order]


class DistillSampler(WindowSampler):
    """A :class:`WindowSampler` whose windows sit on the teacher-labelled grid.

    Parameters
    ----------
    teacher_probs : list of list of np.ndarray
        Parallel to ``versions``: per clip and version, the teacher's probabilities of the
        windows starting every ``config.hop_frames`` frames (:func:`training.distill.teacher_targets`).
    versions, targets, recipe, config, n_classes :
        As for :class:`WindowSampler`. A window's target is ``config.teacher_weight`` times the
        teacher's probabilities plus the rest times the clip's one-hot label.
    """

    def __init__(
        self,
        versions: list[list[np.ndarray]],
        targets: np.ndarray,
        teacher_probs: list[list[np.ndarray]],
        recipe: FeatureRecipe,
        config: TrainConfig,
        n_classes: int,
    ) -> None:
        # Versions without a labelled window are dropped with the clip filter of the base class.
        versions = [
            [f for f, p in zip(vs, ps, strict=True) if len(p)] for vs, ps in zip(versions, teacher_probs, strict=True)
        ]
        super().__init__(versions, targets, recipe, config, n_classes)
        labelled = [[p for p in ps if len(p)] for ps in teacher_probs]
        self.teacher_probs = [labelled[i] for i in self.keep]

    def draw(self, clip: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        version = int(rng.integers(len(self.versions[clip])))
        probs = self.teacher_probs[clip][version]
        position = int(rng.integers(len(probs)))
        start = position * self.config.hop_frames
        weight = self.config.teacher_weight
        target = weight * probs[position] + (1.0 - weight) * self.one_hot[clip]
        return self.versions[clip][version][:, start : start + self.recipe.n_frames], target


@dataclass
class ValidationSet:
    """Fixed validation windows (cut as the daemon cuts them) and the clip each belongs to."""

    windows: np.ndarray
    window_targets: np.ndarray
    window_clip: np.ndarray
    clip_targets: np.ndarray

    @classmethod
    def build(
        cls, frames: Sequence[np.ndarray], targets: Sequence[int], recipe: FeatureRecipe, hop_frames: int
    ) -> ValidationSet:
        parts = [
            windows_from_frames(f, recipe, window_starts(f.shape[1], recipe.n_frames, hop_frames))
            for f in frames
        ]
        return cls(
            windows=np.concatenate(parts),
            window_targets=np.concatenate([np.full(len(p), t) for p, t in zip(parts, targets, strict=True)]),
            window_clip=np.concatenate([np.full(len(p), i) for i, p in enumerate(parts)]),
            clip_targets=np.asarray(targets),
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
    report_dir: Path | None = DEFAULT_REPORT,
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
        "--report", type=Path, default=DEFAULT_REPORT, help="report folder (metrics.json, report.md)"
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
