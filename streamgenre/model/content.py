"""Content state of a window — music, speech, mixed (talk over music) or silence — from the
log-mel frames the daemon already computed for the genre model.

Two steps, in this order:

1. **Level** (:func:`window_level_dbfs`): the window's RMS level in dBFS (20·log10 RMS, so a
   full-scale sine reads -3 dBFS), recovered from its mel power by inverting the front end's
   normalisation and log, then undoing the mel filterbank's per-band weighting and the STFT's
   window gain (Parseval). Silence is a level threshold, decided first: a model of sound
   classes has nothing to say about a window with no sound in it.
2. **Speech / music / mixed** (:class:`ContentModel`): a multinomial logistic regression on
   ~40 summary statistics of the window's dB mel frames (spectral shape, per-band variability,
   flux, the 2-8 Hz syllable-rate modulation of the energy envelope). The statistics are
   taken relative to the window's own loudness, so they do not depend on level. Its weights
   are a small JSON file (``model/content.json``, written by ``training/content.py``), applied
   with numpy: a few tens of microseconds a window next to milliseconds of genre model.

The silence probability is a logistic ramp around the threshold (``silence_ramp_db`` wide), and
the model's three probabilities share what is left, so the four always sum to one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from streamgenre.model.features import FeatureRecipe

STATES = ("music", "speech", "mixed", "silence")
MODEL_CLASSES = ("music", "speech", "mixed")
# Mel power below this (relative to the window's loudest frame band) is clipped when building the
# statistics: the speech set's pauses are digital zeros, and without a floor the model would
# learn that "-100 dB frames" mean speech.
DYNAMIC_RANGE_DB = 60.0
SYLLABLE_BAND_HZ = (2.0, 8.0)
N_GROUPS = 12
FEATURE_NAMES: tuple[str, ...] = (
    tuple(f"shape_{g}" for g in range(N_GROUPS))
    + tuple(f"band_std_{g}" for g in range(N_GROUPS))
    + tuple(f"band_flux_{g}" for g in range(N_GROUPS))
    + ("flux_mean", "flux_std", "energy_std", "low_energy_ratio", "syllable_modulation", "centroid_std")
)


class ContentModelError(RuntimeError):
    """The content model file is missing or does not fit the genre model's features."""


def mel_power(logmel: np.ndarray, recipe: FeatureRecipe) -> np.ndarray:
    """Invert normalisation and log of a model input ``(1, n_mels, n_frames)`` -> mel power ``(n_mels, n_frames)``."""
    mean, std = recipe.normaliser
    logged = logmel[0] * std + mean
    if recipe.log == "log10_1p":
        return np.maximum((np.power(np.float32(10.0), logged) - 1.0) / np.float32(recipe.log_scale), 0.0)
    return np.power(np.float32(10.0), logged / np.float32(10.0)) * np.float32(max(recipe.amin, recipe.ref))


def without_level(recipe: FeatureRecipe) -> FeatureRecipe:
    """``recipe`` without its level normalisation (the content statistics do not depend on it)."""
    return replace(recipe, level_ref_db=None, level_max_gain_db=FeatureRecipe.level_max_gain_db)


def band_gain(recipe: FeatureRecipe) -> np.ndarray:
    """Per-band factor turning mel power back into STFT power per frame, then mean square.

    The triangles of the filterbank, each scaled to peak 1, sum to ~1 over every bin between the
    first and last centre, so ``sum_b mel_b / peak_b`` is the spectrum's power; Parseval for a
    one-sided spectrum of a windowed frame gives ``ms = 2 · power / (n_fft · Σ w²)``.
    """
    peaks = recipe.mel_basis.max(axis=1)
    window_power = float(np.sum(recipe.fft_window.astype(np.float64) ** 2))
    return (2.0 / (recipe.n_fft * window_power) / np.maximum(peaks, 1e-12)).astype(np.float32)


def level_of(power: np.ndarray, gain: np.ndarray) -> float:
    """RMS level in dBFS (full-scale sine = -3.0, floored at -120) of mel power ``(n_mels, n_frames)``."""
    mean_square = float((gain @ power).mean())
    return max(-120.0, 10.0 * float(np.log10(max(mean_square, 1e-12))))


def window_level_dbfs(logmel: np.ndarray, recipe: FeatureRecipe) -> float:
    """RMS level of a model input ``(1, n_mels, n_frames)`` in dBFS (full-scale sine = -3.0)."""
    return level_of(mel_power(logmel, recipe), band_gain(recipe))


def content_features(logmel: np.ndarray, recipe: FeatureRecipe, gain: np.ndarray | None = None) -> np.ndarray:
    """The classifier's statistics of one window, in :data:`FEATURE_NAMES` order (float32).

    Bands are pooled into :data:`N_GROUPS` groups first: the statistics need the shape of the
    spectrum, not 96 bands of it, and fewer inputs keep the regression well conditioned.
    """
    return statistics(mel_power(logmel, recipe), recipe, band_gain(recipe) if gain is None else gain)


