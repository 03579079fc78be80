"""``streamgenre relay``: live radio stations (Icecast/SHOUTcast over HTTP) into ``audio.chunks``.

One thread per station runs, for as long as the relay runs: connect (asking for ICY metadata)
→ strip the metadata blocks from the bytes, keeping the ``StreamTitle`` → pipe the audio into an
``ffmpeg`` process that decodes whatever the station sends to mono s16le PCM at a fixed rate →
publish ``relay_chunk_s`` blocks as they come out. Pacing is the station's own: we only read
what it sends, so a live stream is published in real time without a clock of ours.

When a connection fails, stalls (no bytes for ``relay_read_timeout_s``), stops decoding (bytes
but no audio: a codec change mid-stream) or ends, the station reconnects after a capped
exponential backoff with jitter, and its ``seq`` restarts at 0 with ``ts`` from the wall clock:
the daemon sees a ``seq`` discontinuity and starts a fresh window instead of gluing the audio
before and after the gap into one. A title takes effect from the next chunk published after its
metadata block arrives; ffmpeg holds well under a second of audio, so a title may lead its audio by
about that much. Stations never share anything but the Kafka producer (which
is thread-safe), so a failing station costs the others nothing.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import http.client
import json
import logging
import random
import shutil
import signal
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from kafka import KafkaProducer

from streamgenre.apps.errors import UsageError
from streamgenre.apps.ingest import IngestError, make_producer
from streamgenre.apps.radio import (
    NOT_AUDIO_TYPES,
    IcyDemuxer,
    Station,
    StationsError,
    backoff_s,
    check_station,
    failure_reason,
    format_hint,
    parse_stations,
    segment_start_ms,
)
from streamgenre.apps.relay_metrics import RelayHealth, RelayMetrics
from streamgenre.config import Settings
from streamgenre.stream.metrics import serve_http
from streamgenre.stream.wire import chunk_headers

log = logging.getLogger(__name__)

PCM_TYPE = "audio/pcm;format=s16le"
USER_AGENT = "streamgenre-relay/1"
# Extra time a connection gets for its first decoded audio: ffmpeg may probe seconds of a stream
# of unknown (or mislabelled) type before the first sample comes out.
PROBE_GRACE_S = 5.0
DECODE_FAILURES = ("no_audio", "decoder_exit")
READ_BYTES = 64 * 1024


class _Decoder:
    """One ffmpeg process per connection: station bytes in on stdin, mono s16le PCM blocks out.

    A reader thread hands each ``block_bytes`` block to ``on_block`` as ffmpeg produces it; a
    second thread keeps ffmpeg's last error lines for the log.
    """

    def __init__(self, ffmpeg: str, rate: int, block_bytes: int, on_block: Callable[[bytes], None],
                 input_format: str | None) -> None:
        hint = ["-f", input_format] if input_format else []
        self.process = subprocess.Popen(
            [ffmpeg, "-hide_banner", "-loglevel", "error", *hint, "-i", "pipe:0", "-vn",
             "-f", "s16le", "-ac", "1", "-ar", str(rate), "-flush_packets", "1", "pipe:1"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0)
        self.last_audio: float | None = None
        self.errors: collections.deque[str] = collections.deque(maxlen=3)
        self._block_bytes, self._on_block = block_bytes, on_block
        self._reader = threading.Thread(target=self._read_audio, name="relay-decode", daemon=True)
        self._reader.start()
        threading.Thread(target=self._read_errors, name="relay-ffmpeg-log", daemon=True).start()

    def _read_audio(self) -> None:
        """Whole blocks (the pipe is unbuffered and returns what is there); the remainder at the end."""
        assert self.process.stdout is not None
        pending = bytearray()
        while data := self.process.stdout.read(self._block_bytes - len(pending)):
            self.last_audio = time.monotonic()
            pending += data
            if len(pending) == self._block_bytes:
                self._on_block(bytes(pending))
                pending.clear()
        if len(pending) >= 2:
            self._on_block(bytes(pending[: len(pending) - len(pending) % 2]))

    def _read_errors(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.errors.append(line.decode("utf-8", "replace").strip())

    def write(self, audio: bytes) -> bool:
        """Feed station bytes; False once ffmpeg has exited (it refused the input)."""
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(audio)
        except (BrokenPipeError, ValueError):
            return False
        return self.process.poll() is None

    def error(self) -> str:
        return " | ".join(self.errors) or f"ffmpeg exit status {self.process.poll()}"

    def close(self) -> None:
        """End of input: ffmpeg decodes what it still holds, the reader publishes it, then ffmpeg exits."""
        assert self.process.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            self.process.stdin.close()
        self._reader.join(5)
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        # The station's next connection restarts seq: no block of this one may be published after.
        self._reader.join()


class StationRelay:
    """Relays one station until ``stop`` is set; reconnects with backoff after every failure."""

    def __init__(self, station: Station, producer: KafkaProducer, settings: Settings, metrics: RelayMetrics,
                 stop: threading.Event, ffmpeg: str) -> None:
        self.station, self.producer, self.settings, self.metrics = station, producer, settings, metrics
        self.stop, self.ffmpeg = stop, ffmpeg
        self.rate = settings.relay_sample_rate
        self.connected = False
        self.title: str | None = None  # kept across reconnects until the station sends a new one
        self.trust_content_type = True
        self._rng = random.Random()
        self._seq = 0
        self._samples = 0
        self._start_ms = 0
        metrics.add_station(station.id)

    def run(self) -> None:
        attempt = 0
        while not self.stop.is_set():
            self._seq = 0  # every connection is a new segment for the daemon
            try:
                reason, detail = self._relay_once()
            except Exception as exc:  # one station's surprise must never end the relay of the others
                log.exception("station %s: unexpected error", self.station.id)
                reason, detail = failure_reason(exc), repr(exc)
            self._set_connected(False)
            if self.stop.is_set():
                break
            if self._seq:  # audio flowed: the station works, start the backoff schedule afresh
                attempt = 0
            # After a connection that decoded nothing, let ffmpeg probe rather than trust the label.
            self.trust_content_type = reason not in DECODE_FAILURES
            delay = backoff_s(attempt, self.settings.relay_backoff_initial_s, self.settings.relay_backoff_max_s,
                              self._rng)
            attempt += 1
            self.metrics.failures.labels(self.station.id, reason).inc()
            log.warning("station %s: %s: %s; reconnecting in %.1f s", self.station.id, reason, detail, delay)
            if self.stop.wait(delay):
                break
            self.metrics.reconnects.labels(self.station.id).inc()

    def _relay_once(self) -> tuple[str, str]:
        """One connection, from request to its end; returns (reason, detail) of that end."""
        request = urllib.request.Request(self.station.url, headers={"Icy-MetaData": "1", "User-Agent": USER_AGENT})
        try:
            response = urllib.request.urlopen(request, timeout=self.settings.relay_read_timeout_s)
        except Exception as exc:
            return failure_reason(exc), f"{self.station.url}: {exc}"
        with response:
            content_type = response.headers.get("Content-Type", "")
            if content_type.lower().startswith(NOT_AUDIO_TYPES):
                return "not_audio", f"{self.station.url} answers with {content_type!r}, not an audio stream"
            metaint = response.headers.get("icy-metaint", "")
            demuxer = IcyDemuxer(int(metaint) if metaint.isdigit() else None)
            block_bytes = 2 * max(1, round(self.settings.relay_chunk_s * self.rate))
            hint = format_hint(content_type) if self.trust_content_type else None
            decoder = _Decoder(self.ffmpeg, self.rate, block_bytes, self._publish, hint)
            try:
                reason, detail = self._pump(response, demuxer, decoder)
            finally:
                decoder.close()
        if reason == "ended" and decoder.last_audio is None:  # e.g. an error page served as audio/mpeg
            return "no_audio", f"the stream ended without decodable audio: {decoder.error()}"
        return reason, detail

    def _pump(self, response: http.client.HTTPResponse, demuxer: IcyDemuxer, decoder: _Decoder) -> tuple[str, str]:
        """Station bytes → decoder until the connection ends, stalls or stops decoding."""
        connected_at = time.monotonic()
        timeout = self.settings.relay_read_timeout_s
        received = 0
        while not self.stop.is_set():
            try:
                data = response.read1(READ_BYTES)
            except TimeoutError:
                return "stalled", f"no bytes for {timeout:g} s (connection open)"
            except (OSError, http.client.HTTPException) as exc:  # reset, truncated chunk: a reconnect, no traceback
                return failure_reason(exc), f"{self.station.url}: {exc!r}"
            if not data:
                return "ended", "the server closed the stream"
            audio, title = demuxer.feed(data)
            if title is not None and title != self.title:
                log.info("station %s: now playing %r", self.station.id, title)
                self.title = title
            if audio:
                received += len(audio)
                self.metrics.bytes.labels(self.station.id).inc(len(audio))
                if not decoder.write(audio):
                    return "decoder_exit", f"ffmpeg cannot decode the stream: {decoder.error()}"
            decoded_at = decoder.last_audio
            self._set_connected(decoded_at is not None and time.monotonic() - decoded_at < timeout)
            if time.monotonic() - (decoded_at or connected_at + PROBE_GRACE_S) > timeout:
                return "no_audio", (f"{received} bytes in but no audio decoded for {timeout:g} s (codec change "
                                    f"mid-stream or not audio?): {decoder.error()}")
        return "stopped", ""

    def _publish(self, pcm: bytes) -> None:
        """Publish one PCM block (decoder thread); ``ts`` counts samples from the connection's first block."""
        if self._seq == 0:
            previous_end_ms = self._start_ms + round(1000 * self._samples / self.rate)
            self._start_ms = segment_start_ms(previous_end_ms, round(time.time() * 1000),
                                              round(1000 * (len(pcm) // 2) / self.rate))
            self._samples = 0
        ts = self._start_ms + round(1000 * self._samples / self.rate)
        headers = chunk_headers(PCM_TYPE, self._seq, ts, self.rate, 1, title=self.title)
        future = self.producer.send(self.settings.input_topic, key=self.station.id.encode(), value=pcm,
                                    headers=headers)
        future.add_callback(lambda _metadata: self.metrics.publish_acknowledged(True))
        future.add_errback(self._on_publish_error)
        self._seq += 1
        self._samples += len(pcm) // 2
        self.metrics.chunks.labels(self.station.id).inc()
        self.metrics.audio_arrived(self.station.id)

    def _on_publish_error(self, exc: BaseException) -> None:
        self.metrics.publish_acknowledged(False)
        self.metrics.publish_errors.labels(self.station.id).inc()
        log.error("station %s: a chunk was not published: %s", self.station.id, exc)

    def _set_connected(self, up: bool) -> None:
        if up != self.connected:
            self.connected = up
            self.metrics.connected.labels(self.station.id).set(1 if up else 0)


class Relay:
    """All stations of one relay process, their shared producer and the metrics endpoint."""

    def __init__(self, settings: Settings, stations: list[Station], serve_metrics: bool = True) -> None:
        ffmpeg = shutil.which("ffmpeg")
        if ffmpeg is None:
            raise IngestError("the relay needs ffmpeg on PATH to decode station streams")
        self.settings, self.stop_event = settings, threading.Event()
        self.metrics = RelayMetrics()
        self.producer = make_producer(settings)
        self.stations = [StationRelay(s, self.producer, settings, self.metrics, self.stop_event, ffmpeg)
                         for s in stations]
        self._threads = [threading.Thread(target=s.run, name=f"relay-{s.station.id}", daemon=True)
                         for s in self.stations]
        try:
            self._server = (serve_http(self.metrics, self._health, settings.metrics_host, settings.relay_metrics_port)
                            if serve_metrics else None)
        except OSError as exc:  # a start-up failure: one line and exit 2 (cli), not a traceback
            self.producer.close()
            raise UsageError(f"cannot serve relay metrics on {settings.metrics_host}:{settings.relay_metrics_port}: "
                             f"{exc.strerror or exc} (set STREAMGENRE_RELAY_METRICS_PORT)") from exc

    def _health(self) -> RelayHealth:
        return RelayHealth(self.metrics.broker_ok, {s.station.id: s.connected for s in self.stations})

    def start(self) -> Relay:
        for thread in self._threads:
            thread.start()
        log.info("relaying %d station(s) to %s", len(self.stations), self.settings.input_topic)
        return self

    def stop(self) -> None:
        """Stop every station (each publishes what its decoder still holds), then flush the producer."""
        self.stop_event.set()
        for thread in self._threads:
            thread.join(self.settings.relay_read_timeout_s + 10)
        self.producer.flush()
        self.producer.close()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def __enter__(self) -> Relay:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def run_until(self, stop: threading.Event) -> None:
        self.start()
        try:
            while not stop.wait(1.0):
                pass
        finally:
            self.stop()


def chunks_published(metrics: RelayMetrics) -> dict[str, int]:
    return {sample.labels["station"]: int(sample.value) for metric in metrics.chunks.collect()
            for sample in metric.samples if sample.name.endswith("_total")}


def _run_in_foreground(relay: Relay) -> int:
    """Relay until SIGTERM or Ctrl-C, then print what each station published."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        relay.run_until(stop)
    except KeyboardInterrupt:
        relay.stop()
    print(json.dumps({"chunks_published": chunks_published(relay.metrics)}), flush=True)
    return 0


def ingest_live(settings: Settings, sources: list[str], stream_id: str, chunk_s: float,
                file_options: bool = False) -> int:
    """``streamgenre ingest URL --stream-id ID``: one station, relayed until stopped (no metrics port)."""
    if len(sources) != 1:
        raise UsageError("a live URL is a stream of its own: give one URL per --stream-id, or relay several "
                         "stations with `streamgenre relay stations.yaml`")
    if file_options:
        raise UsageError("--speed, --loop and --format are for files: a live URL is relayed as it arrives, "
                         "as s16le")
    try:
        station = check_station(stream_id, sources[0], "--stream-id/URL: ")
    except StationsError as exc:
        raise UsageError(str(exc)) from exc
    _first_contact(station.url, settings.relay_read_timeout_s)
    settings = settings.model_copy(update={"relay_chunk_s": chunk_s})
    return _run_in_foreground(Relay(settings, [station], serve_metrics=False))


def _first_contact(url: str, timeout_s: float) -> None:
    """Raise IngestError when ``url`` does not answer at all (refused, unknown host, HTTP error).

    A mistyped URL given to ``ingest`` is one line and exit 2, not an endless reconnect loop that
    publishes nothing; once a station has answered, its drops are the relay's to ride out.
    """
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s):
            pass  # the headers arrived: the station exists; the relay opens its own connection
    except OSError as exc:  # URLError, HTTPError, socket errors and timeouts are all OSErrors
        detail = getattr(exc, "reason", None) or exc
        raise IngestError(f"{url}: cannot connect ({failure_reason(exc)}): {detail}") from exc


def _cmd_relay(args: argparse.Namespace, settings: Settings) -> int:
    try:
        stations = parse_stations(args.stations.read_text())
    except StationsError as exc:
        raise UsageError(f"{args.stations}: {exc}") from exc
    return _run_in_foreground(Relay(settings, stations))


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``relay`` subcommand to ``subparsers``."""
    relay = subparsers.add_parser(
        "relay", help="relay live radio stations (HTTP/Icecast, from a YAML file) into audio.chunks",
        description="Relay every station of STATIONS_FILE (YAML: 'stations: [{id: ..., url: http://...}]') until "
                    "SIGTERM/Ctrl-C: decode with ffmpeg, forward ICY titles, reconnect with backoff; per-station "
                    "metrics on STREAMGENRE_RELAY_METRICS_PORT.")
    relay.add_argument("stations", type=Path, metavar="STATIONS_FILE")
    relay.set_defaults(handler=_cmd_relay)
