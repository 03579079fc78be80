"""The report's baseline: mel/MFCC statistics of each window + logistic regression.

Each window (the same windows the CNN sees, from the same cached frames and front end) is
summarised by the mean and standard deviation over time of its log-mel bands (in dB, before
normalisation) and of 20 MFCCs (DCT-II of those bands, as ``librosa.feature.mfcc(S=...)``); a
standardised logistic regression classifies windows, and a clip's prediction is the mean of its
windows' probabilities, exactly as for the CNN. It shows how much the CNN adds over a classic
bag-of-frames model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import librosa
import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from tqdm import tqdm

from streamgenre.model.features import FeatureRecipe
from training.data import DEFAULT_CACHE, Clip, cached_log_mel, window_starts, windows_from_frames
from training.evaluate import score

NAME = "baseline_mel_mfcc_logreg"
N_MFCC = 20


def window_statistics(windows: np.ndarray) -> np.ndarray:
    """Summary features of un-normalised log-mel windows.

    Parameters
    ----------
    windows : np.ndarray, shape (N, 1, n_mels, n_frames)
        Windows in dB (a recipe with ``mean=0, std=1``).

    Returns
    -------
    np.ndarray, shape (N, 2 * n_mels + 2 * N_MFCC), float32
        Mean and std over time of every mel band, then of every MFCC.
    """
    mels = windows[:, 0]
    mfcc = librosa.feature.mfcc(S=mels, n_mfcc=N_MFCC)
    parts = [mels.mean(axis=2), mels.std(axis=2), mfcc.mean(axis=2), mfcc.std(axis=2)]
    return np.concatenate(parts, axis=1).astype(np.float32)


def clip_statistics(
    clips: Sequence[Clip],
    recipe: FeatureRecipe,
    hop_frames: int,
    cache_dir: Path | None = DEFAULT_CACHE,
    desc: str = "baseline features",
) -> list[np.ndarray]:
    """:func:`window_statistics` of every window of each clip (one array per clip)."""
    raw = replace(recipe, mean=0.0, std=1.0)
    out = []
    for clip in tqdm(clips, desc=desc, unit="clip"):
        frames = cached_log_mel(clip.path, raw, cache_dir)
        windows = windows_from_frames(frames, raw, window_starts(frames.shape[1], raw.n_frames, hop_frames))
        out.append(window_statistics(windows))
    return out


def fit_baseline(features: Sequence[np.ndarray], targets: Sequence[int], seed: int = 0) -> Pipeline:
    """Fit the standardised logistic regression on per-clip window features and clip classes."""
    x = np.concatenate(features)
    y = np.concatenate([np.full(len(f), t) for f, t in zip(features, targets, strict=True)])
    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=3000, random_state=seed))
    return model.fit(x, y)


def evaluate_baseline(
    model: Pipeline, features: Sequence[np.ndarray], clips: Sequence[Clip], labels: list[str]
) -> dict[str, Any]:
    """Scores of the baseline on clips, in the format of :func:`training.evaluate.evaluate_onnx`."""
    index = {label: i for i, label in enumerate(labels)}
    kept = [(f, c) for f, c in zip(features, clips, strict=True) if len(f)]
    # predict_proba's columns follow model.classes_; scatter them into the label order.
    window_probs_per_clip = []
    for f, _clip in kept:
        probs = np.zeros((len(f), len(labels)), np.float64)
        probs[:, model.classes_] = model.predict_proba(f)
        window_probs_per_clip.append(probs)
    clip_true = np.array([index[c.genre] for _f, c in kept])
    clip_probs = np.stack([p.mean(axis=0) for p in window_probs_per_clip])
    result = score(
        labels,
        np.concatenate([np.full(len(p), t) for p, t in zip(window_probs_per_clip, clip_true, strict=True)]),
        np.concatenate(window_probs_per_clip),
        clip_true,
        clip_probs,
    )
    per_clip = [
        {
            "clip": c.clip_id,
            "genre": c.genre,
            "predicted": labels[int(p.argmax())],
            "probs": [round(float(v), 5) for v in p],
            "n_windows": len(f),
        }
        for (f, c), p in zip(kept, clip_probs, strict=True)
    ]
    skipped = [c.clip_id for f, c in zip(features, clips, strict=True) if not len(f)]
    return {
        "model": NAME,
        "version": "mel+mfcc statistics, logistic regression",
        "labels": labels,
        **result,
        "skipped": skipped,
        "clips": per_clip,
    }
