"""Nearest-neighbour search over unit vectors: exact (numpy) or an HNSW graph (faiss, optional).

Search is exact (one matrix-vector product) below ``ann_threshold`` tracks (default 100 000,
about 10 ms a query at D = 400 on one core) and approximate above it, with an HNSW graph from
``faiss-cpu`` (the optional extra ``streamgenre[ann]``). Without faiss a large catalogue is still
searched, exactly, and a log line says so.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from streamgenre.model.similarity.storage import CatalogError

log = logging.getLogger(__name__)

#: Catalogues with at least this many tracks are searched with the ANN index when available.
DEFAULT_ANN_THRESHOLD = 100_000
#: HNSW parameters; see the benchmark in ``docs/similarity.md`` for why these values
#: (recall@10 0.997 against exact search on 200 000 low-rank 200-d vectors).
HNSW_M = 16
HNSW_EF_CONSTRUCTION = 200
HNSW_EF_SEARCH = 400


def load_faiss() -> Any | None:
    try:
        import faiss
    except ImportError:
        return None
    return faiss


def open_hnsw(embeddings: np.ndarray, saved: Path | None) -> Any | None:
    """The HNSW index of ``embeddings``: read from ``saved`` when that file exists, else built.

    None when faiss is not installed (logged: the caller searches exactly).

    Raises
    ------
    CatalogError
        The saved index does not match the embeddings.
    """
    faiss = load_faiss()
    if faiss is None:
        log.warning("faiss is not installed: searching %d tracks exactly (slower); "
                    "install the extra streamgenre[ann] (faiss-cpu) for the HNSW index", len(embeddings))
        return None
    n, dim = embeddings.shape
    if saved is not None and saved.is_file():
        index = faiss.read_index(str(saved))
    else:
        started = time.perf_counter()
        index = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        index.add(embeddings)
        log.info("built HNSW index over %d tracks in %.1f s", n, time.perf_counter() - started)
    if index.ntotal != n or index.d != dim:
        raise CatalogError(f"{saved} holds {index.ntotal} vectors of dimension {index.d}, "
                           f"the catalogue {n} of dimension {dim}: rebuild it")
    return index


def write_hnsw(index: Any, path: Path) -> None:
    load_faiss().write_index(index, str(path))


def hnsw_description(file_name: str) -> dict[str, Any]:
    """How ``catalog.json`` describes a saved index (its ``ann`` entry)."""
    return {"library": "faiss", "index": "IndexHNSWFlat", "file": file_name, "M": HNSW_M,
            "ef_construction": HNSW_EF_CONSTRUCTION, "ef_search": HNSW_EF_SEARCH}


def search_hnsw(index: Any, query: np.ndarray, k: int) -> list[tuple[int, float]]:
    """``(row, inner product)`` of ``query``'s ``k`` approximate nearest rows, best first."""
    # Per-call parameters instead of setting efSearch on the shared index: thread-safe.
    params = load_faiss().SearchParametersHNSW(efSearch=max(HNSW_EF_SEARCH, k))
    scores, rows = index.search(query[None], k, params=params)
    # faiss pads with -1 when the graph yields fewer than k results.
    return [(int(i), float(s)) for i, s in zip(rows[0], scores[0], strict=True) if i >= 0]


def search_exact(embeddings: np.ndarray, query: np.ndarray, k: int) -> list[tuple[int, float]]:
    """``(row, inner product)`` of ``query``'s ``k`` nearest rows, best first, ties by row."""
    scores = embeddings @ query
    top = np.argpartition(-scores, k - 1)[:k] if k < len(embeddings) else np.arange(len(embeddings))
    top = top[np.lexsort((top, -scores[top]))]
    return [(int(i), float(scores[i])) for i in top]
