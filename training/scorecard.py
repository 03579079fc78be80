"""One model's scorecard: accuracy, calibration, level robustness, cost and the example tracks.

``python -m training.scorecard --model model/genre_cnn.onnx --name tagger``

writes ``model/report/<name>/report.json`` and ``model/report/<name>/confusion.png`` for any
contract model (ONNX + sidecar), so every model of the model card is measured by the same code
in the same kind of run; ``python -m training.scorecard --table`` prints the model card's table
from every ``model/report/*/report.json``.

Stages, each with a progress bar:

1. **gtzan-mini test** (50 clips): clip and window accuracy, macro F1 (clip level), ECE (10
   bins, window level) of the served (calibrated) probabilities and of the raw ones;
2. **levels**: clip/window accuracy of the same clips scaled by each ``--gains`` dB (the
   waveform times ``10^(g/20)`` before the front end), i.e. what a quiet stream costs;
3. **example tracks**: every labelled track of ``../shared/data/examples/labels.tsv`` (never
   trained on): predicted genre (mean of window probabilities), its confidence, the share of
   windows right;
4. **cost**: windows per CPU-second of the model alone (onnxruntime, 1 intra-op thread, batch
   ``--batch``), measured in this run; streams per core = that × the hop in seconds (one stream
   needs one window per hop), inference only — decoding, features and Kafka come on top
   (``docs/PERFORMANCE.md``). With ``--reference`` the paper CNN's cost is measured in the same
   run and the ratio reported.

A file that does not decode is skipped with a warning naming it and counted in the report
(``unreadable``), never a crash. Run it under ``nice`` on a shared box; figures name the host.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import warnings
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from tqdm import tqdm

from streamgenre.model.audio import load_audio
from streamgenre.model.contract import GenreModel, ModelError, calibrate, make_session, session_throughput
from streamgenre.model.features import clip_windows, window_starts, windows_from_frames
from training.calibration import expected_calibration_error
from training.data import (
    DEFAULT_CACHE,
    REPORT_DIR,
    Clip,
    DatasetNotFoundError,
    cached_log_mel,
    drop_unreadable,
    load_split,
)
from training.evaluate import clip_inputs, plot_confusion, score
from training.fit_head import EXAMPLES_ROOT, MINI_ROOT

DEFAULT_GAINS_DB = (-20.0, -40.0)


def host() -> str:
    """CPU model and the vector extensions that matter to onnxruntime, for the figures' context."""
    flags, name = set(), platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
    return f"{name} ({', '.join(f for f in wanted if f in flags) or 'no AVX2'})"


def clip_windows_at_gain(model: GenreModel, clip: Clip, gain_db: float, cache_dir: Path | None) -> np.ndarray:
    """The clip's model inputs with its waveform scaled by ``gain_db`` (cached per gain)."""
    if gain_db == 0.0:
        return clip_inputs(clip, model.recipe, model.hop_frames, cache_dir)
    factor = np.float32(10.0 ** (gain_db / 20.0))
    frames = cached_log_mel(clip.path, model.recipe, cache_dir, transform=lambda y, _sr: y * factor,
                            transform_key=f"gain{gain_db:+.1f}dB")
    return windows_from_frames(frames, model.recipe,
                               window_starts(frames.shape[1], model.recipe.n_frames, model.hop_frames))


def score_clips(model: GenreModel, clips: Sequence[Clip], gain_db: float, cache_dir: Path | None, desc: str,
                unreadable: list[str]) -> dict[str, Any]:
    """Accuracy, macro F1, confusion and ECE (served and raw probabilities) over ``clips``.

    A clip that fails to decode is skipped with a warning and added to ``unreadable``.
    """
    index = {label: i for i, label in enumerate(model.labels)}
    raw, window_true, clip_true, clip_probs = [], [], [], []
    for clip in tqdm(clips, desc=desc, unit="clip"):
        try:
            windows = clip_windows_at_gain(model, clip, gain_db, cache_dir)
        except (sf.LibsndfileError, OSError, RuntimeError, ValueError) as err:
            warnings.warn(f"skipping {clip.path}: does not decode ({err})", stacklevel=1)
            if str(clip.path) not in unreadable:
                unreadable.append(str(clip.path))
            continue
        probs, _ = model.predict(windows, batch_size=32, calibrated=False)
        if len(probs) == 0:
            continue
        raw.append(probs)
        window_true.append(np.full(len(probs), index[clip.genre]))
        clip_true.append(index[clip.genre])
        clip_probs.append(calibrate(probs, model.spec.temperature).mean(axis=0))
    raw_all, truth = np.concatenate(raw), np.concatenate(window_true)
    served = calibrate(raw_all, model.spec.temperature)
    result = score(model.labels, truth, served, np.array(clip_true), np.stack(clip_probs))
    result.pop("report_text")
    return {
        **result,
        "ece": round(expected_calibration_error(served, truth), 4),
        "ece_uncalibrated": round(expected_calibration_error(raw_all, truth), 4),
        "mean_confidence": round(float(served.max(axis=1).mean()), 4),
    }


