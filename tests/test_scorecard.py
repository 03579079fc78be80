"""The evaluation command: a report for any contract model; undecodable files are counted, never fatal."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.modelgen import make_test_model
from training.scorecard import scorecard, table


def tone(seconds: float, freq: float, rate: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.fixture
def dataset(tmp_path: Path) -> tuple[Path, Path]:
    data, examples = tmp_path / "mini", tmp_path / "examples"
    for genre, number, freq in [("blues", 5, 220.0), ("rock", 6, 880.0), ("blues", 0, 230.0), ("rock", 1, 870.0)]:
        (data / genre).mkdir(parents=True, exist_ok=True)
        sf.write(data / genre / f"{genre}.{number:05d}.wav", tone(5.0, freq), 16000)
    (data / "rock" / "rock.00007.wav").write_bytes(b"RIFF not really a wav")
    (data / "splits").mkdir()
    (data / "splits" / "mini_test.txt").write_text("blues/blues.00005.wav\nrock/rock.00006.wav\nrock/rock.00007.wav\n")
    (data / "splits" / "mini_train.txt").write_text("blues/blues.00000.wav\nrock/rock.00001.wav\n")
    examples.mkdir()
    sf.write(examples / "a.wav", tone(4.0, 440.0), 16000)
    (examples / "broken.ogg").write_bytes(b"OggS garbage")
    (examples / "labels.tsv").write_text("file\tkind\tgenre\na.wav\tmusic\tjazz\nbroken.ogg\tmusic\trock\n"
                                         "unlabelled.wav\tmusic\t\n")
    return data, examples


def test_scorecard_writes_report_and_counts_unreadable_files(tmp_path: Path, dataset: tuple[Path, Path]) -> None:
    data, examples = dataset
    model = make_test_model(tmp_path / "model")
    with pytest.warns(UserWarning, match="broken.ogg"):
        result = scorecard(model, "tiny", data, examples, gains_db=[-40.0], seconds=0.2, cache_dir=None,
                           report_root=tmp_path / "report")
    written = json.loads((tmp_path / "report" / "tiny" / "report.json").read_text())
    assert written == json.loads(json.dumps(result))
    assert (tmp_path / "report" / "tiny" / "confusion.png").stat().st_size > 0
    assert written["mini_test"]["n_clips"] == 2 and written["unreadable"]["count"] == 2
    assert any("rock.00007" in f for f in written["unreadable"]["files"])
    assert [e["file"] for e in written["examples"]] == ["a.wav"]  # labelled and decodable only
    assert 0.0 <= written["mini_test"]["ece"] <= 1.0 and written["cost"]["windows_per_cpu_s"] > 0
    assert "-40 dB" in written["levels"]
    assert "| tiny (" in table(tmp_path / "report")
