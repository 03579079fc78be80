"""Broadcast channels simulated on mel power: band limits and noise for every training crop.

The offline student's damaged views (:mod:`training.distill_offline`) are whole files run
through real filters, codecs and noise, cached once: each file gets a handful of fixed damages,
so a crop meets a telephone line on one file in ten. This module adds a *different* channel to
any crop at the cost of a few array operations, in the mel power domain where the batch already
is (mixup works there too):

- **Band limits.** A band-pass or low-pass acts on the power spectrum as a gain ``|H(f)|^2``.
  Through the mel filterbank that becomes one gain per mel band, the filterbank's weighted mean
  of ``|H|^2`` over its FFT bins (exact for a spectrum that is flat inside a band, which a
  mel band nearly is). Cut-offs cover the telephone (300-3400 Hz), AM (100-5000 Hz) and
  low-bitrate codec (4-11 kHz low-pass) families at random slopes, Butterworth magnitudes
  applied once or twice (``sosfiltfilt`` squares the magnitude).
- **Noise.** Power adds, so noise is real white or pink noise run through the same front end
  once (:func:`noise_bank`), a random stretch of it scaled to an SNR of 5-30 dB over the crop's
  mel power and added. Its frame-to-frame fluctuation is that of real noise, not a smooth floor.

The target stays the teacher's answer on the clean recording: the student learns to say what
a listener of the original would, through whatever the channel did.
"""

from __future__ import annotations

import numpy as np
import torch

from streamgenre.model.features import FeatureRecipe, log_mel
from training.augment import coloured_noise


def band_gains(recipe: FeatureRecipe, low_hz: float, high_hz: float, order: int, passes: int) -> np.ndarray:
    """Mel-band power gains ``(n_mels,)`` of a Butterworth band-pass (``low_hz`` 0: low-pass).

    Parameters
    ----------
    recipe : FeatureRecipe
        Whose mel filterbank turns the FFT-bin gains into mel-band gains.
    low_hz, high_hz : float
        Cut-off frequencies (-3 dB points of one pass).
    order : int
        Butterworth order: ``|H|^2 = 1 / (1 + (f / f_c)^(2 order))`` per edge.
    passes : int
        1 for a causal filter, 2 for a zero-phase ``sosfiltfilt`` (the magnitude squared).
    """
    freqs = np.fft.rfftfreq(recipe.n_fft, 1.0 / recipe.sample_rate)
    power = 1.0 / (1.0 + (freqs / high_hz) ** (2 * order))
    if low_hz > 0:
        with np.errstate(divide="ignore"):
            power = power / (1.0 + (low_hz / np.maximum(freqs, 1e-3)) ** (2 * order))
    power = power**passes
    basis = recipe.mel_basis
    return (basis @ power) / np.maximum(basis.sum(axis=1), 1e-12)


def noise_bank(recipe: FeatureRecipe, seconds: float = 30.0, seed: int = 0) -> np.ndarray:
    """Mel power frames ``(2, n_mels, T)`` of white and pink noise through ``recipe``'s front end."""
    rng = np.random.default_rng(seed)
    n = round(seconds * recipe.sample_rate)
    frames = [log_mel(0.1 * coloured_noise(n, rng, colour), recipe) for colour in (0.0, 1.0)]
    return 10.0 ** (np.stack(frames).astype(np.float64) / 10.0)


class ChannelSimulator:
    """Random band limits and noise on batches of mel power ``(B, 1, n_mels, n_frames)``.

    Parameters
    ----------
    recipe : FeatureRecipe
    p_band, p_noise : float
        Probability that a crop passed to :meth:`__call__` gets a band limit, and noise.
    seed : int
    """

    def __init__(self, recipe: FeatureRecipe, p_band: float = 0.7, p_noise: float = 0.5, seed: int = 0) -> None:
        self.recipe, self.p_band, self.p_noise = recipe, p_band, p_noise
        self.rng = np.random.default_rng(seed)
        self.noise = torch.from_numpy(noise_bank(recipe, seed=seed).astype(np.float32))

    def random_band(self) -> np.ndarray:
        """Gains of one random channel: telephone-, AM- or codec-like, at a random slope."""
        rng = self.rng
        kind = rng.choice(["telephone", "am", "lowpass"])
        if kind == "telephone":
            low, high = rng.uniform(200, 450), rng.uniform(2800, 4000)
        elif kind == "am":
            low, high = rng.uniform(50, 200), rng.uniform(3500, 6500)
        else:
            low, high = 0.0, float(np.exp(rng.uniform(np.log(3500), np.log(11000))))
        return band_gains(self.recipe, low, high, order=int(rng.choice([2, 4, 8])), passes=int(rng.integers(1, 3)))

    def __call__(self, power: torch.Tensor) -> torch.Tensor:
        """Each crop of ``power`` through its own random channel (a new tensor)."""
        out = power.clone()
        n_frames = power.shape[-1]
        for i in range(power.shape[0]):
            if self.rng.random() < self.p_band:
                out[i] *= torch.from_numpy(self.random_band().astype(np.float32)).view(-1, 1)
            if self.rng.random() < self.p_noise:
                colour = int(self.rng.integers(2))
                start = int(self.rng.integers(0, self.noise.shape[-1] - n_frames + 1))
                noise = self.noise[colour, :, start : start + n_frames]
                snr_db = float(self.rng.uniform(5, 30))
                scale = out[i].sum() / noise.sum() * 10 ** (-snr_db / 10)
                out[i] += scale * noise
        return out