def example_tracks(model: GenreModel, root: Path, unreadable: list[str]) -> list[dict[str, Any]]:
    """Every labelled track of ``labels.tsv``: prediction, confidence and share of windows right."""
    lines = (root / "labels.tsv").read_text().splitlines()
    header = lines[0].split("\t")
    rows = [dict(zip(header, line.split("\t"), strict=True)) for line in lines[1:]]
    out = []
    for row in tqdm([r for r in rows if r.get("genre")], desc="example tracks", unit="track"):
        path = root / row["file"]
        try:
            y, _ = load_audio(path, model.recipe.sample_rate)
        except (sf.LibsndfileError, OSError, RuntimeError) as err:
            warnings.warn(f"skipping {path}: does not decode ({err})", stacklevel=1)
            unreadable.append(str(path))
            continue
        probs, _ = model.predict(clip_windows(y, model.recipe, model.hop_frames), batch_size=32)
        if len(probs) == 0 or row["genre"] not in model.labels:
            out.append({"file": row["file"], "label": row["genre"], "predicted": None, "n_windows": len(probs)})
            continue
        mean = probs.mean(axis=0)
        out.append({
            "file": row["file"],
            "label": row["genre"],
            "predicted": model.labels[int(mean.argmax())],
            "confidence": round(float(mean.max()), 3),
            "windows_right": f"{int((probs.argmax(axis=1) == model.labels.index(row['genre'])).sum())}/{len(probs)}",
        })
    return out


def cost(model: GenreModel, batch: int, seconds: float, reference: bool) -> dict[str, Any]:
    """Windows per CPU-second of the model (and of the paper CNN with ``reference``), 1 thread."""
    stages = [("model", model.path)]
    if reference:
        from training.cnn import build_random_onnx  # torch: only when the reference is asked for

        reference_path = Path(DEFAULT_CACHE).parent / "reference" / "paper_cnn.onnx"
        reference_path.parent.mkdir(parents=True, exist_ok=True)
        build_random_onnx(reference_path)
        stages.append(("paper CNN (random init, same architecture as the student)", reference_path))
    rates = {}
    for name, path in tqdm(stages, desc="cost", unit="model"):
        rates[name] = session_throughput(make_session(path, 1), batch, seconds, outputs=["probs", "embedding"])
    per_cpu_s = rates["model"]["cpu"]
    figures: dict[str, Any] = {
        "windows_per_cpu_s": round(per_cpu_s, 1),
        "windows_per_s_wall": round(rates["model"]["wall"], 1),
        "cpu_ms_per_window": round(1000.0 / per_cpu_s, 3),
        "hop_s": round(model.spec.hop_seconds, 4),
        "streams_per_core_inference_only": round(per_cpu_s * model.spec.hop_seconds, 1),
        "batch": batch,
        "threads": 1,
    }
    if reference:
        ref = rates[stages[1][0]]["cpu"]
        figures["paper_cnn_windows_per_cpu_s"] = round(ref, 1)
        figures["cpu_per_window_vs_paper_cnn"] = round(ref / per_cpu_s, 2)
    return figures


STAGES = ("mini", "levels", "examples", "cost")


def scorecard(model_path: Path, name: str, data: Path = MINI_ROOT, examples: Path = EXAMPLES_ROOT,
              gains_db: Sequence[float] = DEFAULT_GAINS_DB, batch: int = 16, seconds: float = 5.0,
              reference: bool = False, cache_dir: Path | None = DEFAULT_CACHE, report_root: Path = REPORT_DIR,
              stages: Sequence[str] = STAGES) -> dict[str, Any]:
    """Measure one model; write ``<report_root>/<name>/report.json`` and ``confusion.png``.

    ``stages`` other than all of :data:`STAGES` only print (a partial report is not written).
    """
    model = GenreModel(model_path, threads=1)
    splits, dropped = drop_unreadable(load_split(data, "mini"))
    unreadable_files = [str(data / clip_id) for clip_id in dropped]
    for path in unreadable_files:
        warnings.warn(f"skipping {path}: does not decode", stacklevel=1)
    test = splits["test"]
    result: dict[str, Any] = {
        "name": name,
        "model": str(model_path),
        "version": model.version,
        "labels": model.labels,
        "temperature": model.spec.temperature,
        "level_normalisation": {"level_ref_db": model.recipe.level_ref_db,
                                "level_max_gain_db": model.recipe.level_max_gain_db},
    }
    if "mini" in stages:
        result["mini_test"] = score_clips(model, test, 0.0, cache_dir, "gtzan-mini test", unreadable_files)
    result["levels"] = {
        f"{gain:+.0f} dB": {k: v for k, v in score_clips(model, test, gain, cache_dir,
                                                         f"gtzan-mini test at {gain:+.0f} dB",
                                                         unreadable_files).items()
                            if k in ("clip_accuracy", "window_accuracy", "macro_f1", "ece")}
        for gain in (gains_db if "levels" in stages else ())
    }
    if "examples" in stages:
        result["examples"] = example_tracks(model, examples, unreadable_files) if examples.is_dir() else []
    if "cost" in stages:
        result["cost"] = cost(model, batch, seconds, reference)
    result["unreadable"] = {"count": len(unreadable_files), "files": unreadable_files}
    result["host"] = host()
    result["command"] = " ".join(["python -m training.scorecard", *sys.argv[1:]])
    result["measured_at"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if set(stages) != set(STAGES):
        return result
    out = report_root / name
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(result, indent=1) + "\n")
    mini = result["mini_test"]
    plot_confusion(mini["confusion"], model.labels,
                   f"{name} ({model.version}) — gtzan-mini test, clip accuracy {100 * mini['clip_accuracy']:.1f}%",
                   out / "confusion.png")
    return result


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def _times(ratio: float | None) -> str:
    return "–" if ratio is None else f"{ratio:,.2f}×"  # measured only with --reference


