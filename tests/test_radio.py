"""Radio in, against a real station (Icecast 2 + ffmpeg source, see tests/radio.py) and hostile servers.

The relay runs in-process with short timeouts and backoff; the daemon consumes on the test
broker and writes the Redis timeline the assertions read.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import redis

from streamgenre.apps import cli
from streamgenre.apps.devbroker import DevBroker, ensure_topics, free_port
from streamgenre.apps.radio import Station
from streamgenre.apps.relay import Relay
from streamgenre.apps.relay_metrics import RelayMetrics
from streamgenre.config import Settings
from tests.conftest import REDIS_URL, SHARED, isolated_settings, read_topic, running_daemon
from tests.radio import RadioStation, default_programme, require

EXAMPLES = SHARED / "data" / "examples"


def _need_shared_data() -> None:
    if not EXAMPLES.is_dir():
        pytest.skip(f"needs the shared example audio at {EXAMPLES}")


@pytest.fixture
def station() -> Iterator[RadioStation]:
    _need_shared_data()
    radio = RadioStation(default_programme(EXAMPLES, seconds=6.0, silence_s=4.0)).start()
    try:
        yield radio
    finally:
        radio.stop()


def relay_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={
        "relay_read_timeout_s": 2.0, "relay_backoff_initial_s": 0.3, "relay_backoff_max_s": 1.5,
        "relay_metrics_port": free_port(), "relay_chunk_s": 0.25})


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(0.2)


def sample(metrics: RelayMetrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return value or 0.0


def timeline(settings: Settings, stream_id: str) -> list[dict]:
    client = redis.Redis.from_url(REDIS_URL)
    return [json.loads(fields[b"json"]) for _, fields in client.xrange(f"{settings.redis_prefix}:{stream_id}:timeline")]


@pytest.mark.integration
def test_relay_reconnects_after_icecast_restart_and_timeline_keeps_titles(
        settings: Settings, station: RadioStation) -> None:
    """Kill -9 the Icecast server mid-stream and start it again: the relay reconnects by itself,
    the daemon's timeline shows the gap (a window reset, no window spans it) and the titles."""
    relaxed = relay_settings(settings)
    programme_titles = {item.title for item in station.programme}
    with running_daemon(settings) as daemon, Relay(relaxed, [Station("fm-1", station.url)]) as relay:
        wait_for(lambda: len({p["title"] for p in timeline(settings, "fm-1")} & programme_titles) >= 2, 40,
                 "windows of two programme items, with their titles")
        station.kill_server()
        killed_at = time.time()
        wait_for(lambda: sample(relay.metrics, "streamgenre_relay_connected", station="fm-1") == 0, 10,
                 "the relay to notice the outage")
        time.sleep(2.0)  # a real outage: several reconnect attempts fail against a closed port
        station.start()
        restarted_at = time.time()
        wait_for(lambda: sum(p["t_start"] > restarted_at for p in timeline(settings, "fm-1")) >= 3, 40,
                 "windows of audio aired after the restart")
        page = urllib.request.urlopen(f"http://127.0.0.1:{relaxed.relay_metrics_port}/metrics", timeout=5).read()
        ready = json.load(urllib.request.urlopen(f"http://127.0.0.1:{relaxed.relay_metrics_port}/readyz", timeout=5))
        assert all(thread.is_alive() for thread in relay._threads), "a station thread died"
        resets = daemon.metrics.window_resets.labels("seq_gap")._value.get()
    windows = timeline(settings, "fm-1")
    assert sample(relay.metrics, "streamgenre_relay_reconnects_total", station="fm-1") >= 2
    failures = {reason: sample(relay.metrics, "streamgenre_relay_failures_total", station="fm-1", reason=reason)
                for reason in ("ended", "stalled", "connect")}
    assert failures["connect"] >= 1 and failures["ended"] + failures["stalled"] >= 1, failures
    assert resets >= 1, "the reconnect must reach the daemon as a seq discontinuity"
    assert b'streamgenre_relay_connected{station="fm-1"} 1.0' in page
    assert b'streamgenre_relay_last_audio_age_seconds{station="fm-1"}' in page
    assert ready == {"ready": True, "broker": "ok", "stations": {"fm-1": "connected"}}
    # The gap: the one place where consecutive windows are not back to back, from about the kill to
    # about the restart (ts runs up to Icecast's burst, ~1.5 s, ahead of the wall clock).
    gaps = sorted(((b["t_start"] - a["t_end"], a, b) for a, b in itertools.pairwise(windows)), key=lambda g: g[0])
    gap, last_before, first_after = gaps[-1]
    assert gap >= 2.0 and all(other < 0.05 for other, _, _ in gaps[:-1]), [g for g, _, _ in gaps]
    assert killed_at - 1 < last_before["t_end"] < killed_at + 3
    assert restarted_at - 3 < first_after["t_start"] < restarted_at + 5
    after = windows[windows.index(first_after):]
    assert {w["title"] for w in windows} <= programme_titles | {None}
    assert all(w["title"] in programme_titles for w in after)


