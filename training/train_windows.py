"""What the paper CNN's training sees: its configuration, the frames of clips and their variants,
the per-mel normaliser, the random training windows and the fixed validation windows.

Split from :mod:`training.train` (the loop, export and report) so that each reads on its own. The
order matters: frames are computed once per clip and variant (cached on disk), the normaliser is
fitted on the windows the daemon would cut from the *training* frames, and only then are
windows sampled through :func:`streamgenre.model.features.window_input`, exactly as served.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from streamgenre.model.features import FeatureRecipe, window_input
from training.augment import WaveformAugmentation, gain_db
from training.data import cached_log_mel, window_starts, windows_from_frames


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
