"""Temperature scaling of the served probabilities, and the expected calibration error.

``python -m training.calibration --model model/student/genre_cnn.onnx``

A softmax over 51 training clips is over-confident: the shipped tagger said "jazz, 1.00" of
Brahms. Temperature scaling (Guo et al., 2017) divides the log-probabilities by one number
``T`` fitted to minimise the negative log-likelihood on clips the model did not learn from; it
changes no argmax (accuracy is untouched) and only the confidence. The daemon applies the
sidecar's ``temperature`` (:func:`streamgenre.model.contract.calibrate`).

Which clips: for a model trained on mini_train with a held-out validation part (the CNN and its
students, :mod:`training.train`), that part is rebuilt from the sidecar's ``training.config``
(``valid_fraction``, ``seed``), exactly as training carved it, so whole clips are held out.
The musicnn heads fit ``T`` on out-of-fold predictions of clip-grouped cross-validation
(:func:`fit_temperature_grouped`, used by :mod:`training.teacher`). mini_test is never used.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar
from sklearn.model_selection import GroupKFold

from streamgenre.model.contract import GenreModel, ModelError, calibrate, sidecar_path
from streamgenre.model.features import median_level_db
from training.data import DEFAULT_CACHE, DatasetNotFoundError, cached_log_mel, load_split, stratified_split
from training.fit_head import MINI_ROOT, _fit_logistic, softmax

ECE_BINS = 10


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """ECE: the gap between confidence (top probability) and accuracy, averaged over equal-width bins.

    ``sum_b |B_b| / N * |acc(B_b) - conf(B_b)|`` with ``n_bins`` bins over ``(0, 1]``, as in
    Guo et al. (2017); computed per window in the reports.
    """
    if len(probs) == 0:
        return float("nan")
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    bins = np.minimum((confidence * n_bins).astype(int), n_bins - 1)
    total = 0.0
    for b in range(n_bins):
        mask = bins == b
        if mask.any():
            total += mask.sum() * abs(correct[mask].mean() - confidence[mask].mean())
    return float(total / len(probs))


def negative_log_likelihood(probs: np.ndarray, labels: np.ndarray) -> float:
    return float(-np.mean(np.log(np.maximum(probs[np.arange(len(labels)), labels], 1e-12))))


def fit_temperature(probs: np.ndarray, labels: np.ndarray) -> float:
    """The ``T`` in [0.05, 20] minimising the NLL of ``calibrate(probs, T)``; ``probs`` are uncalibrated."""
    result = minimize_scalar(
        lambda log_t: negative_log_likelihood(calibrate(probs, float(np.exp(log_t))), labels),
        bounds=(np.log(0.05), np.log(20.0)), method="bounded",
    )
    return round(float(np.exp(result.x)), 4)


def calibration_summary(probs: np.ndarray, labels: np.ndarray, temperature: float, **context: Any
                        ) -> dict[str, Any]:
    """``temperature`` with ECE and NLL before and after it, on the windows it was fitted on."""
    calibrated = calibrate(probs, temperature)
    return {
        "temperature": temperature,
        "n_windows": len(labels),
        "ece_before": round(expected_calibration_error(probs, labels), 4),
        "ece_after": round(expected_calibration_error(calibrated, labels), 4),
        "nll_before": round(negative_log_likelihood(probs, labels), 4),
        "nll_after": round(negative_log_likelihood(calibrated, labels), 4),
        **context,
    }


def fit_temperature_grouped(features: np.ndarray, labels: np.ndarray, groups: np.ndarray, c: float,
                            n_folds: int = 5) -> dict[str, Any]:
    """Temperature of a logistic head from out-of-fold predictions, folds split by clip.

    Every window is predicted by a head that never saw its clip (same ``C`` as the served head),
    so the fitted ``T`` is what held-out clips need, while all of mini_train serves as
    validation once.
    """
    out_of_fold = np.zeros((len(labels), int(labels.max()) + 1))
    for train, held in GroupKFold(n_splits=n_folds).split(features, labels, groups):
        weight, bias = _fit_logistic(features[train], labels[train], c)
        out_of_fold[held] = softmax(features[held] @ weight + bias)
    temperature = fit_temperature(out_of_fold, labels)
    return calibration_summary(out_of_fold, labels, temperature, fitted_on=f"out-of-fold windows of mini_train, "
                               f"{n_folds} folds grouped by clip")


def held_out_clips(model: GenreModel, data: Path) -> list[Any]:
    """The mini_train clips that training held out for validation, rebuilt from the sidecar."""
    training = (model.spec.model_extra or {}).get("training") or {}
    config = training.get("config") or {}
    if "valid_fraction" not in config:
        raise ValueError(f"{model.path}: its sidecar names no validation part (training.config.valid_fraction); "
                         "musicnn heads are calibrated by python -m training.teacher")
    fraction, seed = float(config["valid_fraction"]), int(config.get("seed", 0))
    train = load_split(data, "mini", seed=seed)["train"]
    return stratified_split(train, (1 - fraction, fraction, 0.0), seed)["valid"]


def set_level_reference(model_path: Path, data: Path = MINI_ROOT, max_gain_db: float = 50.0,
                        cache_dir: Path | None = DEFAULT_CACHE) -> float:
    """Give a model trained without it the level normalisation: ``level_ref_db`` = the median level
    of the windows of the mini_train clips it trained on (its held-out part excluded); returns it.

    For models whose training did not normalise the level (the student of 2026-11-29): every
    window is then presented at the level typical of its training windows.
    """
    model = GenreModel(model_path)
    held = {c.clip_id for c in held_out_clips(model, data)}
    recipe = replace(model.recipe, level_ref_db=None)
    frames = [cached_log_mel(c.path, recipe, cache_dir) for c in load_split(data, "mini")["train"]
              if c.clip_id not in held]
    reference = median_level_db(frames, recipe, model.hop_frames)
    path = sidecar_path(model_path)
    sidecar = json.loads(path.read_text())
    sidecar["features"].update(level_ref_db=reference, level_max_gain_db=max_gain_db)
    path.write_text(json.dumps(sidecar, indent=2) + "\n")
    return reference


def calibrate_model(model_path: Path, data: Path = MINI_ROOT, cache_dir: Path | None = DEFAULT_CACHE,
                    write: bool = True) -> dict[str, Any]:
    """Fit the temperature of a trained model on its held-out mini_train clips; store it in the sidecar."""
    from training.evaluate import clip_inputs

    model = GenreModel(model_path)
    clips = held_out_clips(model, data)
    index = {label: i for i, label in enumerate(model.labels)}
    probs, labels = [], []
    for clip in clips:
        p, _ = model.predict(clip_inputs(clip, model.recipe, model.hop_frames, cache_dir), batch_size=64,
                             calibrated=False)
        probs.append(p)
        labels.append(np.full(len(p), index[clip.genre]))
    raw, y = np.concatenate(probs).astype(np.float64), np.concatenate(labels)
    summary = calibration_summary(raw, y, fit_temperature(raw, y),
                                  fitted_on=f"{len(clips)} mini_train clips held out of training: "
                                  + " ".join(c.clip_id for c in clips))
    if write:
        path = sidecar_path(model_path)
        sidecar = json.loads(path.read_text())
        sidecar.update(temperature=summary["temperature"], calibration=summary)
        path.write_text(json.dumps(sidecar, indent=2) + "\n")
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.calibration", description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="ONNX model trained with a held-out part")
    parser.add_argument("--data", type=Path, default=MINI_ROOT, help="gtzan-mini root")
    parser.add_argument("--dry-run", action="store_true", help="print the temperature, leave the sidecar")
    parser.add_argument("--set-level", action="store_true",
                        help="first give the sidecar level_ref_db = median level of its training windows")
    args = parser.parse_args(argv)
    try:
        if args.set_level and not args.dry_run:
            print(f"level_ref_db = {set_level_reference(args.model, args.data)} dB", file=sys.stderr)
        summary = calibrate_model(args.model, args.data, write=not args.dry_run)
    except (DatasetNotFoundError, FileNotFoundError, ModelError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
