"""``streamgenre classify``: a folder in, one row per file out, resumable; and the shared classifier."""

from __future__ import annotations

import csv
import json
import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from streamgenre.apps.cli import main
from streamgenre.model.contract import GenreModel, load_spec
from streamgenre.model.features import clip_windows
from streamgenre.stream.framing import expected_windows, grid_phase
from streamgenre.stream.metrics import Metrics
from streamgenre.stream.tracks import TRACK_STREAM_ID, TrackClassifier, aligned_anchor_ms
from tests.audio import tone_mix
from tests.modelgen import TEST_RECIPE


def _library(root: Path, n: int, seconds: float = 5.0) -> list[Path]:
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = root / f"track{i}.{'flac' if i % 2 else 'wav'}"
        sf.write(path, tone_mix(seconds, 22050, 2, seed=i), 22050)
        paths.append(path)
    return paths


def _rows(out: Path) -> list[dict]:
    with out.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_classify_a_folder_resumes_and_reports_bad_files(tmp_path: Path, test_model: Path,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("STREAMGENRE_MODEL_PATH", str(test_model))
    library = tmp_path / "library"
    _library(library, 3)
    (library / "broken.ogg").write_bytes(b"not audio" * 100)
    out = tmp_path / "out.csv"
    assert main(["classify", str(library), "--csv", "--out", str(out), "--workers", "2", "--no-progress"]) == 1
    assert "1 of 4 files could not be classified" in capsys.readouterr().err
    rows = _rows(out)
    assert sorted(Path(r["path"]).name for r in rows) == ["broken.ogg", "track0.wav", "track1.flac", "track2.wav"]
    labels = load_spec(test_model).labels
    for row in rows:
        if row["path"].endswith("broken.ogg"):
            assert "cannot decode" in row["error"] and not row["genre"]
        else:
            assert row["genre"] in labels and not row["error"] and int(row["windows"]) >= 1
    # Again, with one new file: only that one is classified, nothing is repeated.
    sf.write(library / "new.wav", tone_mix(5.0, 16000, 1, seed=9), 16000)
    assert main(["classify", str(library), "--out", str(out), "--no-progress"]) == 0
    rows = _rows(out)
    assert len(rows) == 5 and sum(r["path"].endswith("new.wav") for r in rows) == 1


def test_classify_json_lines_carry_probabilities(tmp_path: Path, test_model: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMGENRE_MODEL_PATH", str(test_model))
    files = _library(tmp_path / "lib", 2)
    out = tmp_path / "out.jsonl"
    assert main(["classify", *map(str, files), "--json", "--out", str(out), "--no-progress"]) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 2
    for line in lines:
        assert sum(line["probabilities"].values()) == pytest.approx(1.0, abs=1e-3)
        assert line["genre"] == max(line["probabilities"], key=line["probabilities"].get)


def test_missing_path_is_one_error_line(tmp_path: Path, test_model: Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("STREAMGENRE_MODEL_PATH", str(test_model))
    assert main(["classify", str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_track_classifier_matches_offline_windows_and_batches_concurrent_tracks(test_model: Path) -> None:
    """The daemon's stages give the same probabilities as the offline reference, and tracks
    classified at the same time share micro-batches."""
    model = GenreModel(test_model)
    metrics = Metrics()
    classifier = TrackClassifier(model, max_batch=16, max_wait_ms=50.0, metrics=metrics)
    recipe = model.recipe
    try:
        audio = tone_mix(8.0, recipe.sample_rate, 1, seed=3)[:, 0]
        result = classifier.classify(audio, None, recipe.sample_rate)
        reference = model.predict(clip_windows(audio, recipe, model.spec.hop_frames))[0]
        assert result["windows"] == reference.shape[0]
        got = np.array([[w["probs"][label] for label in model.labels] for w in result["timeline"]])
        np.testing.assert_allclose(got, reference, atol=2e-3)
        results: list[dict] = []
        threads = [threading.Thread(target=lambda: results.append(classifier.classify(audio, None,
                                                                                      recipe.sample_rate)))
                   for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert len(results) == 6 and all(r["timeline"] == result["timeline"] for r in results)
        sizes = metrics.batch_size.collect()[0].samples
        batches = next(s.value for s in sizes if s.name.endswith("_count"))
        windows = next(s.value for s in sizes if s.name.endswith("_sum"))
        assert windows == 7 * result["windows"] and batches < 6 * result["windows"], "concurrent tracks share batches"
    finally:
        classifier.close()


def test_expected_windows_and_the_aligned_anchor() -> None:
    """A track anchored at aligned_anchor_ms has its first window at its first sample."""
    hop_frames = 31
    hop = hop_frames * TEST_RECIPE.hop_length
    rate = TEST_RECIPE.sample_rate
    ts = aligned_anchor_ms(TRACK_STREAM_ID, rate, hop)
    assert ts * rate // 1000 == grid_phase(TRACK_STREAM_ID, hop, rate)
    window = TEST_RECIPE.window_samples
    assert expected_windows(TRACK_STREAM_ID, ts, window - 1, rate, TEST_RECIPE, hop_frames) == 0
    assert expected_windows(TRACK_STREAM_ID, ts, window, rate, TEST_RECIPE, hop_frames) == 1
    assert expected_windows(TRACK_STREAM_ID, ts, window + hop, rate, TEST_RECIPE, hop_frames) == 2
    assert expected_windows(TRACK_STREAM_ID, ts, 2 * (window + hop), 2 * rate, TEST_RECIPE, hop_frames) == 2
