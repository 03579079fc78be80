"""The feature recipe: every parameter of the log-mel front end, as a model's sidecar stores it.

Kept apart from :mod:`streamgenre.model.features` (which computes the features) because the
recipe is also the contract's vocabulary: the sidecar loader, training and the benchmarks read
and write recipes without computing a single frame. Derived values (the mel filterbank, the FFT
window, the normaliser) are built once per recipe and cached on it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import librosa
import numpy as np
import scipy.sparse

LogKind = Literal["power_to_db", "log10_1p"]


@dataclass(frozen=True)
class FeatureRecipe:
    """Every parameter of the log-mel front end, as stored in the model sidecar.

    Parameters
    ----------
    sample_rate : int
        Rate in Hz that audio is resampled to before analysis.
    n_fft, hop_length, win_length : int
        STFT size, hop and analysis-window length, in samples.
    window : str
        Window name understood by ``scipy.signal.get_window`` (e.g. ``"hann"``).
    n_mels, fmin, fmax, htk, norm :
        Mel filterbank, as in ``librosa.filters.mel`` (``fmin``/``fmax`` in Hz).
    power : float
        Exponent of the magnitude spectrogram (2.0 = power).
    log : {"power_to_db", "log10_1p"}
        Compression applied to the mel spectrogram.
    ref, amin, top_db : float
        ``librosa.power_to_db`` parameters (``log="power_to_db"`` only; ``top_db`` may be None).
    log_scale : float
        ``S`` multiplier of ``log10(log_scale * S + 1)`` (``log="log10_1p"`` only).
    mean, std : float or list of float
        Normalisation, scalars or one value per mel band.
    n_frames : int
        Mel frames per model window.
    level_ref_db : float or None
        Level normalisation (see :func:`level_gain_db`): every window's mel power is scaled so
        that its mean is this many dB (``10 log10`` of the mean mel power, in the filterbank's
        units). ``None`` (the default, so sidecars written before it keep their meaning): off.
    level_max_gain_db : float
        The most a window is boosted, so that near-silence is not raised into loud noise.
    """

    sample_rate: int = 22050
    n_fft: int = 2048
    hop_length: int = 512
    win_length: int | None = None
    window: str = "hann"
    n_mels: int = 128
    fmin: float = 0.0
    fmax: float | None = None
    htk: bool = False
    norm: str | None = "slaney"
    power: float = 2.0
    log: LogKind = "power_to_db"
    ref: float = 1.0
    amin: float = 1e-10
    top_db: float | None = 80.0
    log_scale: float = 10000.0
    mean: float | list[float] = 0.0
    std: float | list[float] = 1.0
    n_frames: int = 128
    level_ref_db: float | None = None
    level_max_gain_db: float = 40.0
    # init=False: dataclasses.replace() must start a fresh cache, or a copy with new mean/std would
    # keep serving the original's cached normaliser.
    _cache: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False, hash=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureRecipe:
        """Build a recipe from a sidecar's ``features`` object; unknown keys are an error."""
        known = {f for f in cls.__dataclass_fields__ if not f.startswith("_")}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown feature recipe keys: {sorted(unknown)}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in self.__dataclass_fields__ if not f.startswith("_")}

    def seconds_to_frames(self, seconds: float) -> int:
        """The whole number of mel frames (at least 1) nearest to ``seconds``: where a window hop
        given in seconds lands, since windows start on frame boundaries (they are slices)."""
        return max(1, round(seconds * self.sample_rate / self.hop_length))

    def frames_to_seconds(self, frames: float) -> float:
        """Seconds spanned by ``frames`` mel-frame hops (the inverse of :meth:`seconds_to_frames`)."""
        return frames * self.hop_length / self.sample_rate

    @property
    def window_samples(self) -> int:
        """Samples covered by one model window: ``n_fft + (n_frames - 1) * hop_length``."""
        return self.n_fft + (self.n_frames - 1) * self.hop_length

    @property
    def mel_basis(self) -> np.ndarray:
        """``(n_mels, 1 + n_fft // 2)`` float32 filterbank, built once per recipe."""
        if "mel_basis" not in self._cache:
            self._cache["mel_basis"] = librosa.filters.mel(
                sr=self.sample_rate, n_fft=self.n_fft, n_mels=self.n_mels, fmin=self.fmin,
                fmax=self.fmax, htk=self.htk, norm=self.norm,
            ).astype(np.float32)
        return self._cache["mel_basis"]

    @property
    def mel_basis_sparse(self) -> scipy.sparse.csr_matrix:
        """:attr:`mel_basis` as CSR: each mel filter spans a few FFT bins (~2% non-zero for 128 x 1025),
        so the per-chunk filterbank product costs about half of the dense matmul."""
        if "mel_basis_sparse" not in self._cache:
            self._cache["mel_basis_sparse"] = scipy.sparse.csr_matrix(self.mel_basis)
        return self._cache["mel_basis_sparse"]

    @property
    def fft_window(self) -> np.ndarray:
        """Analysis window zero-padded to ``n_fft``, exactly as ``librosa.stft`` builds it."""
        if "fft_window" not in self._cache:
            win = librosa.filters.get_window(self.window, self.win_length or self.n_fft, fftbins=True)
            self._cache["fft_window"] = librosa.util.pad_center(win, size=self.n_fft).astype(np.float32)
        return self._cache["fft_window"]

    @property
    def normaliser(self) -> tuple[np.ndarray, np.ndarray]:
        """``(mean, std)`` shaped ``(n_mels, 1)`` so they broadcast over frames."""
        if "normaliser" not in self._cache:
            mean = np.broadcast_to(np.asarray(self.mean, np.float32), (self.n_mels,))[:, None]
            std = np.broadcast_to(np.asarray(self.std, np.float32), (self.n_mels,))[:, None]
            self._cache["normaliser"] = (mean, std)
        return self._cache["normaliser"]
