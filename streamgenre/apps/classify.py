"""``streamgenre classify FILE|DIR...``: offline classification of a library (a back catalogue).

Each file goes through the same :class:`~streamgenre.stream.tracks.TrackClassifier` as an HTTP
upload: decoded by soundfile or ffmpeg, framed by the daemon's framer, its windows batched with
those of the files the other workers are framing. One line per file is appended to the output
as soon as the file is done (CSV or JSON Lines) and flushed, so an interrupted run loses at most
the files in flight; run it again with the same ``--out`` and it skips every file already there.
A file that cannot be decoded gets a line with its ``error`` (and is skipped on the next run).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any, TextIO

from tqdm import tqdm

from streamgenre.apps.errors import UsageError
from streamgenre.config import Settings

CSV_FIELDS = ["path", "genre", "confidence", "music_share", "duration_s", "windows", "model_version", "error"]


def done_paths(out: Path, as_json: bool) -> set[str]:
    """Paths already in an output file (empty when it does not exist yet)."""
    if not out.is_file():
        return set()
    with out.open(newline="") as handle:
        if as_json:
            return {json.loads(line)["path"] for line in handle if line.strip()}
        return {row["path"] for row in csv.DictReader(handle)}


class _Writer:
    def __init__(self, handle: TextIO, as_json: bool, new_file: bool) -> None:
        self.handle, self.as_json = handle, as_json
        self._csv = None if as_json else csv.DictWriter(handle, CSV_FIELDS, extrasaction="ignore")
        if self._csv is not None and new_file:
            self._csv.writeheader()

    def write(self, row: dict[str, Any]) -> None:
        if self._csv is None:
            self.handle.write(json.dumps(row) + "\n")
        else:
            self._csv.writerow(row)
        self.handle.flush()


def classify_files(settings: Settings, files: list[Path], workers: int) -> Iterator[dict[str, Any]]:
    """Classify ``files`` with ``workers`` threads sharing one model; yields a row per file as it finishes."""
    from streamgenre.apps.uploads import decode_path
    from streamgenre.model.contract import GenreModel
    from streamgenre.stream.content import ContentStage
    from streamgenre.stream.daemon import limit_native_threads
    from streamgenre.stream.metrics import Metrics
    from streamgenre.stream.tracks import TooShort, TrackClassifier
    from streamgenre.stream.wire import BadInput

    limit_native_threads()
    model = GenreModel(settings.model_path, threads=settings.ort_threads)
    classifier = TrackClassifier(model, settings.max_batch, settings.max_wait_ms, settings.hop_s,
                                 content=ContentStage(settings, model.recipe, Metrics()))

    def one(path: Path) -> dict[str, Any]:
        try:
            decoded = decode_path(path, settings.max_decoded_s, model.recipe.sample_rate)
            result = classifier.classify(decoded.first, decoded.more, decoded.sample_rate)
        except (BadInput, TooShort, OSError) as exc:
            return {"path": str(path), "error": str(exc)}
        return {"path": str(path), "genre": result["genre"], "confidence": result["confidence"],
                "music_share": result["states"].get("music", 0.0),
                "duration_s": round(decoded.duration_s, 3), "windows": result["windows"],
                "model_version": result["model_version"], "probabilities": result["probabilities"],
                "states": result["states"]}

    try:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="classify") as pool:
            futures = [pool.submit(one, path) for path in files]
            for future in as_completed(futures):
                yield future.result()
    finally:
        classifier.close()


def run_classify(args: argparse.Namespace, settings: Settings) -> int:
    from streamgenre.model.similarity import find_audio

    if args.workers < 1:
        raise UsageError("--workers must be at least 1")
    files = find_audio(args.paths)  # FileNotFoundError: one error line from cli.main
    out: Path | None = args.out
    skip = done_paths(out, args.json) if out is not None else set()
    todo = [path for path in files if str(path) not in skip]
    handle = out.open("a", newline="") if out is not None else sys.stdout
    failed = 0
    try:
        writer = _Writer(handle, args.json, new_file=out is None or handle.tell() == 0)
        progress = tqdm(total=len(todo), unit="file", disable=args.no_progress, file=sys.stderr,
                        desc=f"classify ({len(skip)} already done)" if skip else "classify")
        with progress:
            for row in classify_files(settings, todo, args.workers):
                failed += "error" in row
                writer.write(row)
                progress.update()
    finally:
        if out is not None:
            handle.close()
    if failed:
        print(f"streamgenre classify: {failed} of {len(todo)} files could not be classified (see 'error')",
              file=sys.stderr)
    return 1 if failed else 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "classify", help="classify audio files or folders offline (resumable)",
        description="Classify every audio file named or found (recursively) in the folders; one row per file. "
                    "With --out, rows are appended and files already in the output are skipped.",
    )
    parser.add_argument("paths", nargs="+", type=Path, metavar="FILE|DIR")
    fmt = parser.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="JSON Lines, with every genre's probability")
    fmt.add_argument("--csv", action="store_true", help="CSV (the default)")
    parser.add_argument("--out", type=Path, default=None, help="output file, appended to (default: stdout)")
    parser.add_argument("--workers", type=int, default=2, help="files decoded and framed in parallel (default 2)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(handler=run_classify)