class HostileStation(BaseHTTPRequestHandler):
    """Streams that break in ways Icecast itself does not: a stall, a page served as audio, and a
    codec change mid-stream."""

    mp3: bytes = b""
    aac: bytes = b""
    closing = threading.Event()
    codec_requests = 0

    def do_GET(self) -> None:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the relay hangs up on us
            self._stream()

    def _stream(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "audio/mpeg")
        self.end_headers()
        if self.path == "/stall.mp3":
            self.wfile.write(self.mp3)
            self.wfile.flush()
            self.closing.wait(60)  # connection open, nothing more: only a read timeout notices
        elif self.path == "/page.mp3":  # an error page under an audio type, then the server hangs up
            self.wfile.write(b"<html><body>This station has moved. Listen on our new website!</body></html>\n" * 50)
        elif self.path == "/codec-change":
            type(self).codec_requests += 1
            # First connection: mp3, then AAC bytes on the same response (a fallback source of
            # another codec). Later connections: AAC from the start, which decodes.
            if self.codec_requests == 1:
                self.wfile.write(self.mp3)
            while not self.closing.is_set():
                for start in range(0, len(self.aac), 4096):
                    self.wfile.write(self.aac[start : start + 4096])
                    if self.closing.wait(0.1):
                        return

    def log_message(self, *args: object) -> None:
        """Quiet: the relay's own log is what the test reads."""


@pytest.fixture
def hostile_server(tmp_path: Path) -> Iterator[str]:
    _need_shared_data()
    ffmpeg = require("ffmpeg")
    source = str(EXAMPLES / "brahms_hungarian_dance_5.ogg")
    for name, codec, fmt, seconds in (("a.mp3", "libmp3lame", "mp3", 3), ("b.aac", "aac", "adts", 8)):
        subprocess.run([ffmpeg, "-v", "error", "-y", "-t", str(seconds), "-i", source, "-c:a", codec, "-f", fmt,
                        str(tmp_path / name)], check=True)
    HostileStation.mp3, HostileStation.aac = (tmp_path / "a.mp3").read_bytes(), (tmp_path / "b.aac").read_bytes()
    HostileStation.closing.clear()
    HostileStation.codec_requests = 0
    server = ThreadingHTTPServer(("127.0.0.1", 0), HostileStation)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        HostileStation.closing.set()
        server.shutdown()
        server.server_close()


