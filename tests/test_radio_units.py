"""The relay's pure parts: stations file, backoff, ICY demultiplexing, failure reasons."""

from __future__ import annotations

import http.client
import random
import socket
import urllib.error
from pathlib import Path

import pytest

from streamgenre.apps.radio import (
    IcyDemuxer,
    Station,
    StationsError,
    backoff_s,
    failure_reason,
    format_hint,
    is_live_url,
    parse_stations,
    parse_stream_title,
    segment_start_ms,
)

STATIONS_YAML = """
stations:
  - id: jazz-fm
    url: http://127.0.0.1:8000/jazz.mp3
  - id: talk-radio
    url: https://radio.example/talk
"""


def test_stations_file_parses() -> None:
    assert parse_stations(STATIONS_YAML) == [Station("jazz-fm", "http://127.0.0.1:8000/jazz.mp3"),
                                              Station("talk-radio", "https://radio.example/talk")]


@pytest.mark.parametrize(("text", "message"), [
    ("stations: [", "not valid YAML"),
    ("radios: []", "top-level 'stations:' list"),
    ("stations: []", "top-level 'stations:' list"),
    ("stations: [http://x/a.mp3]", "stations[0]: expected a mapping"),
    ("stations: [{id: a, url: http://x/a, gain: 2}]", "stations[0]: expected a mapping"),
    ("stations: [{url: http://x/a}]", "stations[0]: id must be a string"),
    ("stations: [{id: 'jazz fm', url: http://x/a}]", "stations[0]: id 'jazz fm': "),
    ("stations: [{id: a, url: /music/a.mp3}]", "url must be an http"),
    ("stations: [{id: a, url: ftp://x/a.mp3}]", "url must be an http"),
    ("stations: [{id: a, url: http://x/a}, {id: a, url: http://x/b}]", "duplicate station ids: a"),
])
def test_bad_stations_file_names_the_problem(text: str, message: str) -> None:
    with pytest.raises(StationsError, match=message.replace("[", r"\[").replace("(", r"\(")):
        parse_stations(text)


def test_live_urls_are_http_only() -> None:
    assert is_live_url("http://x/s.mp3") and is_live_url("HTTPS://x/s")
    assert not is_live_url("/tmp/a.mp3") and not is_live_url("file:///tmp/a.mp3")


def test_backoff_doubles_is_capped_and_jittered() -> None:
    rng = random.Random(7)
    for attempt in range(80):
        capped = min(30.0, 0.5 * 2**attempt)
        delays = [backoff_s(attempt, 0.5, 30.0, rng) for _ in range(50)]
        assert all(capped / 2 <= d <= capped for d in delays)
        assert len(set(delays)) > 40  # jittered: stations that fail together do not retry together
    assert max(backoff_s(1000, 0.5, 30.0, rng) for _ in range(100)) <= 30.0


def _icy_stream(audio: bytes, metaint: int, titles: dict[int, bytes]) -> bytes:
    """Interleave ``audio`` with metadata blocks as an Icecast server does (title at block index)."""
    out = bytearray()
    for index, start in enumerate(range(0, len(audio), metaint)):
        out += audio[start : start + metaint]
        if start + metaint <= len(audio):
            meta = titles.get(index, b"")
            padded = meta + b"\0" * (-len(meta) % 16)
            out += bytes([len(padded) // 16]) + padded
    return bytes(out)


@pytest.mark.parametrize("read_size", [1, 7, 100, 1000, 10**6])
def test_icy_demuxer_splits_audio_and_titles_at_any_read_boundary(read_size: int) -> None:
    audio = bytes(random.Random(1).randbytes(10_000))
    titles = {2: b"StreamTitle='Guns N' Roses - Patience';StreamUrl='';", 5: b"StreamTitle='News';"}
    stream = _icy_stream(audio, 1000, titles)
    demuxer = IcyDemuxer(1000)
    got_audio, got_titles = bytearray(), []
    for start in range(0, len(stream), read_size):
        chunk_audio, title = demuxer.feed(stream[start : start + read_size])
        got_audio += chunk_audio
        if title is not None:
            got_titles.append((len(got_audio), title))
    assert bytes(got_audio) == audio
    assert [title for _, title in got_titles][-1] == "News"
    if read_size <= 1000:  # at most one title per feed call: both are seen, in order
        assert [title for _, title in got_titles] == ["Guns N' Roses - Patience", "News"]
    if read_size == 1:  # and each right after the audio it follows
        assert got_titles == [(3000, "Guns N' Roses - Patience"), (6000, "News")]


def test_icy_demuxer_passes_everything_through_without_metaint() -> None:
    assert IcyDemuxer(None).feed(b"StreamTitle='x';") == (b"StreamTitle='x';", None)


def test_stream_title_charsets_and_absence() -> None:
    assert parse_stream_title("StreamTitle='Beyoncé - Halo';".encode()) == "Beyoncé - Halo"
    assert parse_stream_title("StreamTitle='Beyoncé - Halo';".encode("latin-1")) == "Beyoncé - Halo"
    assert parse_stream_title(b"StreamUrl='http://x';") is None
    assert parse_stream_title(b"StreamTitle='';") == ""


def test_failure_reasons() -> None:
    assert failure_reason(urllib.error.URLError(socket.gaierror(-2, "Name or service not known"))) == "dns"
    assert failure_reason(urllib.error.HTTPError("http://x", 404, "Not Found", None, None)) == "http_status"  # type: ignore[arg-type]
    assert failure_reason(urllib.error.URLError(ConnectionRefusedError(111, "refused"))) == "connect"
    assert failure_reason(TimeoutError("timed out")) == "stalled"
    assert failure_reason(urllib.error.URLError(TimeoutError("timed out"))) == "stalled"
    assert failure_reason(ConnectionResetError()) == "connect"
    assert failure_reason(http.client.BadStatusLine("ICY 200 OK")) == "bad_response"
    assert failure_reason(http.client.RemoteDisconnected("closed")) == "connect"
    assert failure_reason(ValueError("bug")) == "internal_error"


def test_format_hint_from_content_type() -> None:
    assert format_hint("audio/mpeg") == "mp3" and format_hint("Audio/AACP; charset=x") == "aac"
    assert format_hint("application/ogg") == "ogg" and format_hint("") is None
    assert format_hint("application/octet-stream") is None


def test_a_reconnect_never_goes_back_in_stream_time() -> None:
    # First connection: anchored on the clock, less the first block's length.
    assert segment_start_ms(0, now_ms=10_000, first_block_ms=500) == 9_500
    # The last connection's audio ran 3 s ahead of the clock (burst, flood): continue from its end.
    assert segment_start_ms(previous_end_ms=13_000, now_ms=10_500, first_block_ms=500) == 13_000
    # After a real outage the clock is ahead: the gap shows in ts.
    assert segment_start_ms(previous_end_ms=13_000, now_ms=60_000, first_block_ms=500) == 59_500


def test_shipped_stations_example_parses() -> None:
    """deploy/stations.yaml (mounted by docker compose --profile radio) is a valid stations file."""
    example = Path(__file__).resolve().parents[1] / "deploy" / "stations.yaml"
    assert [station.id for station in parse_stations(example.read_text())] == ["example-jazz", "example-talk"]
