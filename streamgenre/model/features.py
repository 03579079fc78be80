"""Streaming log-mel features: the single definition shared by the daemon and ``training/``.

The model contract (``model/*.json``, key ``features``) fixes the recipe. For a window that
starts at sample ``s`` the model input is exactly::

    (LOG(GAIN · librosa.feature.melspectrogram(y=y[s:s + L], sr, n_fft, hop_length, win_length,
                                               window, center=False, n_mels, fmin, fmax, htk,
                                               norm, power)) - mean) / std

with ``L = n_fft + (n_frames - 1) * hop_length``. Because ``center=False`` frames never look
outside the window, the mel frames of a window are a contiguous slice of the mel frames of the
whole stream whenever the window starts on a hop boundary. That is what makes streaming cheap:
:class:`StreamingLogMel` turns arriving audio into mel frames once, and a window is a slice
(:func:`window_input`), so the overlap of consecutive windows is never recomputed.

LOG is either ``power_to_db`` (librosa's, with a *scalar* ``ref``; ``top_db`` clips relative to
the window's own maximum, so it is applied per window in :func:`window_input`) or ``log10_1p``
(musicnn's ``log10(log_scale * S + 1)``, element-wise).

GAIN is the level normalisation (recipe ``level_ref_db``; 1 when it is ``None``): a factor on the
window's mel power that brings its mean to a reference level, at most ``level_max_gain_db``
(:func:`level_gain_db`). A stream's gain multiplies every mel bin by gain², so after it the
model input no longer depends on the level the stream arrives at.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import librosa
import numpy as np
import scipy.fft
import scipy.sparse

from streamgenre.model.recipe import FeatureRecipe


def frame_signal(y: np.ndarray, recipe: FeatureRecipe) -> np.ndarray:
    """The STFT frames of ``y`` with ``center=False``, as a read-only view.

    Returns ``(n_frames, n_fft)`` with ``n_frames = 1 + (n_samples - n_fft) // hop_length`` (0
    when ``y`` is shorter than one frame).
    """
    y = np.ascontiguousarray(y, dtype=np.float32)  # a no-op for the usual float32 chunk
    if y.shape[0] < recipe.n_fft:
        return np.zeros((0, recipe.n_fft), np.float32)
    n_frames = 1 + (y.shape[0] - recipe.n_fft) // recipe.hop_length
    # The ndarray constructor over y's buffer rather than as_strided or sliding_window_view(...)[::hop]:
    # the same view at a third of as_strided's call overhead (1.6 vs 4.9 us), which counts at one
    # call per chunk.
    frames = np.ndarray((n_frames, recipe.n_fft), np.float32, buffer=y,
                        strides=(recipe.hop_length * y.itemsize, y.itemsize))
    frames.flags.writeable = False
    return frames


# Rows per spectral pass of :func:`frames_to_mel`. The pass is memory-bound once its frames and
# complex spectrum (16 KB a row) outgrow L2: one pass over thousands of rows measured 3x slower
# per frame than 256-row blocks, and on the Intel host of 12-01 (2 MB of L2 per core) 64-row
# blocks cost ~29% less than 256-row ones across the whole push_many (~7% of the ceiling with the
# model; docs/PERFORMANCE.md).
# Much smaller blocks pay in per-call overhead: 21 rows (one 0.5 s chunk) ~20% more.
SPECTRAL_BLOCK_ROWS = 64


def frames_to_mel(frames: Sequence[np.ndarray], recipe: FeatureRecipe) -> np.ndarray:
    """Mel spectrum (before the log) of STFT frames, e.g. the new frames of many streams.

    Parameters
    ----------
    frames : sequence of np.ndarray, each of shape (n_i, n_fft)
        Raw (unwindowed) frames, e.g. from :func:`frame_signal`, in output order.
    recipe : FeatureRecipe

    Returns
    -------
    np.ndarray, shape (n_mels, sum of n_i), float32

    Hand-written framing + ``scipy.fft.rfft`` instead of calling librosa per window because the
    streaming path needs frames of *arbitrary* stretches of audio without recomputing the ones
    it already has, and because one pass over the new frames of many streams costs far less
    than librosa per window; parity with librosa is a test. The pieces are windowed straight
    into one block buffer (no separate concatenation) and go through the FFT in blocks of
    ``SPECTRAL_BLOCK_ROWS``.
    """
    total = sum(piece.shape[0] for piece in frames)
    mel = np.empty((recipe.n_mels, total), np.float32)
    block = np.empty((min(total, SPECTRAL_BLOCK_ROWS), recipe.n_fft), np.float32)
    filled = done = 0
    for piece in frames:
        start = 0
        while start < piece.shape[0]:
            take = min(piece.shape[0] - start, block.shape[0] - filled)
            np.multiply(piece[start : start + take], recipe.fft_window, out=block[filled : filled + take])
            filled, start = filled + take, start + take
            if filled == block.shape[0]:
                mel[:, done : done + filled] = _windowed_frames_to_mel(block, recipe)
                done, filled = done + filled, 0
    if filled:
        mel[:, done : done + filled] = _windowed_frames_to_mel(block[:filled], recipe)
    return mel


def _windowed_frames_to_mel(windowed: np.ndarray, recipe: FeatureRecipe) -> np.ndarray:
    """``(n, n_fft)`` windowed frames -> ``(n_mels, n)`` mel power.

    The FFT runs down the columns of the transposed block, so the spectrum comes out bins x
    frames, the layout the filterbank product wants (20% faster per frame than transforming
    rows and transposing the spectrum). ``scipy.fft`` rather than ``np.fft``: on float32 it is
    about 5x faster here; float32 keeps parity far inside the 1e-3 dB test bound. For
    ``power == 2`` the squared magnitude is ``re² + im²`` directly (no sqrt then square).
    """
    stft = scipy.fft.rfft(windowed.T, axis=0)
    if recipe.power == 2.0:
        interleaved = stft.view(np.float32)  # re, im, re, im, ... along each row
        np.square(interleaved, out=interleaved)
        spectrum = interleaved[:, 0::2] + interleaved[:, 1::2]
    else:
        spectrum = np.abs(stft)
        if recipe.power != 1.0:
            spectrum = spectrum**recipe.power
    return recipe.mel_basis_sparse @ spectrum.astype(np.float32, copy=False)


def mel_frames(y: np.ndarray, recipe: FeatureRecipe) -> np.ndarray:
    """Mel spectrogram frames of ``y`` with ``center=False``, before the log.

    Returns float32 ``(n_mels, n_frames)``, equal to ``librosa.feature.melspectrogram(...,
    center=False)`` on the same samples (see :func:`frame_signal` for ``n_frames``).
    """
    return frames_to_mel([frame_signal(y, recipe)], recipe)


# log10(x) = ln(x) / ln(10): numpy's float32 ``log`` has a SIMD loop on AVX2 that ``log10`` lacks, and
# with the scaling done in place the whole compression measured ~7x faster (2.1 -> 0.3 us per frame;
# 1.5e-5 dB from the log10 form, far inside the parity bound).
_LOG10_E = np.float32(1.0 / np.log(10.0))


def compress(mel: np.ndarray, recipe: FeatureRecipe) -> np.ndarray:
    """Element-wise part of LOG (everything except ``top_db``, which needs the whole window).

    Returns a new float32 array of the shape of ``mel``; ``mel`` is not modified.
    """
    if recipe.log == "log10_1p":
        out = np.multiply(mel, np.float32(recipe.log_scale), dtype=np.float32)
        out += np.float32(1.0)
        np.log(out, out=out)
        out *= _LOG10_E
        return out
    out = np.maximum(mel, np.float32(recipe.amin), dtype=np.float32)
    np.log(out, out=out)
    out *= np.float32(10.0) * _LOG10_E
    out -= np.float32(10.0 * np.log10(max(recipe.amin, recipe.ref)))
    return out


_LN10 = np.float32(np.log(10.0))


def mel_power(log_frames: np.ndarray, recipe: FeatureRecipe) -> np.ndarray:
    """Undo :func:`compress`: the mel power of compressed frames (float32, new array).

    Exact up to float32 rounding, except that bins which :func:`compress` raised to ``amin``
    come back as ``amin``. ``expm1`` rather than ``10**x - 1`` keeps quiet ``log10_1p`` bins exact.
    """
    if recipe.log == "log10_1p":
        out = np.multiply(log_frames, _LN10, dtype=np.float32)
        np.expm1(out, out=out)
        out /= np.float32(recipe.log_scale)
        return out
    out = np.add(log_frames, np.float32(10.0 * np.log10(max(recipe.amin, recipe.ref))), dtype=np.float32)
    out *= _LN10 / np.float32(10.0)
    np.exp(out, out=out)
    return out


def level_db(log_frames: np.ndarray, recipe: FeatureRecipe) -> float:
    """A window's level: ``10 log10`` of its mean mel power (``-inf`` for digital silence).

    The mean of the *power* (not of the dB values) scales exactly with gain², and loud bins
    dominate it, so the few near-empty bands of band-limited audio do not move it.
    """
    mean = float(mel_power(log_frames, recipe).mean(dtype=np.float64))
    return 10.0 * float(np.log10(mean)) if mean > 0.0 else float("-inf")


def median_level_db(frames: Sequence[np.ndarray], recipe: FeatureRecipe, hop_frames: int) -> float:
    """Median :func:`level_db` over the windows of clips' compressed frames: a training set's
    typical level, the natural ``level_ref_db`` (a typical window is then left nearly as it was)."""
    levels = [level_db(f[:, s : s + recipe.n_frames], recipe)
              for f in frames for s in window_starts(f.shape[1], recipe.n_frames, hop_frames)]
    if not levels:
        raise ValueError("no clip is long enough for one window")
    return round(float(np.median(levels)), 2)


def level_gain_db(log_frames: np.ndarray, recipe: FeatureRecipe) -> float:
    """The gain (dB) that brings a window to ``recipe.level_ref_db``, at most ``level_max_gain_db``.

    Per window rather than per stream: a window is a slice of the stream's frames, so the gain
    depends on nothing but that slice, and the daemon, ``clip_windows`` and training compute
    the same input from the same audio whatever came before (streaming == offline, no state to
    restore after a restart). The price is that a quiet passage is raised to the reference as
    much as a quiet stream; the upper bound keeps silence and hiss from being raised to music
    level. Loud windows are attenuated without bound.
    """
    if recipe.level_ref_db is None:
        return 0.0
    return min(recipe.level_ref_db - level_db(log_frames, recipe), recipe.level_max_gain_db)


def apply_gain(log_frames: np.ndarray, gain_db: float, recipe: FeatureRecipe) -> np.ndarray:
    """Compressed frames of the same audio scaled by ``gain_db`` (power × 10^(gain/10)), new array.

    Acts on compressed frames because that is what the daemon's frame buffer and the training
    caches hold: a ``power_to_db`` frame only shifts (then the ``amin`` floor again), a
    ``log10_1p`` frame goes back to power and through the log again. The inversion costs an
    ``exp`` (and a ``log``) per bin of each window, a fraction of a percent of the tagger's
    inference; keeping power frames in the buffer instead would change the daemon's buffer and
    every training cache for the same result.
    """
    if recipe.log == "log10_1p":
        power = mel_power(log_frames, recipe)
        power *= np.float32(recipe.log_scale * 10.0 ** (gain_db / 10.0))
        np.log1p(power, out=power)
        power /= _LN10
        return power
    floor = np.float32(10.0 * np.log10(recipe.amin) - 10.0 * np.log10(max(recipe.amin, recipe.ref)))
    # Bins at the floor held at most amin before the log; they stay there (digital silence stays
    # silence), where a waveform gain would lift a bin just under amin: a difference below -100 dB.
    shifted = np.maximum(log_frames + np.float32(gain_db), floor)
    return np.where(log_frames > floor, shifted, floor)


def window_input(log_frames: np.ndarray, recipe: FeatureRecipe, gain_db: float | None = None) -> np.ndarray:
    """Turn a ``(n_mels, n_frames)`` slice of compressed frames into one model input.

    Applies ``top_db`` (relative to this window's maximum, as ``librosa.power_to_db`` does)
    and the sidecar's normalisation. Returns float32 ``(1, n_mels, n_frames)``.

    ``gain_db``: the window's :func:`level_gain_db` when the caller already has it (the framer
    keeps it so that level-based stages can undo it); computed here otherwise.

    Order: the level normalisation first (it is a gain on the mel power, so ``top_db``, relative
    to the window's maximum, and the per-band statistics see the window at the reference level,
    as they were estimated), then ``top_db``, then ``(x - mean) / std``.
    """
    if log_frames.shape != (recipe.n_mels, recipe.n_frames):
        raise ValueError(f"expected ({recipe.n_mels}, {recipe.n_frames}) frames, got {log_frames.shape}")
    if recipe.level_ref_db is not None:
        gain = level_gain_db(log_frames, recipe) if gain_db is None else gain_db
        log_frames = apply_gain(log_frames, gain, recipe)
    if recipe.log == "power_to_db" and recipe.top_db is not None:
        out = np.maximum(log_frames, log_frames.max() - np.float32(recipe.top_db), dtype=np.float32)
    else:
        out = np.array(log_frames, np.float32)
    # In place on the one new array: the same operations in the same order as (x - mean) / std,
    # so bit-identical, without the temporaries of each step.
    mean, std = recipe.normaliser
    out -= mean
    out /= std
    return out[None]


def log_mel(y: np.ndarray, recipe: FeatureRecipe) -> np.ndarray:
    """Compressed mel frames of a whole clip: ``compress(mel_frames(y))``, shape (n_mels, T)."""
    return compress(mel_frames(y, recipe), recipe)


def window_starts(n_total_frames: int, n_frames: int, hop_frames: int) -> range:
    """Start frames of the windows :func:`clip_windows` cuts from ``n_total_frames`` frames."""
    return range(0, n_total_frames - n_frames + 1, hop_frames)


def windows_from_frames(frames: np.ndarray, recipe: FeatureRecipe, starts: Iterable[int]) -> np.ndarray:
    """Model inputs of the windows of compressed frames ``(n_mels, T)`` starting at ``starts``.

    The one window slicer: :func:`clip_windows`, training (from cached frames) and evaluation
    all cut windows here, each through :func:`window_input` as the daemon's framer does.
    Returns float32 ``(n_windows, 1, n_mels, n_frames)``.
    """
    windows = [window_input(frames[:, s : s + recipe.n_frames], recipe) for s in starts]
    if not windows:
        return np.zeros((0, 1, recipe.n_mels, recipe.n_frames), np.float32)
    return np.stack(windows)


def clip_windows(y: np.ndarray, recipe: FeatureRecipe, hop_frames: int) -> np.ndarray:
    """Model inputs for every window of a clip, starting every ``hop_frames`` mel frames.

    Used by training and offline tools so that they cut windows exactly as the daemon does.
    Returns float32 ``(n_windows, 1, n_mels, n_frames)``; ``n_windows`` is 0 for short clips.
    """
    frames = log_mel(y, recipe)
    return windows_from_frames(frames, recipe, window_starts(frames.shape[1], recipe.n_frames, hop_frames))


def reference_window(y: np.ndarray, recipe: FeatureRecipe) -> np.ndarray:
    """The contract's definition of one window's model input, written with librosa only.

    Slow (a whole-window STFT per call): the parity tests hold :func:`window_input` to it, and
    ``streamgenre bench`` uses it as the paper-style baseline. Returns ``(n_mels, n_frames)``
    for ``y`` of ``recipe.window_samples`` samples.
    """
    mel = librosa.feature.melspectrogram(
        y=y, sr=recipe.sample_rate, n_fft=recipe.n_fft, hop_length=recipe.hop_length,
        win_length=recipe.win_length, window=recipe.window, center=False, n_mels=recipe.n_mels,
        fmin=recipe.fmin, fmax=recipe.fmax, htk=recipe.htk, norm=recipe.norm, power=recipe.power,
    )
    if recipe.level_ref_db is not None:
        mean = float(np.mean(mel, dtype=np.float64))
        level = 10.0 * np.log10(mean) if mean > 0.0 else float("-inf")
        mel = mel * 10.0 ** (min(recipe.level_ref_db - level, recipe.level_max_gain_db) / 10.0)
    if recipe.log == "log10_1p":
        logged = np.log10(recipe.log_scale * mel + 1)
    else:
        logged = librosa.power_to_db(mel, ref=recipe.ref, amin=recipe.amin, top_db=recipe.top_db)
    return ((logged - np.float32(recipe.mean)) / np.float32(recipe.std)).astype(np.float32)


def to_mono(audio: np.ndarray) -> np.ndarray:
    """Downmix ``(n_samples,)`` or ``(n_samples, channels)`` audio to float32 mono."""
    audio = np.asarray(audio, dtype=np.float32)
    return audio if audio.ndim == 1 else audio.mean(axis=1, dtype=np.float32)


def resample(y: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Resample a whole signal with soxr (through librosa); identity when the rates match."""
    if orig_sr == target_sr:
        return np.asarray(y, dtype=np.float32)
    return librosa.resample(y, orig_sr=orig_sr, target_sr=target_sr, res_type="soxr_hq").astype(np.float32)