@pytest.mark.integration
def test_bad_stations_are_logged_and_counted_and_cost_the_good_one_nothing(
        settings: Settings, station: RadioStation, hostile_server: str, caplog: pytest.LogCaptureFixture) -> None:
    icecast = f"http://127.0.0.1:{station.port}"
    bad = {
        "dns": ("http://no-such-station.invalid/live.mp3", "dns"),
        "missing": (f"{icecast}/no-such-mount.mp3", "http_status"),
        "webpage": (f"{icecast}/status.xsl", "not_audio"),
        "stall": (f"{hostile_server}/stall.mp3", "stalled"),
        "page": (f"{hostile_server}/page.mp3", "no_audio"),
        "codec": (f"{hostile_server}/codec-change", "no_audio"),
    }
    stations = [Station("good", station.url)] + [Station(sid, url) for sid, (url, _) in bad.items()]
    caplog.set_level(logging.INFO, logger="streamgenre.apps.relay")
    relaxed = relay_settings(settings)
    with running_daemon(settings) as daemon:
        relay = Relay(relaxed, stations).start()
        try:
            def failed(sid: str) -> bool:
                reason = bad[sid][1]
                return sample(relay.metrics, "streamgenre_relay_failures_total", station=sid, reason=reason) >= 1

            wait_for(lambda: all(failed(sid) for sid in bad), 30, "every bad station to fail with its reason")
            codec_chunks = sample(relay.metrics, "streamgenre_relay_chunks_total", station="codec")
            wait_for(lambda: sample(relay.metrics, "streamgenre_relay_chunks_total", station="codec")
                     >= codec_chunks + 8, 30, "the codec-change station to decode again after its reconnect")
            assert all(thread.is_alive() for thread in relay._threads), "a station thread died"
        finally:
            relay.stop()
        good_s = sample(relay.metrics, "streamgenre_relay_chunks_total", station="good") * relaxed.relay_chunk_s
        hop = 1.0  # the test model's window and hop are ~0.99 s
        # Up to a hop is lost to the stream's grid phase at the start and a window to the audio
        # still in the last chunk and the STFT's look-ahead at the end; the order check below
        # catches any window lost in between.
        wait_for(lambda: len(timeline(settings, "good")) >= good_s // hop - 2, 30,
                 f"the daemon to classify every window the good station published ({good_s} s)")
        assert daemon.metrics.window_resets.labels("seq_gap")._value.get() >= 1  # the codec station's reconnect
    for sid, (_, reason) in bad.items():
        assert any(r.levelno == logging.WARNING and r.getMessage().startswith(f"station {sid}: {reason}: ")
                   for r in caplog.records), f"no log line for station {sid} ({reason})"
        assert sample(relay.metrics, "streamgenre_relay_connected", station=sid) == 0
    assert sample(relay.metrics, "streamgenre_relay_failures_total", station="good", reason="ended") == 0
    assert sample(relay.metrics, "streamgenre_relay_reconnects_total", station="good") == 0
    # Every window of the good station's audio, each once and in order: nothing was lost to the others.
    seqs = [w["window_seq"] for w in timeline(settings, "good")]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))


def test_cli_refuses_bad_live_inputs_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad_yaml = tmp_path / "stations.yaml"
    bad_yaml.write_text("stations: [{id: a, url: ftp://x/a.mp3}]\n")
    cases = [
        (["ingest", "http://x/a.mp3", "http://x/b.mp3", "--stream-id", "s"], "one URL per --stream-id"),
        (["ingest", "http://x/a.mp3", "--stream-id", "s", "--loop"], "are for files"),
        (["relay", str(tmp_path / "missing.yaml")], "missing.yaml"),
        (["relay", str(bad_yaml)], "url must be an http"),
    ]
    for args, message in cases:
        assert cli.main(args) == 2, args
        stderr = capsys.readouterr().err
        assert message in stderr and len(stderr.strip().splitlines()) == 1, stderr


