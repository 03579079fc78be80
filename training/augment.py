"""Training-set augmentation: waveform variants (precomputed, cached) and cheap online ones.

Two kinds, by cost:

- *Waveform* augmentations change the audio before the front end, so each needs a new log-mel:
  pitch shift and time stretch (``librosa.effects``, the paper's), additive noise at a random
  SNR, and two broadcast degradations: band-limiting (telephone / AM-radio passbands) and a
  lossy-codec-like steep low-pass. :func:`variant_specs` draws a fixed number of variants per
  training clip from a seed, and ``training.train`` computes their frames once through the
  on-disk cache of :func:`training.data.cached_log_mel`.
- *Online* augmentations act on model inputs every epoch: random window position (in
  ``training.train``), gain (:func:`gain_db`, an offset in the dB domain), SpecAugment masks
  (:func:`spec_augment`) and mixup (:func:`mixup`).

Augmentation is applied to the training split only; validation and test windows are cut exactly
as the daemon cuts them.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass

import librosa
import numpy as np
from scipy import signal

#: Passbands in Hz that band-limiting picks from: telephone, AM radio, narrow FM / streaming.
BANDS: tuple[tuple[float, float], ...] = ((300.0, 3400.0), (100.0, 5000.0), (50.0, 8000.0))


@dataclass(frozen=True)
class WaveformAugmentation:
    """One deterministic chain of waveform augmentations (a picklable ``(y, sr) -> y`` callable).

    Attributes
    ----------
    pitch_steps : float
        Pitch shift in semitones (0 = none).
    stretch_rate : float
        Time-stretch rate, > 1 is faster (1 = none).
    snr_db : float or None
        Signal-to-noise ratio in dB of added noise (None = none).
    noise_seed : int
        Seed of the noise, so that a variant is reproducible (and cacheable).
    band_hz : (float, float) or None
        4th-order Butterworth band-pass edges in Hz (None = none).
    lowpass_hz : float or None
        Cut-off in Hz of an 8th-order elliptic low-pass, mimicking the brick-wall filter of
        low-bit-rate MP3/AAC encoders (None = none).
    """

    pitch_steps: float = 0.0
    stretch_rate: float = 1.0
    snr_db: float | None = None
    noise_seed: int = 0
    band_hz: tuple[float, float] | None = None
    lowpass_hz: float | None = None

    @property
    def key(self) -> str:
        """Stable identifier of the chain and its parameters, for cache keys."""
        return json.dumps(asdict(self), sort_keys=True)

    def __call__(self, y: np.ndarray, sr: int) -> np.ndarray:
        """Apply the chain to mono float32 audio ``y`` at ``sr`` Hz; returns float32 mono audio."""
        y = np.asarray(y, np.float32)
        if self.pitch_steps:
            y = librosa.effects.pitch_shift(y, sr=sr, n_steps=self.pitch_steps)
        if self.stretch_rate != 1.0:
            y = librosa.effects.time_stretch(y, rate=self.stretch_rate)
        if self.band_hz is not None:
            y = band_limit(y, sr, *self.band_hz)
        if self.lowpass_hz is not None:
            y = codec_lowpass(y, sr, self.lowpass_hz)
        if self.snr_db is not None:
            y = add_noise(y, self.snr_db, np.random.default_rng(self.noise_seed))
        return y.astype(np.float32)


def coloured_noise(n: int, rng: np.random.Generator, colour: float = 1.0) -> np.ndarray:
    """``n`` samples of noise whose power falls as 1/f**colour (0 white, 1 pink), float64."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.arange(len(spectrum), dtype=np.float64)
    freqs[0] = 1.0
    return np.fft.irfft(spectrum / freqs ** (colour / 2), n=n)


def add_noise(y: np.ndarray, snr_db: float, rng: np.random.Generator, colour: float = 1.0) -> np.ndarray:
    """Add noise at a given signal-to-noise ratio.

    Parameters
    ----------
    y : np.ndarray, shape (n_samples,)
    snr_db : float
        Ratio of the signal's mean power to the noise's, in dB.
    rng : np.random.Generator
    colour : float
        Spectral slope exponent: power ~ 1/f**colour (0 white, 1 pink, the hiss of tape and
        broadcast chains more than white noise is).
    """
    noise = coloured_noise(len(y), rng, colour)
    signal_power = float(np.mean(y.astype(np.float64) ** 2))
    noise_power = float(np.mean(noise**2)) or 1.0
    scale = np.sqrt(signal_power / (noise_power * 10 ** (snr_db / 10)))
    return (y + scale * noise).astype(np.float32)


def band_limit(y: np.ndarray, sr: int, low_hz: float, high_hz: float) -> np.ndarray:
    """4th-order Butterworth band-pass (zero-phase), ``high_hz`` clipped below Nyquist."""
    high_hz = min(high_hz, 0.95 * sr / 2)
    sos = signal.butter(4, [low_hz, high_hz], btype="bandpass", fs=sr, output="sos")
    return signal.sosfiltfilt(sos, y).astype(np.float32)


