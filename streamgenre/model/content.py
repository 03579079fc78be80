"""Content state of a window — music, speech, mixed (talk over music) or silence — from the
log-mel frames the daemon already computed for the genre model.

Two steps, in this order:

1. **Level** (:func:`window_level_dbfs`): the window's RMS level in dBFS (20·log10 RMS, so a
   full-scale sine reads -3 dBFS), recovered from its mel power by inverting the front end's
   normalisation and log, then undoing the mel filterbank's per-band weighting and the STFT's
   window gain (Parseval). Silence is a level threshold, decided first: a model of sound
   classes has nothing to say about a window with no sound in it.
2. **Speech / music / mixed** (:class:`ContentModel`): a tiny MLP (one hidden ReLU layer) or a
   multinomial logistic regression on 42 summary statistics of the window's dB mel frames
   (spectral shape, per-band variability, flux, the 2-8 Hz syllable-rate modulation of the
   energy envelope). The statistics are taken relative to the window's own loudness, so they
   do not depend on level. Its weights are a small JSON file (``model/content.json``, written
   by ``training/content.py``), applied with numpy: well under a millisecond a window, next to
   tens of milliseconds of genre model (model/MODEL_CARD.md).

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


_LN10 = np.float32(np.log(10.0))


class ContentModelError(RuntimeError):
    """The content model file is missing or does not fit the genre model's features."""


def mel_power(logmel: np.ndarray, recipe: FeatureRecipe) -> np.ndarray:
    """Invert normalisation and log of model inputs: ``(1, n_mels, n_frames)`` -> mel power
    ``(n_mels, n_frames)``, or a batch ``(N, 1, n_mels, n_frames)`` -> ``(N, n_mels, n_frames)``."""
    mean, std = recipe.normaliser
    logged = logmel[..., 0, :, :] * std + mean
    # exp(x ln 10) rather than 10**x: numpy's float32 exp has a SIMD loop, power does not.
    if recipe.log == "log10_1p":
        return np.maximum((np.exp(logged * _LN10) - 1.0) / np.float32(recipe.log_scale), 0.0)
    return np.exp(logged * (_LN10 / np.float32(10.0))) * np.float32(max(recipe.amin, recipe.ref))


def undo_level_gain(power: np.ndarray, level_gains_db: np.ndarray | None) -> np.ndarray:
    """Mel power ``(N, n_mels, n_frames)`` before each window's level normalisation gain (dB)."""
    if level_gains_db is None:
        return power
    return power * (10.0 ** (-np.asarray(level_gains_db, np.float32) / 10.0))[:, None, None]


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


def level_of(weighted_power: np.ndarray) -> np.ndarray:
    """RMS level in dBFS (full-scale sine = -3.0, floored at -120) of band-gain weighted power
    ``(..., bands, n_frames)`` (e.g. :func:`group_matrix` @ mel power); one value per leading index."""
    mean_square = weighted_power.sum(axis=-2).mean(axis=-1)
    return np.maximum(-120.0, 10.0 * np.log10(np.maximum(mean_square, 1e-12)))


def window_level_dbfs(logmel: np.ndarray, recipe: FeatureRecipe) -> float:
    """RMS level of a model input ``(1, n_mels, n_frames)`` in dBFS (full-scale sine = -3.0)."""
    return float(level_of(band_gain(recipe)[:, None] * mel_power(logmel, recipe)))


def group_matrix(recipe: FeatureRecipe) -> np.ndarray:
    """``(N_GROUPS, n_mels)``: sums mel power into :data:`N_GROUPS` contiguous band groups,
    each band weighted by :func:`band_gain`, so a group's row sums to its share of the mean
    square and all groups together give the level.

    Pooling comes first: the statistics need the shape of the spectrum, not 96 bands of it,
    fewer inputs keep the model well conditioned, and one small matrix product before the log
    makes the statistics several times cheaper than taking logs of every band.
    """
    gain = band_gain(recipe)
    groups = np.zeros((N_GROUPS, recipe.n_mels), np.float32)
    for index, bands in enumerate(np.array_split(np.arange(recipe.n_mels), N_GROUPS)):
        groups[index, bands] = gain[bands]
    return groups


