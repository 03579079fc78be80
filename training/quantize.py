"""What would make a served model faster, measured: graph optimisation levels, batch size, static int8.

Issue 6 asks what would lift the shipped model's throughput. Dynamic int8 (weights only) made the
musicnn taggers ~3x *slower* (ConvInteger has no fast CPU kernel); this is the other int8 route:
static QDQ quantisation (QLinearConv after onnxruntime's fusion) with activation ranges calibrated
on training windows. It is worth shipping only if it is faster *and* keeps the held-out accuracy,
so the script reports both, for the fp32 model and its int8 copy, in one run, next to the
fp32 model's speed at each onnxruntime graph optimisation level and batch size::

    python -m training.quantize --model model/genre_cnn.onnx --data ../shared/data/gtzan-mini

Calibration uses windows of the ``mini_train`` clips only; accuracy is on ``mini_test``. The int8
model and its sidecar are written to ``--out`` (not to ``model/``: serving it is a decision that
these figures inform), with the figures in ``<out>/quantization.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

from streamgenre.model.contract import GenreModel, ModelError, make_session, session_throughput
from training.data import DatasetNotFoundError, drop_unreadable, load_split
from training.evaluate import REPO, clip_inputs, evaluate_onnx

DEFAULT_MINI = REPO.parent / "shared" / "data" / "gtzan-mini"


class _Windows(CalibrationDataReader):
    """Feeds calibration windows to onnxruntime's quantiser, a small batch at a time."""

    def __init__(self, windows: np.ndarray, input_name: str, batch: int = 8) -> None:
        self._batches = iter([{input_name: windows[i : i + batch]} for i in range(0, len(windows), batch)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def calibration_windows(model: GenreModel, data: Path, n_windows: int, seed: int = 0) -> np.ndarray:
    """``n_windows`` model inputs drawn evenly from the ``mini_train`` clips (never from test)."""
    splits, _ = drop_unreadable(load_split(data, "mini"))
    per_clip = [clip_inputs(clip, model.recipe, model.hop_frames) for clip in splits["train"]]
    windows = np.concatenate([w for w in per_clip if len(w)])
    rng = np.random.default_rng(seed)
    return windows[rng.choice(len(windows), size=min(n_windows, len(windows)), replace=False)]


LEVELS = {
    "disable_all": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def windows_per_second(path: Path, batch: int = 16, seconds: float = 8.0, level: str = "all") -> float:
    """Single-threaded windows per CPU-second, as one daemon worker runs the model (``ort_threads=1``)."""
    return session_throughput(make_session(path, 1, LEVELS[level]), batch, seconds)["cpu"]


def quantize(model_path: Path, data: Path, out: Path, n_calibration: int) -> dict[str, Any]:
    """Quantise, then measure both models; returns the figures written to ``quantization.json``."""
    model = GenreModel(model_path, threads=0)
    out.mkdir(parents=True, exist_ok=True)
    int8_path = out / f"{model_path.stem}.int8.onnx"
    calibration = calibration_windows(model, data, n_calibration)
    quantize_static(
        str(model_path), str(int8_path), _Windows(calibration, model.session.get_inputs()[0].name),
        quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
        per_channel=True,
    )
    sidecar = json.loads(model_path.with_suffix(".json").read_text())
    sidecar["version"] = f"{sidecar.get('version', model_path.stem)}-int8-static"
    int8_path.with_suffix(".json").write_text(json.dumps(sidecar, indent=2) + "\n")
    test = drop_unreadable(load_split(data, "mini"))[0]["test"]
    figures: dict[str, Any] = {
        "calibration_windows": len(calibration),
        "test_clips": len(test),
        "fp32_windows_per_s_by_graph_optimisation": {
            level: round(windows_per_second(model_path, level=level), 2) for level in LEVELS
        },
        "fp32_windows_per_s_by_batch": {
            batch: round(windows_per_second(model_path, batch=batch), 2) for batch in (1, 4, 16, 64)
        },
    }
    predictions = {}
    for name, path in (("fp32", model_path), ("int8_static", int8_path)):
        result = evaluate_onnx(path, test, progress=False)
        predictions[name] = [c["predicted"] for c in result["clips"]]
        figures[name] = {
            "windows_per_s_1_thread": round(windows_per_second(path), 2),
            "clip_accuracy": round(result["clip_accuracy"], 4),
            "window_accuracy": round(result["window_accuracy"], 4),
            "bytes": path.stat().st_size,
        }
    agree = np.mean([a == b for a, b in zip(predictions["fp32"], predictions["int8_static"], strict=True)])
    figures["clip_top1_agreement"] = round(float(agree), 4)
    figures["speedup"] = round(
        figures["int8_static"]["windows_per_s_1_thread"] / figures["fp32"]["windows_per_s_1_thread"], 3
    )
    (out / "quantization.json").write_text(json.dumps(figures, indent=2) + "\n")
    return figures


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.quantize", description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=REPO / "model" / "genre_cnn.onnx")
    parser.add_argument("--data", type=Path, default=DEFAULT_MINI, help="gtzan-mini root")
    parser.add_argument("--out", type=Path, default=REPO / "build" / "quantized")
    parser.add_argument("--calibration-windows", type=int, default=128)
    args = parser.parse_args(argv)
    try:
        figures = quantize(args.model, args.data, args.out, args.calibration_windows)
    except (DatasetNotFoundError, FileNotFoundError, ModelError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
