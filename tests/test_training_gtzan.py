"""The shipped model's reported GTZAN accuracy is reproducible (runs only once GTZAN is here).

Kept apart from the smoke tests: evaluating 290 full clips takes minutes, not seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from training.data import load_split
from training.evaluate import evaluate_onnx

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
GTZAN = SHARED / "data" / "gtzan"


@pytest.mark.skipif(not GTZAN.is_dir(), reason="GTZAN is not at ../shared/data/gtzan yet")
def test_shipped_model_matches_reported_filtered_accuracy() -> None:
    metrics = json.loads((REPO / "model" / "report" / "metrics.json").read_text())
    assert "genre_cnn" in metrics.get("filtered", {}), (
        "no filtered result for the shipped model: run python -m training.evaluate --protocol filtered"
    )
    reported = metrics["filtered"]["genre_cnn"]
    clips = load_split(GTZAN, "filtered")["test"]
    result = evaluate_onnx(REPO / "model" / "genre_cnn.onnx", clips, progress=False)
    assert result["version"] == reported["version"], "metrics.json reports another model version"
    # 0.5 points of clip accuracy (one clip of 290 is 0.34 points).
    assert abs(result["clip_accuracy"] - reported["clip_accuracy"]) <= 0.005
