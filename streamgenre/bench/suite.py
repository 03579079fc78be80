"""One ``streamgenre bench`` run: every measurement of every chosen model, sharing the machine's state."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from streamgenre.bench.backlog import measure_backlog, measure_transport
from streamgenre.bench.baseline import measure_baseline
from streamgenre.bench.ceiling import measure_ceiling
from streamgenre.bench.daemons import E2EConfig
from streamgenre.bench.e2e import measure_e2e
from streamgenre.bench.layout import make_layout, pinned_to
from streamgenre.bench.memory import measure_memory
from streamgenre.bench.models import model_paths
from streamgenre.bench.report import machine_info, over_ceiling
from streamgenre.bench.sweep import sweep
from streamgenre.config import SHIPPED_MODEL


def run_bench(args: argparse.Namespace) -> dict[str, Any]:
    shipped = Path(args.model_path) if args.model_path else SHIPPED_MODEL
    paths = model_paths(args.model, shipped)
    layout = make_layout(args.layout)
    results: dict[str, Any] = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": "streamgenre bench " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["bench"] else None,
        "machine": machine_info(),
        "options": {k: v for k, v in vars(args).items() if k != "handler"},
        "layout": layout.describe(),
        "models": {},
    }
    if not args.no_e2e:
        print(f"transport floor, {args.streams} streams x {args.seconds} s ...", flush=True)
        with pinned_to(layout.other_cpus):
            results["transport"] = measure_transport(
                E2EConfig(streams=args.streams, seconds=args.seconds, chunk_s=args.chunk_s, warmup_s=args.warmup,
                          partitions=args.partitions)
            )
    streams, ceiling_streams = args.streams, args.ceiling_streams or args.streams
    for name, path in paths.items():
        r: dict[str, Any] = {"path": str(path)}

        def ceiling(path: Path = path) -> dict[str, Any]:
            with pinned_to(layout.daemon_cpus):  # the ceiling stands for the daemon: on its cores
                return measure_ceiling(path, ceiling_streams, args.ceiling_seconds, args.chunk_s, args.workers,
                                       args.max_batch)

        print(f"[{name}] ceiling, {ceiling_streams} streams x {args.ceiling_seconds} s ...", flush=True)
        r["ceiling"] = ceiling()
        print(f"[{name}] baseline ...", flush=True)
        with pinned_to(layout.daemon_cpus):
            r["baseline"] = measure_baseline(path, args.baseline_seconds, args.max_batch)
        # Per CPU-second on both sides (robust to whatever else shares the machine): our in-process
        # features + batched inference vs per-window librosa + batch-1 inference, same model,
        # measured back to back.
        r["ours_over_baseline"] = round(
            r["ceiling"]["audio_s_per_cpu_s"] / r["baseline"]["audio_s_per_s_per_core"], 1
        )
        # The most any streaming pipeline could gain with this model (model + new-frame FFT only).
        r["bound_over_baseline"] = round(
            r["baseline"]["bound_audio_s_per_cpu_s"] / r["baseline"]["audio_s_per_s_per_core"], 1
        )
        print(f"[{name}] ours / baseline {r['ours_over_baseline']}x, bound {r['bound_over_baseline']}x", flush=True)
        base = E2EConfig(
            streams=streams,
            seconds=args.seconds,
            chunk_s=args.chunk_s,
            workers=args.workers,
            warmup_s=args.warmup,
            partitions=args.partitions,
            max_batch=args.max_batch,
            max_wait_ms=args.max_wait_ms,
            daemon_cpus=layout.daemon_cpus,
        )
        if not args.no_e2e:
            print(f"[{name}] end to end, {streams} streams x {args.seconds} s ...", flush=True)
            with pinned_to(layout.other_cpus):
                r["e2e"] = measure_e2e(path, base)
        if args.backlog_streams:
            print(f"[{name}] backlog, {args.backlog_streams} streams x {args.seconds} s ...", flush=True)
            with pinned_to(layout.other_cpus):
                r["backlog"] = measure_backlog(
                    path, E2EConfig(**{**base.__dict__, "streams": args.backlog_streams})
                )
        for held in args.memory_streams:
            print(f"[{name}] memory, {held} streams held, {args.memory_active} active ...", flush=True)
            with pinned_to(layout.daemon_cpus):
                r.setdefault("memory", []).append(
                    measure_memory(path, held, args.memory_active, args.chunk_s)
                )
        if "e2e" in r or "backlog" in r:
            # The VM's speed drifts (up to ~30% within an hour on a shared host), so the ceiling is
            # measured again after the broker runs and the ratios use the mean of both ends;
            # ceiling_drift (after / before, per CPU-s) says how far apart they were.
            print(f"[{name}] ceiling again ...", flush=True)
            r["ceiling_after"] = ceiling()
            r.update(over_ceiling(r))
        if args.sweep:
            print(f"[{name}] sweep ...", flush=True)
            with pinned_to(layout.other_cpus):
                r["sweep"] = sweep(path, base, args.sweep_start, args.sweep_limit, args.sweep_repeats)
        results["models"][name] = r
    return results
