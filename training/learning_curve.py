"""The learning curve of distillation: gtzan-mini test accuracy vs hours of corpus audio used.

``python -m training.learning_curve build/distill/curve_* --out model/report/learning_curve.json``
collects the ``report.json`` of runs of ``training.distill_scale --hours H`` or
``training.distill_offline --hours H`` (same time budget each), sorted by the hours actually used,
and prints a Markdown table for the model card. "Examples" are the crops the on-the-fly generator
made (distill_scale) or the crops the trainer drew from the cached views (distill_offline).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def collect(run_dirs: list[Path]) -> list[dict[str, object]]:
    """One row per finished run (a run without ``report.json`` is reported as missing, not dropped)."""
    rows = []
    for run in run_dirs:
        path = run / "report.json"
        if not path.is_file():
            rows.append({"run": str(run), "missing": "no report.json (run did not finish)"})
            continue
        report = json.loads(path.read_text())
        training = report["training"]
        rows.append(
            {
                "run": str(run),
                "hours": report["corpus"]["hours"],
                "files": report["corpus"]["files"],
                "minutes": training["minutes"],
                "steps": training["steps"],
                "examples_generated": training.get("examples_generated", training.get("examples_seen")),
                "clip_accuracy": report["mini_test"]["clip_accuracy"],
                "window_accuracy": report["mini_test"]["window_accuracy"],
            }
        )
    return sorted(rows, key=lambda r: float(r.get("hours", 1e9)))  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.learning_curve", description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=Path("model/report/learning_curve.json"))
    args = parser.parse_args(argv)
    rows = collect(args.runs)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=1) + "\n")
    print("| corpus hours | files | train minutes | steps | examples | clip acc. | window acc. |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        if "missing" in r:
            print(f"| {r['run']} | — | — | — | — | {r['missing']} | — |")
            continue
        print(
            f"| {r['hours']} | {r['files']} | {r['minutes']} | {r['steps']} | {r['examples_generated']} | "
            f"{r['clip_accuracy']:.1%} | {r['window_accuracy']:.1%} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
