"""Benchmark the ANN libraries the similarity catalogue could use (figures in ``docs/similarity.md``).

    python -m training.ann_benchmark

builds hnswlib and faiss-cpu indexes over 200 000 unit vectors of dimension 200 and measures
build time, single-query latency on one thread and recall@10 against exact search, on three
kinds of data (:func:`_benchmark_data`); results go to ``model/report/similarity_ann_benchmark.json``.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from streamgenre.model.similarity import l2_normalise
from training.data import REPORT_DIR

#: Data sets of the ANN benchmark (see :func:`_benchmark_data`).
BENCH_KINDS: tuple[str, ...] = ("random", "lowrank", "clustered")
#: Search-time beam widths (HNSW ``ef``) measured by the ANN benchmark.
EF_VALUES: tuple[int, ...] = (50, 100, 200, 400, 1600)


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(
        np.mean([len(set(f.tolist()) & set(t.tolist())) / truth.shape[1] for f, t in zip(found, truth, strict=True)])
    )


def _benchmark_data(
    kind: str, n: int, dim: int, n_queries: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    if kind == "random":
        return l2_normalise(rng.normal(size=(n, dim))), l2_normalise(rng.normal(size=(n_queries, dim)))
    if kind == "lowrank":
        # The shipped model's window embeddings have 90 % of their variance in ~37 of 400 principal
        # components (gtzan-mini): a 32-d latent Gaussian mapped linearly into `dim`, plus isotropic
        # noise carrying 10 % of the variance, mimics that.
        mixing = rng.normal(size=(32, dim))
        sigma = np.sqrt(32 / 9)
        return tuple(
            l2_normalise(rng.normal(size=(m, 32)) @ mixing + sigma * rng.normal(size=(m, dim))) for m in (n, n_queries)
        )
    # "clustered": 1000 well-separated Gaussian clusters (an easy case).
    centres = rng.normal(size=(1000, dim))
    base = centres[rng.integers(0, 1000, n)] + 0.5 * rng.normal(size=(n, dim))
    queries = centres[rng.integers(0, 1000, n_queries)] + 0.5 * rng.normal(size=(n_queries, dim))
    return l2_normalise(base), l2_normalise(queries)


def _timed_queries(search: Any, queries: np.ndarray) -> tuple[np.ndarray, float]:
    started = time.perf_counter()
    found = np.vstack([search(q[None]) for q in queries])
    return found, (time.perf_counter() - started) / len(queries) * 1e3


def ann_benchmark(
    n: int = 200_000,
    dim: int = 200,
    n_queries: int = 1000,
    kinds: Sequence[str] = ("random",),
    build_threads: int = 2,
    seed: int = 0,
) -> dict[str, Any]:
    """Build time, one-thread single-query latency and recall@10 of exact, hnswlib and faiss search."""
    import faiss
    import hnswlib

    k = 10
    rng = np.random.default_rng(seed)
    out: dict[str, Any] = {
        "n": n,
        "dim": dim,
        "n_queries": n_queries,
        "k": k,
        "build_threads": build_threads,
        "hnswlib": importlib.metadata.version("hnswlib"),
        "faiss": faiss.__version__,
        "results": {},
    }
    for kind in kinds:
        base, queries = _benchmark_data(kind, n, dim, n_queries, rng)
        rows: list[dict[str, Any]] = []
        truth = np.argsort(-(queries @ base.T), axis=1)[:, :k]

        def exact(q: np.ndarray, base: np.ndarray = base) -> np.ndarray:
            s = base @ q[0]
            top = np.argpartition(-s, k)[:k]
            return top[np.argsort(-s[top])]

        found, ms = _timed_queries(exact, queries[:200])
        rows.append({"method": "exact (numpy)", "params": "", "build_s": 0.0, "query_ms": ms, "recall_at_10": 1.0})

        index = hnswlib.Index(space="ip", dim=dim)
        started = time.perf_counter()
        index.init_index(max_elements=n, ef_construction=200, M=16, random_seed=seed)
        index.add_items(base, np.arange(n), num_threads=build_threads)
        build = time.perf_counter() - started
        index.set_num_threads(1)
        for ef in EF_VALUES:
            index.set_ef(ef)
            found, ms = _timed_queries(lambda q, index=index: index.knn_query(q, k=k)[0], queries)
            rows.append(
                {
                    "method": "hnswlib HNSW",
                    "params": f"M=16 efC=200 ef={ef}",
                    "build_s": build,
                    "query_ms": ms,
                    "recall_at_10": _recall(found, truth),
                }
            )

        faiss.omp_set_num_threads(build_threads)
        fh = faiss.IndexHNSWFlat(dim, 16, faiss.METRIC_INNER_PRODUCT)
        fh.hnsw.efConstruction = 200
        started = time.perf_counter()
        fh.add(base)
        build = time.perf_counter() - started
        faiss.omp_set_num_threads(1)
        for ef in EF_VALUES:
            fh.hnsw.efSearch = ef
            found, ms = _timed_queries(lambda q, fh=fh: fh.search(q, k)[1], queries)
            rows.append(
                {
                    "method": "faiss IndexHNSWFlat",
                    "params": f"M=16 efC=200 ef={ef}",
                    "build_s": build,
                    "query_ms": ms,
                    "recall_at_10": _recall(found, truth),
                }
            )

        faiss.omp_set_num_threads(build_threads)
        nlist = 1024
        ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        started = time.perf_counter()
        ivf.train(base)
        ivf.add(base)
        build = time.perf_counter() - started
        faiss.omp_set_num_threads(1)
        for nprobe in (16, 64, 256):
            ivf.nprobe = nprobe
            found, ms = _timed_queries(lambda q, ivf=ivf: ivf.search(q, k)[1], queries)
            rows.append(
                {
                    "method": "faiss IndexIVFFlat",
                    "params": f"nlist={nlist} nprobe={nprobe}",
                    "build_s": build,
                    "query_ms": ms,
                    "recall_at_10": _recall(found, truth),
                }
            )
        for row in rows:
            print(
                f"{kind:9s} {row['method']:20s} {row['params']:22s} build {row['build_s']:7.1f} s  "
                f"query {row['query_ms']:7.3f} ms  recall@10 {row['recall_at_10']:.3f}",
                file=sys.stderr,
            )
        out["results"][kind] = rows
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.ann_benchmark", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=REPORT_DIR, help="report folder (default model/report)")
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=200)
    parser.add_argument(
        "--kinds",
        nargs="+",
        default=list(BENCH_KINDS),
        choices=BENCH_KINDS,
        help="data sets to run; results of other data sets already in the JSON are kept",
    )
    args = parser.parse_args(argv)
    result = ann_benchmark(args.n, args.dim, kinds=args.kinds)
    path = args.out / "similarity_ann_benchmark.json"
    if path.is_file():
        # Each data set takes minutes on 2 cores: keep earlier data sets of the same size.
        previous = json.loads(path.read_text())
        if (previous["n"], previous["dim"]) == (result["n"], result["dim"]):
            result["results"] = {**previous["results"], **result["results"]}
    args.out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
