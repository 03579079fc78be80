"""Track embeddings, an on-disk catalogue of them, and nearest-neighbour search.

A *track embedding* is the mean of the model's per-window ``embedding`` outputs over the whole
track, L2-normalised, so the cosine similarity of two tracks is the dot product of their
embeddings. The windows are cut by :func:`streamgenre.model.features.clip_windows` with the model's
own hop, exactly as training and the daemon cut them.

A :class:`Catalog` is a directory (format in ``docs/similarity.md``)::

    catalog/
        embeddings.npy   float32 [N, D], rows L2-normalised, row i = tracks[i]
        tracks.json      [{"path", "duration_s", "n_windows", "genre", "probs", "label"}, ...]
        catalog.json     {"format", "format_version", "model_version", "embedding_dim", ...}
        ann.faiss        optional HNSW index, only for catalogues of >= ann_threshold tracks

Search is exact (one matrix-vector product) below ``ann_threshold`` tracks (default 100 000,
about 10 ms a query at D = 400 on one core) and approximate above it, with an HNSW graph from
``faiss-cpu`` (the optional extra ``streamgenre[ann]``). Without faiss a large catalogue is still
searched, exactly, and a log line says so.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from tqdm import tqdm

from streamgenre.model.audio import load_audio
from streamgenre.model.contract import GenreModel
from streamgenre.model.features import clip_windows

log = logging.getLogger(__name__)

#: File extensions that :func:`find_audio` picks up inside folders (case-insensitive).
AUDIO_EXTENSIONS: tuple[str, ...] = (".wav", ".flac", ".ogg", ".mp3", ".au", ".aiff", ".aif")
#: Catalogues with at least this many tracks are searched with the ANN index when available.
DEFAULT_ANN_THRESHOLD = 100_000
#: HNSW parameters; see the benchmark in ``docs/similarity.md`` for why these values
#: (recall@10 0.997 against exact search on 200 000 low-rank 200-d vectors).
HNSW_M = 16
HNSW_EF_CONSTRUCTION = 200
HNSW_EF_SEARCH = 400

FORMAT_NAME = "streamgenre-catalog"
FORMAT_VERSION = 1
EMBEDDINGS_FILE = "embeddings.npy"
TRACKS_FILE = "tracks.json"
INFO_FILE = "catalog.json"
ANN_FILE = "ann.faiss"


class CatalogError(RuntimeError):
    """A catalogue is missing, malformed, empty, or does not belong to the model in use."""


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


def find_audio(paths: Iterable[Path | str]) -> list[Path]:
    """Audio files named directly or found recursively in folders.

    Parameters
    ----------
    paths : iterable of Path or str
        Files (taken as they are, whatever their extension) or folders (searched recursively,
        following symlinks, for files with an extension of :data:`AUDIO_EXTENSIONS`).

    Returns
    -------
    list of Path
        Absolute paths (symlinks kept as named, not resolved), each once, in the order given,
        folders' contents sorted.

    Raises
    ------
    FileNotFoundError
        A path does not exist.
    """
    found: dict[str, Path] = {}
    for given in paths:
        path = Path(os.path.abspath(given))
        if path.is_file():
            found.setdefault(str(path), path)
        elif path.is_dir():
            for file in _walk(path):
                found.setdefault(str(file), file)
        else:
            raise FileNotFoundError(f"no such file or folder: {given}")
    return list(found.values())


def _walk(root: Path) -> list[Path]:
    out: list[Path] = []
    # Real paths of folders already entered: a symlink pointing to an ancestor would otherwise loop.
    seen: set[str] = set()
    for folder, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs.sort()
        out.extend(Path(folder) / name for name in sorted(files)
                   if Path(name).suffix.lower() in AUDIO_EXTENSIONS and (Path(folder) / name).is_file())
    return out


def read_labels(tsv: Path | str) -> dict[str, str]:
    """Read a label mapping from a tab-separated file.

    Two layouts are accepted: headerless ``path<TAB>label`` lines, or a header row naming a
    ``path`` (or ``file``) column and a ``label`` (or ``genre``) column among others, as in
    ``../shared/data/examples/labels.tsv``. Blank lines and lines starting with ``#`` are
    skipped; rows with an empty label give no label. A path is absolute, relative to the TSV's
    folder, or a bare file name (then it matches a track of that name in any folder).

    Returns
    -------
    dict of str to str
        Keys are absolute paths, or bare file names as written.

    Raises
    ------
    ValueError
        A row has no path or too few columns.
    """
    tsv = Path(tsv)
    rows = [(number, line.split("\t")) for number, line in enumerate(tsv.read_text().splitlines(), 1)
            if line.strip() and not line.startswith("#")]
    path_col, label_col = 0, 1
    if rows:
        header = [cell.strip().lower() for cell in rows[0][1]]
        path_names = [i for i, name in enumerate(header) if name in ("path", "file")]
        label_names = [i for i, name in enumerate(header) if name in ("label", "genre")]
        if path_names and label_names:
            path_col, label_col = path_names[0], label_names[0]
            rows = rows[1:]
    mapping: dict[str, str] = {}
    for number, cells in rows:
        if len(cells) <= max(path_col, label_col) or not cells[path_col].strip():
            row = "\t".join(cells)
            raise ValueError(f"{tsv}:{number}: expected 'path<TAB>label' (or a header naming path and "
                             f"label columns), got {row!r}")
        path, label = cells[path_col].strip(), cells[label_col].strip()
        if label:
            key = path if os.sep not in path else os.path.abspath(tsv.parent / path)
            mapping[key] = label
    return mapping


def track_label(path: Path, known_labels: Sequence[str],
                mapping: Mapping[str, str] | None = None) -> str | None:
    """Ground-truth label of a track, if any.

    An entry of ``mapping`` (from :func:`read_labels`, by absolute path then file name) wins;
    otherwise the parent folder's name when it is one of ``known_labels`` (the GTZAN layout
    ``<genre>/<clip>``); otherwise None.
    """
    if mapping:
        label = mapping.get(str(path), mapping.get(path.name))
        if label is not None:
            return label
    return path.parent.name if path.parent.name in known_labels else None


def _load_faiss() -> Any | None:
    try:
        import faiss
    except ImportError:
        return None
    return faiss


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
        if not directory.is_dir():
            raise CatalogError(f"catalogue not found: {directory} (build one with `streamgenre index`)")
        required = (EMBEDDINGS_FILE, TRACKS_FILE, INFO_FILE)
        missing = [name for name in required if not (directory / name).is_file()]
        if missing:
            raise CatalogError(f"{directory} is not a catalogue: missing {', '.join(missing)}")
        try:
            info = json.loads((directory / INFO_FILE).read_text())
            tracks = json.loads((directory / TRACKS_FILE).read_text())
            embeddings = np.load(directory / EMBEDDINGS_FILE)
        except (ValueError, OSError) as exc:
            raise CatalogError(f"cannot read catalogue {directory}: {exc}") from exc
        if info.get("format") != FORMAT_NAME or info.get("format_version") != FORMAT_VERSION:
            raise CatalogError(f"{directory}: unsupported catalogue format "
                               f"{info.get('format')!r} v{info.get('format_version')}")
        if info.get("n_tracks") != len(tracks):
            raise CatalogError(f"{directory}: catalog.json says {info.get('n_tracks')} tracks, tracks.json has "
                               f"{len(tracks)} (interrupted or concurrent rewrite? rebuild it)")
        if embeddings.ndim != 2 or embeddings.shape[1] != info.get("embedding_dim"):
            raise CatalogError(f"{directory}: embeddings {embeddings.shape} disagree with "
                               f"embedding_dim {info.get('embedding_dim')}")
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
        self.info["ann"] = ({"library": "faiss", "index": "IndexHNSWFlat", "file": ANN_FILE, "M": HNSW_M,
                             "ef_construction": HNSW_EF_CONSTRUCTION, "ef_search": HNSW_EF_SEARCH}
                            if ann is not None else None)
        _atomic_write(directory / EMBEDDINGS_FILE, lambda p: np.save(p, self.embeddings))
        _atomic_write(directory / TRACKS_FILE, lambda p: p.write_text(json.dumps(self.tracks, indent=1)))
        if ann is not None:
            _atomic_write(directory / ANN_FILE, lambda p: _load_faiss().write_index(ann, str(p)))
        else:
            (directory / ANN_FILE).unlink(missing_ok=True)
        # catalog.json last: its presence with matching n_tracks marks a complete catalogue.
        _atomic_write(directory / INFO_FILE, lambda p: p.write_text(json.dumps(self.info, indent=1)))
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
        faiss = _load_faiss()
        if faiss is None:
            log.warning("faiss is not installed: searching %d tracks exactly (slower); "
                        "install the extra streamgenre[ann] (faiss-cpu) for the HNSW index", len(self))
            return None
        saved = self.directory / ANN_FILE if self.directory is not None else None
        if saved is not None and saved.is_file():
            index = faiss.read_index(str(saved))
        else:
            started = time.perf_counter()
            index = faiss.IndexHNSWFlat(self.dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
            index.add(self.embeddings)
            log.info("built HNSW index over %d tracks in %.1f s", len(self), time.perf_counter() - started)
        if index.ntotal != len(self) or index.d != self.dim:
            raise CatalogError(f"{saved} holds {index.ntotal} vectors of dimension {index.d}, "
                               f"the catalogue {len(self)} of dimension {self.dim}: rebuild it")
        return index

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
        if ann is not None:
            # Per-call parameters instead of setting efSearch on the shared index: thread-safe.
            params = _load_faiss().SearchParametersHNSW(efSearch=max(HNSW_EF_SEARCH, k))
            scores, rows = ann.search(query[None], k, params=params)
            # faiss pads with -1 when the graph yields fewer than k results.
            return [(int(i), float(s)) for i, s in zip(rows[0], scores[0], strict=True) if i >= 0]
        scores = self.embeddings @ query
        top = np.argpartition(-scores, k - 1)[:k] if k < len(self) else np.arange(len(self))
        top = top[np.lexsort((top, -scores[top]))]
        return [(int(i), float(scores[i])) for i in top]

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


def _atomic_write(path: Path, write: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp{path.suffix}")
    write(tmp)
    tmp.replace(path)


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
