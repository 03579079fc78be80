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
from streamgenre.stream.metrics import Metrics
from streamgenre.stream.streamstate import expected_windows, grid_phase
from streamgenre.stream.tracks import TRACK_STREAM_ID, TrackClassifier, aligned_anchor_ms, summarise
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
    assert expected_windows(TRACK_STREAM_ID, ts, 0, rate, TEST_RECIPE, hop_frames) == 0
    assert expected_windows(TRACK_STREAM_ID, ts, window - 1, rate, TEST_RECIPE, hop_frames) == 1  # short window
    assert expected_windows(TRACK_STREAM_ID, ts, window, rate, TEST_RECIPE, hop_frames) == 1
    assert expected_windows(TRACK_STREAM_ID, ts, window + hop, rate, TEST_RECIPE, hop_frames) == 2
    assert expected_windows(TRACK_STREAM_ID, ts, 2 * (window + hop), 2 * rate, TEST_RECIPE, hop_frames) == 2


def test_summarise_takes_genre_from_music_windows_only() -> None:
    labels = ["a", "b"]
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7]], np.float32)
    music, speech = {"state": "music", "state_probs": {}, "level_dbfs": -20.0}, {"state": "speech"}
    result = summarise(labels, probs, [0.0, 3.0, 6.0], [3.0, 6.0, 9.0], [speech, music, music])
    assert result["genre"] == "b" and result["probabilities"] == pytest.approx({"a": 0.25, "b": 0.75})
    assert result["states"] == {"music": 0.6667, "speech": 0.3333}
    assert [w["genre"] for w in result["timeline"]] == [None, "b", "b"]
    assert result["timeline"][1]["level_dbfs"] == -20.0
    silent = summarise(labels, probs[:1], [0.0], [3.0], [{"state": "silence"}])
    assert silent["genre"] is None and silent["probabilities"] is None and silent["states"] == {"silence": 1.0}
    assert summarise(labels, probs[:1], [0.0], [3.0])["genre"] == "a"  # no states known: every window counts


def test_job_state_is_pending_until_every_window_and_counts_replays_once() -> None:
    from streamgenre.apps.jobs import job_state

    record = {"job_id": "j", "ts_ms": 1000, "duration_s": 7.0, "windows_expected": 2}

    def prediction(seq: int) -> dict:
        return {"window_seq": seq, "t_start": 1.0 + 3 * seq, "t_end": 4.0 + 3 * seq, "probs": {"a": 0.8, "b": 0.2},
                "model_version": "m", "state": "music", "state_probs": {"music": 1.0}, "level_dbfs": -20.0}

    pending = job_state(record, [prediction(0), prediction(0)])  # a replay repeated window 0
    assert (pending["status"], pending["windows_done"], pending["result"]) == ("pending", 1, None)
    done = job_state(record, [prediction(0), prediction(1), prediction(0)])
    assert done["status"] == "done" and done["result"]["genre"] == "a" and done["result"]["windows"] == 2
    assert [w["t_start"] for w in done["result"]["timeline"]] == [0.0, 3.0]  # from the start of the upload