@pytest.mark.integration
def test_ingest_url_relays_a_live_station_with_titles_until_sigterm(settings: Settings, station: RadioStation) -> None:
    env = {**os.environ, "STREAMGENRE_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
           "STREAMGENRE_INPUT_TOPIC": settings.input_topic, "STREAMGENRE_RELAY_CHUNK_S": "0.5"}
    process = subprocess.Popen([sys.executable, "-m", "streamgenre", "ingest", station.url, "--stream-id", "cli-fm"],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(8)
    finally:
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    published = json.loads(out.strip().splitlines()[-1])["chunks_published"]["cli-fm"]
    messages = read_topic(settings.bootstrap_servers, settings.input_topic, published, timeout_s=20)
    assert len(messages) == published >= 8
    headers = [dict(m.headers) for m in messages]
    assert [int(h["seq"]) for h in headers] == list(range(published))
    assert {h["content-type"] for h in headers} == {b"audio/pcm;format=s16le"}
    titles = {h["title"].decode() for h in headers if "title" in h}
    assert titles and titles <= {item.title for item in station.programme}


@pytest.mark.integration
def test_check_song_speech_silence_song_segments_titles_dead_air_and_reconnect(
        broker: DevBroker, redis_prefix: str) -> None:
    """Issue 18's check: the station airs song -> speech -> silence -> song with ICY titles; with
    the shipped genre and content models the timeline has music, speech and silence segments in
    that order with those titles, a dead-air alert, and a reconnect after the server restart."""
    _need_shared_data()
    programme = default_programme(EXAMPLES, seconds=15.0, silence_s=12.0)
    settings = isolated_settings(broker.bootstrap, Settings().model_path, redis_prefix, segment_min_s=5.0,
                                 dead_air_s=5.0)
    ensure_topics(settings)
    radio = RadioStation(programme).start()
    try:
        with running_daemon(settings), Relay(relay_settings(settings), [Station("check-fm", radio.url)]) as relay:
            # One whole cycle from the first complete window, then kill -9 and restart the server.
            wait_for(lambda: len(timeline(settings, "check-fm")) >= 1, 40, "the first window")
            first = timeline(settings, "check-fm")[0]["t_start"]
            wait_for(lambda: timeline(settings, "check-fm")[-1]["t_end"] > first + radio.cycle_s, 90,
                     "a whole programme cycle")
            radio.kill_server()
            time.sleep(2.0)
            radio.start()
            restarted_at = time.time()
            wait_for(lambda: sum(w["t_start"] > restarted_at for w in timeline(settings, "check-fm")) >= 2, 40,
                     "windows after the restart")
        reconnects = sample(relay.metrics, "streamgenre_relay_reconnects_total", station="check-fm")
    finally:
        radio.stop()
    client = redis.Redis.from_url(REDIS_URL)
    segments = [json.loads(f[b"json"]) for _, f in client.xrange(f"{redis_prefix}:check-fm:segments")]
    story = [(s["state"], s["title"]) for s in segments]
    titles = {item.kind: item.title for item in programme if item.kind != "music"}
    expected = [("speech", titles["speech"]), ("silence", titles["silence"])]
    # The speech and silence items, in that order, each as a segment of its own title, between songs.
    positions = [story.index(pair) for pair in expected if pair in story]
    assert len(positions) == 2 and positions == sorted(positions), story
    songs = [item.title for item in programme if item.kind == "music"]
    # The content model may call the start of the news "mixed" (its weak class, model card): the
    # news item is speech-or-mixed segments, at least one of them speech, right after the first song.
    news = [i for i, (_, title) in enumerate(story) if title == titles["speech"]]
    assert news == list(range(news[0], news[-1] + 1)), story
    assert {story[i][0] for i in news} <= {"speech", "mixed"}, story
    assert story[news[0] - 1] == ("music", songs[0]), story
    # The second song follows the silence. It is sung: its first segment may be "mixed" (voice over
    # music) or, with the student's content model, "speech" (about one run in four under load; model
    # card, content state); the song is music after it.
    assert story[positions[1] + 1][1] == songs[1] and story[positions[1] + 1][0] != "silence", story
    assert ("music", songs[1]) in story[positions[1] + 1:], story
    alerts = [json.loads(m.value) for m in read_topic(settings.bootstrap_servers, settings.alerts_topic, 1, 10)]
    assert any(a["kind"] == "dead_air_start" for a in alerts), alerts
    assert reconnects >= 1
