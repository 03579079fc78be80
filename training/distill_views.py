"""Per-file inputs of offline distillation: the teacher's labels of the clean audio and the damaged views.

:func:`prepare_file` turns one corpus file into a :class:`FileViews`. It runs in worker
processes (:func:`init_worker` loads the teacher once per process) and caches the two halves
apart under ``cache_dir``: ``views/`` (the student's log-mels of the clean and damaged versions,
keyed by file, recipe and :class:`ViewConfig`) and ``teacher/`` (keyed by file and teacher), so
a run with another teacher reuses the views, which are most of the work (ffmpeg, resampling).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from streamgenre.model.contract import GenreModel
from streamgenre.model.features import FeatureRecipe, log_mel, resample, window_starts, windows_from_frames
from training.corpus import (
    BROADCAST_BANDS,
    AugmentConfig,
    CorpusFile,
    broadcast_band,
    gtzan_genre,
    mp3_round_trip,
    noise_then_gain,
)
from training.data import GTZAN_GENRES, read_audio

LABELS = list(GTZAN_GENRES)


@dataclass(frozen=True)
class ViewConfig:
    """How the damaged views of a file are made (part of the cache key)."""

    views: int = 4
    max_seconds: float = 240.0
    teacher_hop_s: float = 2.0
    p_speed: float = 0.5
    p_band: float = 0.35
    p_mp3: float = 0.35
    p_noise: float = 0.4
    seed: int = 0


@dataclass
class FileViews:
    """One corpus file, ready to cut training examples from."""

    path: str
    root: str
    label: int
    teacher_centres_s: np.ndarray  # (W,) centre of each teacher window, seconds of the clean audio
    teacher_logprobs: np.ndarray  # (W, 10) log of the raw (uncalibrated) genre probabilities
    teacher_embedding: np.ndarray  # (W, D)
    frames: list[np.ndarray]  # per view: compressed student log-mel frames (n_mels, T), float16
    speeds: list[float]  # per view: how much faster than the original it plays


def _damage(y: np.ndarray, sr: int, config: ViewConfig, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """One damaged whole-file view and its speed factor."""
    speed = float(rng.uniform(0.89, 1.12)) if rng.random() < config.p_speed else 1.0
    if speed != 1.0:
        # Playing `speed` times faster is reading the samples as if recorded at sr * speed.
        y = resample(y, round(sr * speed), sr)
    if rng.random() < config.p_mp3:
        peak = max(1.0, float(np.abs(y).max()))
        y = mp3_round_trip(y / peak, sr, int(rng.choice([32, 48, 64, 96, 128])))
    if rng.random() < config.p_band:
        y = broadcast_band(y, sr, str(rng.choice(BROADCAST_BANDS)))
    chain = AugmentConfig(p_noise=config.p_noise)
    return noise_then_gain(y, chain, [], rng), speed


def _file_id(f: CorpusFile) -> list[Any]:
    stat = f.path.stat()
    return [str(f.path), stat.st_size, stat.st_mtime_ns]


def _views_key(f: CorpusFile, recipe: FeatureRecipe, config: ViewConfig) -> str:
    """Cache key of a file's views: they do not depend on the teacher, so a new teacher reuses them."""
    views = {k: v for k, v in asdict(config).items() if k != "teacher_hop_s"}
    text = json.dumps([*_file_id(f), recipe.to_dict(), views], sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:20]


def _teacher_key(f: CorpusFile, teacher: Path, config: ViewConfig) -> str:
    text = json.dumps([*_file_id(f), str(teacher), teacher.stat().st_size, config.teacher_hop_s, config.max_seconds],
                      sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:20]


