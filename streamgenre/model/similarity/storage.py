"""The catalogue on disk: its files, their format version, and how it is read and written.

A catalogue is a directory (format in ``docs/similarity.md``)::

    catalog/
        embeddings.npy   float32 [N, D], rows L2-normalised, row i = tracks[i]
        tracks.json      [{"path", "duration_s", "n_windows", "genre", "probs", "label"}, ...]
        catalog.json     {"format", "format_version", "model_version", "embedding_dim", ...}
        ann.faiss        optional HNSW index, only for catalogues of >= ann_threshold tracks
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

FORMAT_NAME = "streamgenre-catalog"
FORMAT_VERSION = 1
EMBEDDINGS_FILE = "embeddings.npy"
TRACKS_FILE = "tracks.json"
INFO_FILE = "catalog.json"
ANN_FILE = "ann.faiss"


class CatalogError(RuntimeError):
    """A catalogue is missing, malformed, empty, or does not belong to the model in use."""


def read_catalog(directory: Path) -> tuple[np.ndarray, list[dict[str, Any]], dict[str, Any]]:
    """Embeddings, tracks and info of a catalogue directory (written by ``Catalog.save``).

    Raises
    ------
    CatalogError
        The directory or one of its files is missing or inconsistent.
    """
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
    return embeddings, tracks, info


def atomic_write(path: Path, write: Callable[[Path], Any]) -> None:
    """Write through ``write`` under a temporary name, then rename: a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp{path.suffix}")
    write(tmp)
    tmp.replace(path)
