"""A catalogue: track embeddings with their metadata, built from audio files, searched by cosine.

:class:`Catalog` ties the pieces together — the files on disk (:mod:`.storage`), the search
(:mod:`.index`) and, for live neighbours, the mean of a stream's recent window embeddings
(:meth:`Catalog.neighbours`); :func:`build_catalog` embeds files (:mod:`.files`,
:mod:`.embedding`) into one.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from tqdm import tqdm

from streamgenre.model.contract import GenreModel
from streamgenre.model.similarity.embedding import embed_file, l2_normalise
from streamgenre.model.similarity.files import AUDIO_EXTENSIONS, find_audio, track_label
from streamgenre.model.similarity.index import (
    DEFAULT_ANN_THRESHOLD,
    hnsw_description,
    open_hnsw,
    search_exact,
    search_hnsw,
    write_hnsw,
)
from streamgenre.model.similarity.storage import (
    ANN_FILE,
    EMBEDDINGS_FILE,
    FORMAT_NAME,
    FORMAT_VERSION,
    INFO_FILE,
    TRACKS_FILE,
    CatalogError,
    atomic_write,
    read_catalog,
)

log = logging.getLogger(__name__)


class Catalog:
    """Track embeddings plus metadata, searchable by cosine similarity.

    Parameters
    ----------
    embeddings : np.ndarray, shape (N, D)
        L2-normalised track embeddings (normalised again here, harmlessly).
    tracks : list of dict
        One per row: ``path``, ``duration_s``, ``n_windows``, ``genre`` (predicted), ``probs``, ``label``.
    info : dict
        The ``catalog.json`` object (``model_version``, ``embedding_dim``, ...).
    ann_threshold : int
        Use the HNSW index when there are at least this many tracks and ``faiss`` imports.

    Attributes
    ----------
    skipped : list of (str, str)
        Files :func:`build_catalog` could not read, with the reason; empty for loaded catalogues
        (their ``info["skipped"]`` keeps the list).
    """

    def __init__(self, embeddings: np.ndarray, tracks: list[dict[str, Any]], info: dict[str, Any],
                 ann_threshold: int = DEFAULT_ANN_THRESHOLD) -> None:
        embeddings = l2_normalise(embeddings)
        if embeddings.ndim != 2 or embeddings.shape[0] != len(tracks):
            raise CatalogError(f"embeddings of shape {embeddings.shape} do not match {len(tracks)} tracks")
        self.embeddings = embeddings
        self.tracks = tracks
        self.info = info
        self.ann_threshold = ann_threshold
        self.skipped: list[tuple[str, str]] = []
        #: Where the catalogue lives on disk (set by :meth:`load` and :meth:`save`).
        self.directory: Path | None = None
        self._ann: Any | None = None
        self._ann_checked = False
        # The index is loaded or built lazily; the lock keeps concurrent first queries from doing it twice.
        self._ann_lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.tracks)

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    @property
    def model_version(self) -> str:
        return str(self.info.get("model_version"))

    @property
    def uses_ann(self) -> bool:
        """Whether queries go through the HNSW index (builds or loads it on first use)."""
        return self._ann_index() is not None

    @classmethod
    def load(cls, directory: Path | str, ann_threshold: int = DEFAULT_ANN_THRESHOLD) -> Catalog:
        """Open a catalogue directory written by :meth:`save` / :func:`build_catalog`.

        Raises
        ------
        CatalogError
            The directory or one of its files is missing or inconsistent.
        """
        directory = Path(directory)
        embeddings, tracks, info = read_catalog(directory)
        catalog = cls(embeddings, tracks, info, ann_threshold)
        catalog.directory = directory
        return catalog

    def save(self, directory: Path | str) -> None:
        """Write the catalogue (and the HNSW index if one is in use) into ``directory``.

        Each file is written under a temporary name and renamed, so a reader (the daemon)
        never sees a half-written file; a stale ``ann.faiss`` is removed.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.info["n_tracks"] = len(self)
        self.info["embedding_dim"] = self.dim
        ann = self._ann_index()
        self.info["ann"] = hnsw_description(ANN_FILE) if ann is not None else None
        atomic_write(directory / EMBEDDINGS_FILE, lambda p: np.save(p, self.embeddings))
        atomic_write(directory / TRACKS_FILE, lambda p: p.write_text(json.dumps(self.tracks, indent=1)))
        if ann is not None:
            atomic_write(directory / ANN_FILE, lambda p: write_hnsw(ann, p))
        else:
            (directory / ANN_FILE).unlink(missing_ok=True)
        # catalog.json last: its presence with matching n_tracks marks a complete catalogue.
        atomic_write(directory / INFO_FILE, lambda p: p.write_text(json.dumps(self.info, indent=1)))
        self.directory = directory

    def check_model(self, model: GenreModel) -> None:
        """Raise :class:`CatalogError` unless ``model`` is the one the catalogue was built with.

        Embeddings of different models live in unrelated spaces, so comparing them would give
        confident nonsense rather than an error.
        """
        dim = model.spec.model_extra.get("embedding_dim") if model.spec.model_extra else None
        if model.version != self.model_version or (dim is not None and dim != self.dim):
            raise CatalogError(
                f"model mismatch: the catalogue was built with model version {self.model_version!r} "
                f"(embedding dim {self.dim}), but {model.path} is version {model.version!r}"
                f"{f' (dim {dim})' if dim is not None else ''}; rebuild the catalogue with "
                "`streamgenre index` or pass the catalogue's model with --model"
            )

    def _ann_index(self) -> Any | None:
        if self._ann_checked:
            return self._ann
        with self._ann_lock:
            if not self._ann_checked:
                self._ann = self._open_ann_index()
                self._ann_checked = True
        return self._ann

    def _open_ann_index(self) -> Any | None:
        if len(self) < self.ann_threshold:
            return None
        return open_hnsw(self.embeddings, self.directory / ANN_FILE if self.directory is not None else None)

    def query(self, embedding: np.ndarray, k: int = 10) -> list[tuple[int, float]]:
        """The ``k`` tracks most similar to one embedding.

        Parameters
        ----------
        embedding : np.ndarray, shape (D,)
            A track embedding (normalised here, so a raw mean of window embeddings is fine).
        k : int
            Number of neighbours (fewer if the catalogue is smaller).

        Returns
        -------
        list of (int, float)
            ``(row index, cosine similarity)``, most similar first; exact search breaks ties by
            row index.
        """
        query = l2_normalise(np.asarray(embedding, dtype=np.float32).reshape(-1))
        if query.shape[0] != self.dim:
            raise CatalogError(f"query embedding has dimension {query.shape[0]}, catalogue {self.dim}")
        k = min(k, len(self))
        if k <= 0:
            return []
        ann = self._ann_index()
        return search_hnsw(ann, query, k) if ann is not None else search_exact(self.embeddings, query, k)

    def neighbours(self, embeddings: np.ndarray, k: int = 5) -> list[dict[str, Any]]:
        """Catalogue tracks that sound most like a stretch of audio, as JSON-ready dicts.

        Meant for the live daemon: pass the window embeddings of a stream's recent audio (say
        the last 30 s); their mean, L2-normalised, is queried exactly as a track embedding is.

        Parameters
        ----------
        embeddings : np.ndarray, shape (n_windows, D) or (D,)
            Raw ``embedding`` outputs of the model, one row per window.
        k : int
            Number of neighbours.

        Returns
        -------
        list of dict
            ``{"path", "score", "genre", "label"}`` per neighbour, best first; ``score`` is the
            cosine similarity, ``genre`` the model's prediction for that track, ``label`` its
            known genre or None. Empty when ``embeddings`` has no rows.
        """
        embeddings = np.asarray(embeddings, dtype=np.float32)
        if embeddings.ndim == 2 and embeddings.shape[0] == 0:
            return []
        mean = embeddings.mean(axis=0) if embeddings.ndim == 2 else embeddings
        return [self.describe(i, score) for i, score in self.query(mean, k)]

    def describe(self, index: int, score: float) -> dict[str, Any]:
        """``{"path", "score", "genre", "label"}`` of row ``index`` with a similarity ``score``."""
        track = self.tracks[index]
        return {"path": track["path"], "score": round(float(score), 6), "genre": track["genre"],
                "label": track.get("label")}