def _save(path: Path, **arrays: Any) -> None:
    """``np.savez``, renamed into place when complete: a killed run leaves no half-written cache."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    with partial.open("wb") as out:
        np.savez(out, **arrays)
    partial.replace(path)


_worker: dict[str, Any] = {}


def init_worker(teacher_path: str) -> None:
    torch.set_num_threads(1)
    _worker["teacher"] = GenreModel(Path(teacher_path), threads=1)


def prepare_file(job: tuple[CorpusFile, FeatureRecipe, ViewConfig, str, Path]) -> FileViews | str:
    """Teacher outputs and student views of one file, each cached on its own; an error text when it
    does not decode."""
    f, recipe, config, teacher_path, cache_dir = job
    views_cache = cache_dir / "views" / f"{_views_key(f, recipe, config)}.npz"
    teacher_cache = cache_dir / "teacher" / f"{_teacher_key(f, Path(teacher_path), config)}.npz"
    label = gtzan_genre(f.path)
    label_id = LABELS.index(label) if label else -1
    try:
        if not teacher_cache.is_file():
            _save(teacher_cache, **_teacher_outputs(f.path, _worker["teacher"], config))
        if not views_cache.is_file():
            views, speeds = _views(f.path, recipe, config)
            arrays = {f"view{i}": v for i, v in enumerate(views)}
            _save(views_cache, n_views=len(views), speeds=np.array(speeds), **arrays)
    except Exception as err:  # a file that passed the header scan may still fail to decode
        return f"{f.path}: {str(err).splitlines()[0][:200]}"
    t, v = np.load(teacher_cache), np.load(views_cache)
    return FileViews(str(f.path), f.root, label_id, t["centres"], t["logprobs"], t["embedding"],
                     [v[f"view{i}"] for i in range(int(v["n_views"]))], list(v["speeds"]))


def _pad_to_window(y: np.ndarray, recipe: FeatureRecipe) -> np.ndarray:
    # A file shorter than a window (the corpus's 2.5 s GTZAN snippets) is padded with silence,
    # as the daemon's framer would see it between two items.
    return np.pad(y, (0, max(0, recipe.window_samples + recipe.n_fft - len(y))))


def _clean_audio(path: Path, recipe: FeatureRecipe, config: ViewConfig) -> np.ndarray:
    """The file at ``recipe``'s rate, cut to ``config.max_seconds`` and padded to at least a window."""
    sr = recipe.sample_rate
    return _pad_to_window(read_audio(path, sr)[: round(config.max_seconds * sr)], recipe)


def _teacher_outputs(path: Path, teacher: GenreModel, config: ViewConfig) -> dict[str, np.ndarray]:
    """The teacher's raw log-probabilities and embedding for clean windows every ``teacher_hop_s``."""
    trecipe = teacher.recipe
    frames = log_mel(_clean_audio(path, trecipe, config), trecipe)
    hop = max(1, trecipe.seconds_to_frames(config.teacher_hop_s))
    starts = list(window_starts(frames.shape[1], trecipe.n_frames, hop))
    probs, embedding = teacher.predict(windows_from_frames(frames, trecipe, starts), batch_size=32, calibrated=False)
    centres = np.array([trecipe.frames_to_seconds(s + trecipe.n_frames / 2) for s in starts], np.float32)
    return {"centres": centres, "logprobs": np.log(np.maximum(probs, 1e-8)).astype(np.float32),
            "embedding": embedding.astype(np.float16)}


def _views(path: Path, recipe: FeatureRecipe, config: ViewConfig) -> tuple[list[np.ndarray], list[float]]:
    """The clean and ``config.views - 1`` damaged student log-mels of a file, and their speeds."""
    rng = np.random.default_rng([config.seed, int(hashlib.sha1(str(path).encode()).hexdigest()[:8], 16)])
    clean = _clean_audio(path, recipe, config)
    views, speeds = [log_mel(clean, recipe).astype(np.float16)], [1.0]
    for _ in range(config.views - 1):
        damaged, speed = _damage(clean, recipe.sample_rate, config, rng)
        views.append(log_mel(_pad_to_window(damaged, recipe), recipe).astype(np.float16))
        speeds.append(speed)
    return views, speeds
