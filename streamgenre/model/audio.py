"""The one audio-file loader of the project: decode, downmix, resample to a model's rate.

Used by the catalogue (:mod:`streamgenre.model.similarity`), training and evaluation
(``training.data.read_audio``), so every offline path hears a file exactly as the others do.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

from streamgenre.model.features import resample, to_mono


def load_audio(path: Path | str, sample_rate: int) -> tuple[np.ndarray, float]:
    """Decode a file with soundfile, downmix to mono and resample.

    Parameters
    ----------
    path : Path or str
        Any format libsndfile reads (wav, flac, ogg, mp3, au, aiff).
    sample_rate : int
        Target rate in Hz.

    Returns
    -------
    y : np.ndarray, shape (n_samples,), float32
        Mono audio at ``sample_rate``.
    duration_s : float
        Duration of the file as decoded.

    Raises
    ------
    soundfile.LibsndfileError, OSError
        The file cannot be read or decoded.
    """
    audio, sr = sf.read(str(path), dtype="float32", always_2d=False)
    return resample(to_mono(audio), int(sr), sample_rate), audio.shape[0] / sr