class StreamingLogMel:
    """Incremental log-mel for one stream: push audio, get only the *new* frames.

    Keeps at most ``n_fft - hop_length`` samples between calls (the part of the next frame
    already received), so memory is bounded regardless of stream length. Feeding a signal in
    chunks of any sizes yields exactly the frames :func:`log_mel` gives for the whole signal.
    """

    def __init__(self, recipe: FeatureRecipe) -> None:
        self.recipe = recipe
        self._pending = np.zeros(0, np.float32)

    def take_frames(self, y: np.ndarray) -> np.ndarray:
        """Append mono samples at ``recipe.sample_rate``; return the raw STFT frames now complete.

        Returns a read-only ``(n, n_fft)`` view of audio that this object no longer touches.
        Turning frames into log-mel is left to the caller so that the frames of many streams go
        through one :func:`frames_to_mel` pass.
        """
        y = np.asarray(y, np.float32)
        buf = np.concatenate([self._pending, y]) if self._pending.size else y
        frames = frame_signal(buf, self.recipe)
        consumed = frames.shape[0] * self.recipe.hop_length
        self._pending = np.array(buf[consumed:], dtype=np.float32)
        return frames

    def push(self, y: np.ndarray) -> np.ndarray:
        """Append mono samples; return the new compressed frames ``(n_mels, n)``."""
        return compress(frames_to_mel([self.take_frames(y)], self.recipe), self.recipe)

    def reset(self) -> None:
        self._pending = np.zeros(0, np.float32)

    @property
    def pending_samples(self) -> int:
        return int(self._pending.size)