def codec_lowpass(y: np.ndarray, sr: int, cutoff_hz: float) -> np.ndarray:
    """Steep elliptic low-pass (0.1 dB ripple, 60 dB stop band) like a lossy encoder's."""
    cutoff_hz = min(cutoff_hz, 0.95 * sr / 2)
    sos = signal.ellip(8, 0.1, 60, cutoff_hz, btype="lowpass", fs=sr, output="sos")
    return signal.sosfilt(sos, y).astype(np.float32)


def variant_specs(clip_id: str, n_variants: int, seed: int = 0) -> list[WaveformAugmentation]:
    """Draw the waveform variants of one training clip, reproducibly.

    Each variant gets, independently: a pitch shift of +-1..2 semitones *or* a time stretch of
    0.85..1.15 *or* neither (1/3 each); pink noise at 10..30 dB SNR with probability 1/2; and a
    broadcast degradation with probability 2/5 (band-limiting or a codec low-pass at 4..9 kHz).

    Parameters
    ----------
    clip_id : str
        Seeds the draw together with ``seed``, so a clip's variants do not depend on the other
        clips of the split (and are shared by protocols through the cache).
    n_variants : int
    seed : int
    """
    rng = random.Random(f"{seed}:{clip_id}")
    specs = []
    for _ in range(n_variants):
        kind = rng.choice(("pitch", "stretch", "none"))
        pitch = rng.choice((-1, 1)) * rng.uniform(1.0, 2.0) if kind == "pitch" else 0.0
        stretch = rng.uniform(0.85, 1.15) if kind == "stretch" else 1.0
        snr = rng.uniform(10.0, 30.0) if rng.random() < 0.5 else None
        band, lowpass = None, None
        if rng.random() < 0.4:
            if rng.random() < 0.5:
                band = rng.choice(BANDS)
            else:
                lowpass = rng.uniform(4000.0, 9000.0)
        specs.append(
            WaveformAugmentation(
                pitch_steps=round(pitch, 2),
                stretch_rate=round(stretch, 3),
                snr_db=None if snr is None else round(snr, 1),
                noise_seed=rng.randrange(1 << 31),
                band_hz=band,
                lowpass_hz=None if lowpass is None else round(lowpass, -1),
            )
        )
    return specs


def gain_db(rng: np.random.Generator, n: int, max_db: float = 6.0) -> np.ndarray:
    """Random gains in dB, uniform in ``[-max_db, max_db]``, one per window.

    Scaling audio by ``g`` adds ``20 log10 g`` dB to every mel bin of a ``power_to_db`` front
    end (until the ``amin`` floor), and ``top_db`` is relative to the window's own maximum, so
    adding the offset to the compressed frames before :func:`streamgenre.model.features.window_input`
    equals a waveform gain, without recomputing the spectrogram.
    """
    return rng.uniform(-max_db, max_db, size=n).astype(np.float32)


def spec_augment(
    x: np.ndarray,
    rng: np.random.Generator,
    n_freq_masks: int = 2,
    max_freq: int = 16,
    n_time_masks: int = 2,
    max_time: int = 20,
) -> np.ndarray:
    """SpecAugment frequency and time masks (Park et al., 2019), in place.

    Parameters
    ----------
    x : np.ndarray, shape (N, 1, n_mels, n_frames)
        Normalised model inputs; masked cells are set to 0, the training-set mean.
    rng : np.random.Generator
    n_freq_masks, max_freq : int
        Number of frequency masks per window and their largest width in mel bands.
    n_time_masks, max_time : int
        Number of time masks per window and their largest width in frames.

    Returns
    -------
    np.ndarray
        ``x``, masked.
    """
    n_mels, n_frames = x.shape[-2:]
    for window in x:
        for _ in range(n_freq_masks):
            width = int(rng.integers(0, max_freq + 1))
            start = int(rng.integers(0, n_mels - width + 1))
            window[:, start : start + width, :] = 0.0
        for _ in range(n_time_masks):
            width = int(rng.integers(0, max_time + 1))
            start = int(rng.integers(0, n_frames - width + 1))
            window[:, :, start : start + width] = 0.0
    return x


def mixup(
    x: np.ndarray, targets: np.ndarray, rng: np.random.Generator, alpha: float = 0.2
) -> tuple[np.ndarray, np.ndarray]:
    """Mixup (Zhang et al., 2018): convex combinations of pairs of a batch and of their targets.

    Parameters
    ----------
    x : np.ndarray, shape (N, ...)
        Model inputs.
    targets : np.ndarray, shape (N, n_classes)
        One-hot (or soft) targets.
    rng : np.random.Generator
    alpha : float
        Beta(alpha, alpha) parameter of the mixing weight; 0 disables mixup.

    Returns
    -------
    (np.ndarray, np.ndarray)
        Mixed inputs and targets, same shapes.
    """
    if alpha <= 0:
        return x, targets
    lam = rng.beta(alpha, alpha, size=len(x)).astype(np.float32)
    perm = rng.permutation(len(x))
    lam_x = lam.reshape((-1,) + (1,) * (x.ndim - 1))
    return lam_x * x + (1 - lam_x) * x[perm], lam[:, None] * targets + (1 - lam[:, None]) * targets[perm]