def table(report_root: Path = REPORT_DIR) -> str:
    """The model card's table: one row per ``<report_root>/*/report.json``, cheapest first."""
    reports = [json.loads(p.read_text()) for p in sorted(report_root.glob("*/report.json"))]
    reports.sort(key=lambda r: -r["cost"]["windows_per_cpu_s"])
    lines = [
        "| model (`model/report/<name>/`) | version | clip acc. | window acc. | macro F1 | ECE (raw → served) "
        "| clip acc. at −20 / −40 dB | examples right | windows per CPU-s | CPU per window vs paper CNN "
        "(same run) | streams per core (inference) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in reports:
        mini, levels = r["mini_test"], r.get("levels", {})
        right = sum(1 for e in r["examples"] if e.get("predicted") == e["label"])
        lines.append(
            f"| {r['name']} (`{r['model']}`) | {r['version']} | {_pct(mini['clip_accuracy'])} | "
            f"{_pct(mini['window_accuracy'])} | {mini['macro_f1']:.3f} | "
            f"{mini['ece_uncalibrated']:.3f} → {mini['ece']:.3f} | "
            f"{_pct(levels.get('-20 dB', {}).get('clip_accuracy'))} / "
            f"{_pct(levels.get('-40 dB', {}).get('clip_accuracy'))} | {right}/{len(r['examples'])} | "
            f"{r['cost']['windows_per_cpu_s']:,.0f} | {_times(r['cost'].get('cpu_per_window_vs_paper_cnn'))} | "
            f"{r['cost']['streams_per_core_inference_only']:,.0f} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.scorecard", description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, help="ONNX model; its sidecar .json must lie next to it")
    parser.add_argument("--name", help="report folder name under model/report/ (default: the model's folder)")
    parser.add_argument("--data", type=Path, default=MINI_ROOT, help="gtzan-mini root")
    parser.add_argument("--examples", type=Path, default=EXAMPLES_ROOT, help="folder with labels.tsv")
    parser.add_argument("--gains", type=float, nargs="*", default=list(DEFAULT_GAINS_DB), help="level tests, dB")
    parser.add_argument("--batch", type=int, default=16, help="windows per inference call for the cost")
    parser.add_argument("--seconds", type=float, default=5.0, help="timing per cost measurement")
    parser.add_argument("--reference", action="store_true", help="also time the paper CNN (needs torch)")
    parser.add_argument("--report-root", type=Path, default=REPORT_DIR)
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES),
                        help="a subset only prints its figures (no report is written)")
    parser.add_argument("--table", action="store_true", help="print the model card table and exit")
    args = parser.parse_args(argv)
    if args.table:
        print(table(args.report_root))
        return 0
    if args.model is None:
        parser.error("--model is required (or --table)")
    name = args.name or (args.model.stem if args.model.parent.name == "model" else args.model.parent.name)
    try:
        result = scorecard(args.model, name, args.data, args.examples, args.gains, args.batch, args.seconds,
                           args.reference, report_root=args.report_root, stages=args.stages)
    except (DatasetNotFoundError, FileNotFoundError, ModelError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if set(args.stages) != set(STAGES):
        print(json.dumps({k: result.get(k) for k in ("mini_test", "levels", "examples", "cost")}, indent=1))
        return 0
    mini = result["mini_test"]
    print(f"{name}: clip {_pct(mini['clip_accuracy'])}, window {_pct(mini['window_accuracy'])}, "
          f"macro F1 {mini['macro_f1']:.3f}, ECE {mini['ece_uncalibrated']:.3f} -> {mini['ece']:.3f}, "
          f"{result['cost']['windows_per_cpu_s']:.1f} windows per CPU-s; written to {args.report_root / name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
