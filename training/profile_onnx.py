"""Where an ONNX model's CPU time goes: graph optimisation level, simplification, batch size.

``python -m training.profile_onnx model/genre_cnn.onnx model/fast/genre_cnn.onnx --out build/profile``

For each model: its operator counts (tf2onnx graphs carry NHWC<->NCHW ``Transpose`` nodes),
then windows per CPU-second (onnxruntime, one intra-op thread, random inputs of the contract's
shape) at every graph optimisation level, after ``onnxslim`` simplification (when installed),
of the graph onnxruntime saves after its own ``ORT_ENABLE_EXTENDED`` pass (portable across
CPUs, unlike ``ORT_ENABLE_ALL``'s layout-specific output), and at several batch sizes. All in
one process, one after another, so the figures compare; on a shared box repeat and compare
ratios. Prints one JSON object and writes it to ``<out>/profile.json``.
"""

from __future__ import annotations

import argparse
import collections
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import onnx
import onnxruntime as ort
from tqdm import tqdm

from streamgenre.model.contract import make_session, session_throughput

LEVELS = {
    "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def op_counts(path: Path) -> dict[str, int]:
    return dict(collections.Counter(n.op_type for n in onnx.load(str(path)).graph.node).most_common())


def saved_optimised(path: Path, out: Path, level: str = "extended") -> Path:
    """The graph onnxruntime runs after ``level``, written to ``out`` (the session is the writer)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = LEVELS[level]
    options.optimized_model_filepath = str(out)
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return out


def simplified(path: Path, out: Path) -> Path | None:
    """``onnxslim``'s simplification of the graph, or None when onnxslim is not installed."""
    try:
        import onnxslim
    except ImportError:
        return None
    onnx.save(onnxslim.slim(onnx.load(str(path))), str(out))
    return out


def profile(path: Path, out: Path, batch: int, batches: Sequence[int], seconds: float) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{path.parent.name}_{path.stem}"
    rate = {}
    jobs = [(f"level {name}", path, level, batch) for name, level in LEVELS.items()]
    jobs += [(f"batch {b}", path, LEVELS["all"], b) for b in batches if b != batch]
    jobs.append(("saved extended graph, then all", saved_optimised(path, out / f"{stem}.ort-extended.onnx"),
                 LEVELS["all"], batch))
    slim = simplified(path, out / f"{stem}.slim.onnx")
    if slim is not None:
        jobs.append(("onnxslim, then all", slim, LEVELS["all"], batch))
    for name, graph, level, size in tqdm(jobs, desc=f"profile {path}", unit="run"):
        rate[name] = round(session_throughput(make_session(graph, 1, level), size, seconds)["cpu"], 2)
    return {"model": str(path), "batch": batch, "op_counts": op_counts(path), "windows_per_cpu_s": rate}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.profile_onnx", description=__doc__.split("\n")[0])
    parser.add_argument("models", type=Path, nargs="+")
    parser.add_argument("--out", type=Path, default=Path("build/profile"))
    parser.add_argument("--batch", type=int, default=16, help="batch of the level comparisons (the daemon's max)")
    parser.add_argument("--batches", type=int, nargs="*", default=[1, 4, 64])
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args(argv)
    results = [profile(m, args.out, args.batch, args.batches, args.seconds) for m in args.models]
    text = json.dumps(results, indent=1)
    (args.out / "profile.json").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
