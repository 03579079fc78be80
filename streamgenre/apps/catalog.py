"""``streamgenre index`` and ``streamgenre similar``: build a catalogue, find similar tracks.

:func:`register` adds both subcommands to the main parser's subparsers; each sets
``handler`` to ``handler(args, settings=None) -> exit code``, the convention of
:mod:`streamgenre.apps.cli`. Errors a user can fix (a missing catalogue, a bad path, a catalogue
built with another model) are raised (``UsageError``, ``CatalogError``, ``ModelError``,
``FileNotFoundError``); :func:`streamgenre.apps.cli.main` prints them as one line and exits 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

import soundfile as sf

from streamgenre.apps.errors import UsageError
from streamgenre.config import Settings
from streamgenre.model.contract import GenreModel
from streamgenre.model.similarity import (
    DEFAULT_ANN_THRESHOLD,
    Catalog,
    build_catalog,
    embed_file,
    read_labels,
)

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``index`` and ``similar`` subcommands to ``subparsers``."""
    index = subparsers.add_parser(
        "index", help="embed audio files into a similarity catalogue",
        description="Embed audio files (folders are searched recursively, following symlinks) with the "
                    "model and write a catalogue: embeddings.npy + tracks.json + catalog.json.",
    )
    index.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="audio files or folders")
    index.add_argument("--out", required=True, type=Path, help="catalogue directory to write")
    _model_arguments(index)
    index.add_argument("--labels", type=Path, metavar="TSV",
                       help="known genres, one 'path<TAB>label' per line (path absolute, relative to the "
                            "TSV, or a bare file name); default: the parent folder when it is a model label")
    index.add_argument("--batch-size", type=int, default=64, help="windows per inference call (default 64)")
    index.add_argument("--ann-threshold", type=int, default=DEFAULT_ANN_THRESHOLD,
                       help=f"build an HNSW index from this many tracks on (default {DEFAULT_ANN_THRESHOLD})")
    index.add_argument("--max-windows", type=int, default=None, metavar="N",
                       help="embed at most N windows per track, evenly spread (default: all); bounds the "
                            "time per long track, queries then use the same")
    index.add_argument("--no-progress", action="store_true", help="no progress bar")
    index.set_defaults(handler=run_index)

    similar = subparsers.add_parser(
        "similar", help="catalogue tracks most similar to an audio file",
        description="Rank the catalogue's tracks by cosine similarity of their embeddings to FILE's.",
    )
    similar.add_argument("file", type=Path, metavar="FILE", help="audio file to query with")
    similar.add_argument("--catalog", required=True, type=Path, help="catalogue directory")
    similar.add_argument("-k", type=int, default=10, help="number of neighbours (default 10)")
    similar.add_argument("--json", action="store_true",
                         help="print a JSON list of {rank, path, score, genre, label}, best first")
    _model_arguments(similar)
    similar.add_argument("--ann-threshold", type=int, default=DEFAULT_ANN_THRESHOLD,
                         help=f"use the HNSW index from this many tracks on "
                              f"(default {DEFAULT_ANN_THRESHOLD})")
    similar.set_defaults(handler=run_similar)


def _model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, default=None,
                        help="ONNX model (sidecar beside it); "
                             "default: the model of STREAMGENRE_MODEL (or STREAMGENRE_MODEL_PATH)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="onnxruntime threads (default: all cores)")


def _load_model(args: argparse.Namespace, settings: Settings | None) -> GenreModel:
    return GenreModel(args.model or (settings or Settings()).model_path, threads=args.threads)


def run_index(args: argparse.Namespace, settings: Settings | None = None) -> int:
    """Handler of ``streamgenre index``: build the catalogue, report skipped files."""
    try:
        labels = read_labels(args.labels) if args.labels else None
        model = _load_model(args, settings)
        catalog = build_catalog(args.paths, model, args.out, labels=labels, progress=not args.no_progress,
                                batch_size=args.batch_size, ann_threshold=args.ann_threshold,
                                max_windows=args.max_windows)
    except (OSError, ValueError) as exc:  # an unreadable labels file or output folder, a bad argument
        raise UsageError(str(exc)) from exc
    for path, reason in catalog.skipped:
        print(f"skipped: {path}: {reason}", file=sys.stderr)
    search = "HNSW index" if catalog.info.get("ann") else "exact search"
    print(f"indexed {len(catalog)} tracks into {args.out} ({search}, model {catalog.model_version}); "
          f"{len(catalog.skipped)} unreadable files skipped", file=sys.stderr)
    return 0


def run_similar(args: argparse.Namespace, settings: Settings | None = None) -> int:
    """Handler of ``streamgenre similar``: print FILE's nearest catalogue tracks."""
    if args.k < 1:
        raise UsageError(f"-k must be at least 1, got {args.k}")
    if not args.file.is_file():
        raise UsageError(f"no such audio file: {args.file}")
    catalog = Catalog.load(args.catalog, ann_threshold=args.ann_threshold)
    model = _load_model(args, settings)
    catalog.check_model(model)
    try:
        # Embed the query as the catalogue's tracks were embedded.
        query = embed_file(args.file, model, max_windows=catalog.info.get("max_windows"))
    except (sf.LibsndfileError, OSError) as exc:
        raise UsageError(f"cannot read {args.file}: {exc}") from exc
    results = [{"rank": rank, **catalog.describe(i, score)}
               for rank, (i, score) in enumerate(catalog.query(query.embedding, args.k), 1)]
    if args.json:
        print(json.dumps(results, indent=1))
        return 0
    width = max([len("genre"), *(len(r["genre"]) for r in results)])
    print(f"{'rank':>4}  {'score':>6}  {'genre':<{width}}  path")
    for r in results:
        print(f"{r['rank']:>4}  {r['score']:6.3f}  {r['genre']:<{width}}  {r['path']}")
    return 0