def statistics(power: np.ndarray, recipe: FeatureRecipe, gain: np.ndarray) -> np.ndarray:
    """:func:`content_features` from mel power (the daemon shares one inversion with the level)."""
    power = power * gain[:, None]
    db = 10.0 * np.log10(np.maximum(power, 1e-20))
    db = np.maximum(db, db.max() - DYNAMIC_RANGE_DB)
    db -= db.mean()  # level-free: only shape and movement are left
    groups = np.array_split(db, N_GROUPS, axis=0)
    grouped = np.stack([g.mean(axis=0) for g in groups])  # (N_GROUPS, n_frames)
    shape = grouped.mean(axis=1)
    band_std = grouped.std(axis=1)
    band_flux = np.abs(np.diff(grouped, axis=1)).mean(axis=1)
    flux = np.maximum(np.diff(db, axis=1), 0.0).mean(axis=0)
    energy = 10.0 * np.log10(np.maximum(power.sum(axis=0), 1e-20))
    energy = np.maximum(energy, energy.max() - DYNAMIC_RANGE_DB)
    # Speech alternates syllables and pauses at ~4 Hz; the share of the envelope's modulation
    # energy in 2-8 Hz separates it from most music, whose envelope is steadier or beat-driven.
    frame_rate = recipe.sample_rate / recipe.hop_length
    spectrum = np.abs(np.fft.rfft(energy - energy.mean())) ** 2
    freqs = np.fft.rfftfreq(energy.shape[0], 1.0 / frame_rate)
    in_band = (freqs >= SYLLABLE_BAND_HZ[0]) & (freqs <= SYLLABLE_BAND_HZ[1])
    modulation = spectrum[in_band].sum() / max(spectrum[1:].sum(), 1e-12)
    centre = np.arange(N_GROUPS, dtype=np.float32)[:, None]
    weights = np.power(10.0, grouped / 10.0)
    centroid = (centre * weights).sum(axis=0) / weights.sum(axis=0)
    extra = np.array([flux.mean(), flux.std(), energy.std(), np.mean(energy < energy.mean() - 10.0),
                      modulation, centroid.std()])
    return np.concatenate([shape, band_std, band_flux, extra]).astype(np.float32)


@dataclass(frozen=True)
class ContentState:
    """One window's state and the probabilities of all four states."""

    state: str
    probs: dict[str, float]
    level_dbfs: float


class ContentModel:
    """The speech/music/mixed regression plus the silence threshold.

    Parameters
    ----------
    path : Path
        JSON written by ``training/content.py``: ``version``, ``classes``, ``feature_names``,
        ``mean``/``scale`` (standardisation), ``coef`` (classes x features), ``intercept`` and
        ``features`` (the front end it was trained on, which must equal the genre model's).
    silence_dbfs : float
        Windows quieter than this are silence.
    silence_ramp_db : float
        Width of the logistic ramp of the silence probability around the threshold.
    """

    def __init__(self, path: Path, silence_dbfs: float, silence_ramp_db: float = 2.0) -> None:
        path = Path(path)
        if not path.is_file():
            raise ContentModelError(f"content model not found: {path}")
        try:
            spec = json.loads(path.read_text())
            self.version = str(spec["version"])
            self.features = dict(spec["features"])
            self.coef = np.asarray(spec["coef"], np.float64)
            self.intercept = np.asarray(spec["intercept"], np.float64)
            self.mean = np.asarray(spec["mean"], np.float64)
            self.scale = np.asarray(spec["scale"], np.float64)
            classes, names = tuple(spec["classes"]), tuple(spec["feature_names"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ContentModelError(f"invalid content model {path}: {exc}") from exc
        if classes != MODEL_CLASSES or names != FEATURE_NAMES:
            raise ContentModelError(f"{path}: classes/features {classes}/{len(names)} do not match this code")
        if self.coef.shape != (len(classes), len(names)) or self.intercept.shape != (len(classes),):
            raise ContentModelError(f"{path}: weights of shape {self.coef.shape} do not fit")
        self.silence_dbfs = silence_dbfs
        self.silence_ramp_db = silence_ramp_db
        self._gain: np.ndarray | None = None

    def check_recipe(self, recipe: FeatureRecipe) -> None:
        """The statistics are only meaningful on the front end the regression was fitted on.

        The level normalisation is left out of the comparison: the statistics are level-free and
        :meth:`classify` undoes the window's gain before measuring the level.
        """
        if without_level(FeatureRecipe.from_dict(self.features)) != without_level(recipe):
            raise ContentModelError("content model was trained on another feature recipe than the genre model's")
        self._gain = band_gain(recipe)

    def classify(self, logmel: np.ndarray, recipe: FeatureRecipe, level_gain_db: float = 0.0) -> ContentState:
        """``level_gain_db``: the level normalisation's gain in ``logmel`` (``Window.level_gain_db``)."""
        if self._gain is None:
            self.check_recipe(recipe)
        assert self._gain is not None
        power = mel_power(logmel, recipe) * np.float32(10.0 ** (-level_gain_db / 10.0))
        level = level_of(power, self._gain)
        p_silence = 1.0 / (1.0 + np.exp((level - self.silence_dbfs) / (self.silence_ramp_db / 4.0)))
        if p_silence > 0.999:  # nothing audible to classify; also skips the statistics' cost
            sound = np.array([1 / 3, 1 / 3, 1 / 3])
        else:
            z = (statistics(power, recipe, self._gain) - self.mean) / self.scale
            logits = self.coef @ z + self.intercept
            sound = np.exp(logits - logits.max())
            sound /= sound.sum()
        probs = dict(zip(MODEL_CLASSES, (sound * (1.0 - p_silence)).tolist(), strict=True))
        probs["silence"] = float(p_silence)
        state = "silence" if level < self.silence_dbfs else max(MODEL_CLASSES, key=probs.__getitem__)
        return ContentState(state, {k: round(v, 5) for k, v in probs.items()}, round(level, 2))