def content_features(logmel: np.ndarray, recipe: FeatureRecipe) -> np.ndarray:
    """The classifier's statistics of one model input, in :data:`FEATURE_NAMES` order (float32)."""
    return statistics(group_matrix(recipe) @ mel_power(logmel, recipe), recipe)


def _std(x: np.ndarray, axis: int | None = None) -> np.ndarray:
    """``x.std(axis)`` as sqrt(E[x²] - E[x]²): numpy's std measured ~40 us a call on these small
    arrays (most of the statistics' cost); float64 keeps the difference exact enough."""
    mean = x.mean(axis=axis)
    return np.sqrt(np.maximum((x * x).mean(axis=axis) - mean * mean, 0.0))


def statistics(grouped_power: np.ndarray, recipe: FeatureRecipe) -> np.ndarray:
    """:func:`content_features` from grouped power: ``(N_GROUPS, n_frames)`` -> ``(42,)``, or a
    batch ``(N, N_GROUPS, n_frames)`` -> ``(N, 42)``.

    One vectorised pass over a whole micro-batch: the arrays are small, so per-call overhead,
    not arithmetic, is the cost, and a batch pays it once (the daemon classifies a batch at a time).
    """
    single = grouped_power.ndim == 2
    g = grouped_power[None] if single else grouped_power
    g = g.astype(np.float64)
    db = 10.0 * np.log10(np.maximum(g, 1e-20))
    db = np.maximum(db, db.max(axis=(1, 2), keepdims=True) - DYNAMIC_RANGE_DB)
    db -= db.mean(axis=(1, 2), keepdims=True)  # level-free: only shape and movement are left
    shape = db.mean(axis=2)
    band_std = _std(db, axis=2)
    steps = np.diff(db, axis=2)
    band_flux = np.abs(steps).mean(axis=2)
    flux = np.maximum(steps, 0.0).mean(axis=1)
    total = g.sum(axis=1)
    energy = 10.0 * np.log10(np.maximum(total, 1e-20))
    energy = np.maximum(energy, energy.max(axis=1, keepdims=True) - DYNAMIC_RANGE_DB)
    # Speech alternates syllables and pauses at ~4 Hz; the share of the envelope's modulation
    # energy in 2-8 Hz separates it from most music, whose envelope is steadier or beat-driven.
    frame_rate = recipe.sample_rate / recipe.hop_length
    spectrum = np.abs(np.fft.rfft(energy - energy.mean(axis=1, keepdims=True), axis=1)) ** 2
    freqs = np.fft.rfftfreq(energy.shape[1], 1.0 / frame_rate)
    in_band = (freqs >= SYLLABLE_BAND_HZ[0]) & (freqs <= SYLLABLE_BAND_HZ[1])
    modulation = spectrum[:, in_band].sum(axis=1) / np.maximum(spectrum[:, 1:].sum(axis=1), 1e-12)
    centroid = np.einsum("g,ngt->nt", np.arange(N_GROUPS, dtype=np.float64), g) / np.maximum(total, 1e-20)
    low_energy = (energy < energy.mean(axis=1, keepdims=True) - 10.0).mean(axis=1)
    extra = np.stack([flux.mean(axis=1), _std(flux, axis=1), _std(energy, axis=1), low_energy, modulation,
                      _std(centroid, axis=1)], axis=1)
    features = np.concatenate([shape, band_std, band_flux, extra], axis=1).astype(np.float32)
    return features[0] if single else features


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
        ``mean``/``scale`` (standardisation), ``layers`` (``[{"weights": in x out, "bias": out}]``,
        ReLU between layers, softmax after the last) and ``features`` (the front end it was
        trained on, which must equal the genre model's).
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
            self.layers = [(np.asarray(layer["weights"], np.float64), np.asarray(layer["bias"], np.float64))
                           for layer in spec["layers"]]
            self.mean = np.asarray(spec["mean"], np.float64)
            self.scale = np.asarray(spec["scale"], np.float64)
            classes, names = tuple(spec["classes"]), tuple(spec["feature_names"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ContentModelError(f"invalid content model {path}: {exc}") from exc
        if classes != MODEL_CLASSES or names != FEATURE_NAMES:
            raise ContentModelError(f"{path}: classes/features {classes}/{len(names)} do not match this code")
        width = len(names)
        for weights, bias in self.layers:
            if weights.ndim != 2 or weights.shape[0] != width or bias.shape != (weights.shape[1],):
                raise ContentModelError(f"{path}: a layer of shape {weights.shape} does not fit {width} inputs")
            width = weights.shape[1]
        if not self.layers or width != len(classes):
            raise ContentModelError(f"{path}: the last layer must give {len(classes)} outputs")
        self.silence_dbfs = silence_dbfs
        self.silence_ramp_db = silence_ramp_db
        self._groups: np.ndarray | None = None

    def check_recipe(self, recipe: FeatureRecipe) -> None:
        """The statistics are only meaningful on the front end the regression was fitted on.

        The level normalisation is left out of the comparison: the statistics are level-free and
        :meth:`classify` undoes the window's gain before measuring the level.
        """
        if without_level(FeatureRecipe.from_dict(self.features)) != without_level(recipe):
            raise ContentModelError("content model was trained on another feature recipe than the genre model's")
        self._groups = group_matrix(recipe)

    def classify(self, logmel: np.ndarray, recipe: FeatureRecipe, level_gain_db: float = 0.0) -> ContentState:
        """One model input ``(1, n_mels, n_frames)``; ``level_gain_db`` as in :meth:`classify_batch`."""
        return self.classify_batch(logmel[None], recipe, np.array([level_gain_db]))[0]

    def classify_batch(self, logmels: np.ndarray, recipe: FeatureRecipe, level_gains_db: np.ndarray | None = None
                       ) -> list[ContentState]:
        """Model inputs ``(N, 1, n_mels, n_frames)`` (the genre model's micro-batch) -> N states.

        ``level_gains_db``: each input's level normalisation (``Window.level_gain_db``), undone
        first so that levels and silence are those of the audio as it arrived.
        """
        if self._groups is None:
            self.check_recipe(recipe)
        assert self._groups is not None
        return self.classify_bands(self._groups @ undo_level_gain(mel_power(logmels, recipe), level_gains_db), recipe)

    def classify_bands(self, grouped: np.ndarray, recipe: FeatureRecipe) -> list[ContentState]:
        """N windows' band power ``(N, N_GROUPS, n_frames)`` (:func:`group_matrix` @ the mel power
        of the audio as it arrived, e.g. ``Window.band_power``) -> N states.

        What :meth:`classify_batch` computes from model inputs; the daemon calls this with the
        band power its framing kept, which spares undoing the log of every bin of every window.
        """
        if self._groups is None:
            self.check_recipe(recipe)
        levels = level_of(grouped)
        p_silence = 1.0 / (1.0 + np.exp((levels - self.silence_dbfs) / (self.silence_ramp_db / 4.0)))
        sound = np.full((len(levels), len(MODEL_CLASSES)), 1.0 / len(MODEL_CLASSES))
        audible = p_silence <= 0.999  # nothing audible to classify in the others: skip their cost
        if audible.any():
            z = (statistics(grouped[audible], recipe) - self.mean) / self.scale
            for index, (weights, bias) in enumerate(self.layers):
                z = z @ weights + bias
                if index < len(self.layers) - 1:
                    z = np.maximum(z, 0.0)
            z = np.exp(z - z.max(axis=1, keepdims=True))
            sound[audible] = z / z.sum(axis=1, keepdims=True)
        unrounded = sound * (1.0 - p_silence[:, None])
        # One rounding of the whole batch rather than a round() per value (the daemon does this
        # for every window); the state is chosen on the unrounded probabilities.
        probs = np.round(np.concatenate([unrounded, p_silence[:, None]], axis=1), 5)
        states = []
        for level, best, row in zip(levels.tolist(), unrounded.argmax(axis=1).tolist(), probs.tolist(), strict=True):
            state = "silence" if level < self.silence_dbfs else MODEL_CLASSES[best]
            states.append(ContentState(state, dict(zip(STATES, row, strict=True)), round(level, 2)))
        return states