def build_catalog(
    paths: Iterable[Path | str],
    model: GenreModel,
    out: Path | str,
    labels: Mapping[str, str] | None = None,
    progress: bool = True,
    batch_size: int = 64,
    ann_threshold: int = DEFAULT_ANN_THRESHOLD,
    max_windows: int | None = None,
) -> Catalog:
    """Embed every audio file under ``paths`` and write a catalogue to ``out``.

    Parameters
    ----------
    paths : iterable of Path or str
        Files and/or folders (see :func:`find_audio`).
    model : GenreModel
        The model whose embeddings are stored; its version is recorded in ``catalog.json``.
    out : Path or str
        Catalogue directory, created if needed; an existing catalogue there is replaced.
    labels : mapping of str to str, optional
        Ground-truth labels (see :func:`read_labels` and :func:`track_label`).
    progress : bool
        Show a tqdm progress bar on stderr.
    batch_size : int
        Windows per inference call.
    ann_threshold : int
        Build and save the HNSW index when the catalogue has at least this many tracks.
    max_windows : int, optional
        Windows per track (see :func:`embed_audio`); recorded in ``catalog.json`` so that
        queries can be embedded the same way.

    Returns
    -------
    Catalog
        Its :attr:`Catalog.skipped` lists the files that could not be decoded (also logged as
        warnings and stored in ``catalog.json``); they are left out, the rest is indexed.

    Raises
    ------
    FileNotFoundError
        A path does not exist.
    CatalogError
        No audio was found, or none of it could be read.
    """
    files = find_audio(paths)
    if not files:
        raise CatalogError(f"no audio files ({', '.join(AUDIO_EXTENSIONS)}) found")
    embeddings: list[np.ndarray] = []
    tracks: list[dict[str, Any]] = []
    skipped: list[tuple[str, str]] = []
    for path in tqdm(files, desc="indexing", unit="track", disable=not progress):
        try:
            track = embed_file(path, model, batch_size, max_windows)
        except (sf.LibsndfileError, RuntimeError, OSError, ValueError) as exc:
            # A corrupt or unsupported file must not abort a long indexing run; it is reported.
            skipped.append((str(path), f"{type(exc).__name__}: {exc}"))
            log.warning("skipped unreadable file %s: %s", path, exc)
            continue
        embeddings.append(track.embedding)
        tracks.append({
            "path": str(path),
            "duration_s": round(track.duration_s, 3),
            "n_windows": track.n_windows,
            "genre": model.labels[int(np.argmax(track.probs))],
            "probs": [round(float(p), 5) for p in track.probs],
            "label": track_label(path, model.labels, labels),
        })
    if skipped:
        log.warning("%d of %d files could not be read and were skipped", len(skipped), len(files))
    if not tracks:
        raise CatalogError(f"none of the {len(files)} audio files could be read")
    info = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "model_version": model.version,
        "model_path": str(model.path),
        "labels": list(model.labels),
        "embedding_dim": int(embeddings[0].shape[0]),
        "hop_s": model.spec.hop_s,
        "max_windows": max_windows,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "skipped": [{"path": p, "error": e} for p, e in skipped],
    }
    catalog = Catalog(np.stack(embeddings), tracks, info, ann_threshold)
    catalog.skipped = skipped
    catalog.save(out)
    return catalog
