"""Track embeddings: a file or a signal in, one L2-normalised vector (and mean probabilities) out.

A *track embedding* is the mean of the model's per-window ``embedding`` outputs over the whole
track, L2-normalised, so the cosine similarity of two tracks is the dot product of their
embeddings. The windows are cut by :func:`streamgenre.model.features.clip_windows` with the model's
own hop, exactly as training and the daemon cut them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from streamgenre.model.audio import load_audio
from streamgenre.model.contract import GenreModel
from streamgenre.model.features import clip_windows


@dataclass(frozen=True)
class TrackEmbedding:
    """What the model says about one whole track.

    Attributes
    ----------
    embedding : np.ndarray, shape (D,), float32
        Mean of the window embeddings, L2-normalised (all zeros if that mean is zero).
    probs : np.ndarray, shape (C,), float32
        Mean of the window probabilities (the clip prediction of the model contract).
    n_windows : int
        Windows the track was cut into.
    duration_s : float
        Duration of the decoded audio, in seconds.
    """

    embedding: np.ndarray
    probs: np.ndarray
    n_windows: int
    duration_s: float


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Scale vectors (the last axis) to unit length; zero vectors stay zero. Returns float32."""
    x = np.asarray(x, dtype=np.float32)
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)


def embed_audio(y: np.ndarray, model: GenreModel, batch_size: int = 64, duration_s: float | None = None,
                max_windows: int | None = None) -> TrackEmbedding:
    """Track embedding and mean probabilities of mono audio at the model's sample rate.

    Parameters
    ----------
    y : np.ndarray, shape (n_samples,)
        Mono audio at ``model.recipe.sample_rate``.
    model : GenreModel
    batch_size : int
        Windows per inference call.
    duration_s : float, optional
        Recorded in the result; defaults to ``len(y) / sample_rate``.
    max_windows : int, optional
        Run the model on at most this many windows, evenly spread over the track (all windows
        when None). The model dominates the cost (about 11 windows/s on one core for the shipped
        musicnn model), so this bounds the time per track for large catalogues of long tracks.

    Returns
    -------
    TrackEmbedding

    Notes
    -----
    A track shorter than one window is zero-padded to one window, so that every readable file
    gets an embedding; its neighbours are then less reliable.
    """
    if max_windows is not None and max_windows < 1:
        raise ValueError(f"max_windows must be at least 1, got {max_windows}")
    recipe = model.recipe
    if duration_s is None:
        duration_s = y.shape[0] / recipe.sample_rate
    if y.shape[0] < recipe.window_samples:
        y = np.pad(y, (0, recipe.window_samples - y.shape[0]))
    windows = clip_windows(y, recipe, model.spec.hop_frames)
    if max_windows is not None and len(windows) > max_windows:
        # The centre window of each of max_windows equal stretches of the track.
        windows = windows[((np.arange(max_windows) + 0.5) * len(windows) / max_windows).astype(int)]
    probs, embeddings = zip(*(model.predict(windows[i : i + batch_size])
                              for i in range(0, len(windows), batch_size)), strict=True)
    return TrackEmbedding(
        embedding=l2_normalise(np.concatenate(embeddings).mean(axis=0)),
        probs=np.concatenate(probs).mean(axis=0).astype(np.float32),
        n_windows=len(windows),
        duration_s=float(duration_s),
    )


def embed_file(path: Path | str, model: GenreModel, batch_size: int = 64, max_windows: int | None = None
               ) -> TrackEmbedding:
    """:func:`embed_audio` of a file decoded by :func:`load_audio`."""
    y, duration_s = load_audio(path, model.recipe.sample_rate)
    return embed_audio(y, model, batch_size, duration_s, max_windows)
