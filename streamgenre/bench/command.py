"""``streamgenre bench``: its arguments, and writing the result file."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from streamgenre.bench.layout import LAYOUTS
from streamgenre.bench.models import MODEL_CHOICES
from streamgenre.bench.report import table
from streamgenre.bench.suite import run_bench
from streamgenre.config import DEFAULT_CHUNK_S, Settings

RESULTS_DIR = Path(__file__).resolve().parents[2] / "benchmarks" / "results"

def cmd_bench(args: argparse.Namespace, settings: Settings) -> int:
    import logging

    logging.getLogger("kafka").setLevel(logging.WARNING)
    if args.quick:
        args.streams, args.seconds, args.warmup = min(args.streams, 4), 3.0, 4.0
        args.ceiling_streams, args.ceiling_seconds, args.baseline_seconds = 4, 4.0, 0.3
        args.workers = 1
    results = run_bench(args)
    out_dir = Path(args.out) if args.out else RESULTS_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"bench-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{args.model}.json"
    results["table"] = table(results)
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(results["table"])
    print(f"written {path}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser(
        "bench", help="benchmark: compute ceiling, end to end on the real broker, paper baseline"
    )
    bench.add_argument(
        "--model", choices=MODEL_CHOICES, default="both",
        help="served: the daemon's default model (Settings().model_path); both: cnn + shipped",
    )
    bench.add_argument("--model-path", default=None, help="shipped model (default: model/genre_cnn.onnx)")
    bench.add_argument("--streams", type=int, default=500, help="concurrent streams of the end-to-end run")
    bench.add_argument("--seconds", type=float, default=30.0, help="measured seconds of the end-to-end run")
    bench.add_argument("--warmup", type=float, default=8.0, help="seconds before measuring (first windows)")
    bench.add_argument("--chunk-s", type=float, default=DEFAULT_CHUNK_S, help="seconds of audio per chunk")
    bench.add_argument("--workers", type=int, default=2, help="daemon processes in one consumer group")
    bench.add_argument(
        "--layout", choices=LAYOUTS, default="shared",
        help="pinned: the daemon processes, the ceiling and the baseline on the last CPU, broker + producer "
        "+ this process on the others (os.sched_setaffinity; recorded in the JSON)",
    )
    bench.add_argument("--partitions", type=int, default=8)
    bench.add_argument("--max-batch", type=int, default=Settings.model_fields["max_batch"].default)
    bench.add_argument("--max-wait-ms", type=float, default=Settings.model_fields["max_wait_ms"].default)
    bench.add_argument("--ceiling-streams", type=int, default=None, help="default: --streams")
    bench.add_argument("--ceiling-seconds", type=float, default=10.0, help="audio seconds per stream")
    bench.add_argument("--baseline-seconds", type=float, default=5.0)
    bench.add_argument("--no-e2e", action="store_true", help="skip the end-to-end run")
    bench.add_argument("--sweep", action="store_true", help="search the largest real-time S")
    bench.add_argument(
        "--backlog-streams", type=int, default=0,
        help="also measure the daemons draining a pre-produced backlog of this many streams x --seconds",
    )
    bench.add_argument(
        "--memory-streams", type=int, nargs="*", default=[],
        help="also measure RSS and state per stream with this many streams held (each count in turn, "
        "in a process of its own), e.g. 1000 10000",
    )
    bench.add_argument("--memory-active", type=int, default=100,
                       help="of the streams held, how many keep receiving audio in the memory run")
    bench.add_argument("--sweep-start", type=int, default=125)
    bench.add_argument("--sweep-limit", type=int, default=4000)
    bench.add_argument(
        "--sweep-repeats", type=int, default=1, help="runs per sweep step; a step passes when most of them pass"
    )
    bench.add_argument("--quick", action="store_true", help="tiny settings for the CI smoke test")
    bench.add_argument("--out", default=None, help="results folder (default: benchmarks/results)")
    bench.set_defaults(handler=cmd_bench)
