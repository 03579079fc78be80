"""``streamgenre report`` against the real Redis: closed segments, the open one, time range, errors."""

from __future__ import annotations

import csv
import json

import pytest
import redis

from streamgenre.apps.cli import main
from streamgenre.apps.report import build_report, parse_time
from streamgenre.config import Settings
from tests.conftest import REDIS_URL

pytestmark = pytest.mark.integration

T0 = 1_764_000_000.0


def prediction(i: int, state: str, genre: str | None, title: str) -> bytes:
    return json.dumps({
        "stream_id": "r1", "t_start": T0 + 3 * i, "t_end": T0 + 3 * i + 3, "state": state,
        "state_probs": {state: 0.9, "music" if state != "music" else "speech": 0.1},
        "probs": {"jazz": 0.7, "rock": 0.3}, "smoothed_genre": genre, "smoothed_probs": {"jazz": 0.7, "rock": 0.3},
        "genre": genre, "title": title, "level_dbfs": -20.0 if state != "silence" else -80.0,
    }).encode()


@pytest.fixture
def stored(redis_prefix: str) -> Settings:
    """A closed music segment (0-30 s) in :segments, then 30 s of speech still open in :timeline."""
    client = redis.Redis.from_url(REDIS_URL)
    client.xadd(f"{redis_prefix}:r1:segments", {"json": json.dumps({
        "schema_version": 1, "stream_id": "r1", "start": T0, "end": T0 + 30, "duration_s": 30.0, "state": "music",
        "genre": "jazz", "confidence": 0.9, "genre_confidence": 0.7, "title": "Song A", "windows": 10})})
    for i in range(20):
        state, genre, title = ("music", "jazz", "Song A") if i < 10 else ("speech", None, "News")
        client.xadd(f"{redis_prefix}:r1:timeline", {"json": prediction(i, state, genre, title)})
    return Settings(redis_url=REDIS_URL, redis_prefix=redis_prefix)


def test_report_has_closed_and_open_segments(stored: Settings, tmp_path) -> None:
    segments = build_report(stored, "r1", float("-inf"), float("inf"), tmp_path)
    assert [(s["state"], s["title"], s.get("open", False)) for s in segments] == [
        ("music", "Song A", False), ("speech", "News", True)]
    assert segments[1]["start"] == T0 + 30 and segments[1]["end"] == T0 + 60
    rows = list(csv.DictReader((tmp_path / "segments.csv").open()))
    assert [r["state"] for r in rows] == ["music", "speech"] and rows[0]["start_utc"] == "2025-11-24T16:00:00+00:00"
    assert json.loads((tmp_path / "segments.json").read_text()) == segments
    assert (tmp_path / "timeline.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_time_range_selects_overlapping_entries(stored: Settings, tmp_path) -> None:
    segments = build_report(stored, "r1", T0 + 40, T0 + 50, tmp_path)
    assert [s["state"] for s in segments] == ["speech"]


def test_cli_errors_are_one_line(stored: Settings, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("STREAMGENRE_REDIS_PREFIX", stored.redis_prefix)
    assert main(["report", "--stream-id", "absent", "--out", str(tmp_path)]) == 2  # the CLI-wide bad-input code
    assert capsys.readouterr().err.count("\n") == 1
    assert main(["report", "--stream-id", "r1", "--from", "2025-11-24T16:00:40", "--out", str(tmp_path)]) == 0
    assert parse_time("2025-11-24T16:00:40") == T0 + 40 and parse_time(str(T0)) == T0
