"""Which ONNX models a bench run measures, by name.

``cnn`` is a randomly initialised paper CNN committed under ``benchmarks/models/`` (its cost
matters here, not its weights; ``make bench-model`` rebuilds it with ``training.cnn``, so the
serving package never imports ``training/`` or torch). ``served`` is the model the daemon serves
by default (``Settings().model_path``); ``shipped`` is ``model/genre_cnn.onnx`` (or
``--model-path``); ``student`` is the tagger distilled into the paper CNN's size.
"""

from __future__ import annotations

import sys
from pathlib import Path

from streamgenre.config import SHIPPED_MODEL, Settings

#: Random-init paper CNN with the model contract (``make bench-model``; ~0.5 MB).
PAPER_CNN = Path(__file__).resolve().parents[2] / "benchmarks" / "models" / "paper_cnn.onnx"
#: The shipped tagger distilled into the paper-sized CNN (``make student``), served on request.
STUDENT_MODEL = SHIPPED_MODEL.parent / "student" / "genre_cnn.onnx"
MODEL_CHOICES = ("cnn", "served", "shipped", "student", "both")


def served_model() -> Path:
    """The model ``streamgenre run`` loads when nothing overrides it (defaults + environment)."""
    return Path(Settings().model_path)


def model_paths(which: str, shipped: Path) -> dict[str, Path]:
    """Name → path of the models to measure; a missing file is reported and skipped."""
    wanted = {
        "cnn": ("cnn",),
        "served": ("served",),
        "shipped": ("shipped",),
        "student": ("student",),
        "both": ("cnn", "shipped"),
    }[which]
    candidates = {"cnn": PAPER_CNN, "served": served_model(), "shipped": shipped, "student": STUDENT_MODEL}
    paths: dict[str, Path] = {}
    for name in wanted:
        path = candidates[name]
        if path.is_file():
            paths[name] = path
        else:
            print(f"bench: no {name} model at {path}; skipped", file=sys.stderr)
    return paths
