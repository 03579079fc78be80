"""The relay's pure parts: the stations file, reconnect backoff, ICY metadata and failure reasons.

No I/O here (``streamgenre.apps.relay`` does the sockets and processes), so every rule about
what a station file may say, how long to wait before reconnecting and how an ICY stream is
taken apart is unit-tested without a network (``tests/test_radio_units.py``).
"""

from __future__ import annotations

import http.client
import random
import re
import socket
import urllib.error
from dataclasses import dataclass

import yaml

from streamgenre.stream.wire import BadInput, validate_stream_id

LIVE_SCHEMES = ("http://", "https://")
# Content types that are certainly not an audio stream (a portal's HTML page, an API's error
# body); anything else (audio/*, application/ogg, octet-stream, none) goes to the decoder.
NOT_AUDIO_TYPES = ("text/", "application/json", "application/xml", "application/xhtml", "image/", "video/")
# ffmpeg's demuxer for a station's declared type. Probing a stream joined mid-frame reads ~5 s of
# audio before the first sample comes out; the hint makes that ~0.3 s. Only a hint: after a
# connection that decoded nothing, the relay probes instead (a server may mislabel its stream).
FORMAT_HINTS = {
    "audio/mpeg": "mp3", "audio/mp3": "mp3", "audio/aac": "aac", "audio/aacp": "aac", "audio/x-aac": "aac",
    "application/ogg": "ogg", "audio/ogg": "ogg", "audio/flac": "flac", "audio/x-flac": "flac",
}
_STREAM_TITLE = re.compile(rb"StreamTitle='(.*?)';", re.DOTALL)


class StationsError(ValueError):
    """A stations file that cannot be used; the message names the problem and the entry."""


@dataclass(frozen=True)
class Station:
    id: str
    url: str


def is_live_url(source: str) -> bool:
    """``http(s)://`` sources are live stations (reconnected forever); files and the rest are not."""
    return source.lower().startswith(LIVE_SCHEMES)


def check_station(station_id: object, url: object, where: str = "") -> Station:
    """A station whose id the daemon accepts as a Kafka key (else every chunk would be dead-lettered)."""
    if not isinstance(station_id, str):
        raise StationsError(f"{where}id must be a string, got {station_id!r}")
    try:
        validate_stream_id(station_id)
    except BadInput as exc:
        raise StationsError(f"{where}id {station_id[:40]!r}: {exc.detail}") from exc
    if not isinstance(url, str) or not is_live_url(url):
        raise StationsError(f"{where}url must be an http:// or https:// URL, got {url!r}")
    return Station(station_id, url)


def parse_stations(text: str) -> list[Station]:
    """Stations from YAML: ``stations: [{id: radio-1, url: http://...}, ...]``.

    Ids must be unique: one id is one Kafka key, and two stations on one key would interleave
    their audio into nonsense windows.
    """
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise StationsError(f"not valid YAML: {exc}") from exc
    entries = document.get("stations") if isinstance(document, dict) else None
    if not isinstance(entries, list) or not entries:
        raise StationsError("expected a top-level 'stations:' list with at least one {id, url} entry")
    stations: list[Station] = []
    for index, entry in enumerate(entries):
        where = f"stations[{index}]: "
        if not isinstance(entry, dict) or set(entry) - {"id", "url"}:
            raise StationsError(f"{where}expected a mapping with keys 'id' and 'url', got {entry!r}")
        stations.append(check_station(entry.get("id"), entry.get("url"), where))
    ids = [station.id for station in stations]
    duplicates = sorted({sid for sid in ids if ids.count(sid) > 1})
    if duplicates:
        raise StationsError(f"duplicate station ids: {', '.join(duplicates)}")
    return stations


def format_hint(content_type: str) -> str | None:
    """ffmpeg ``-f`` for a ``Content-Type`` header (parameters and case ignored), None to probe."""
    return FORMAT_HINTS.get(content_type.split(";", 1)[0].strip().lower())


def backoff_s(attempt: int, initial_s: float, max_s: float, rng: random.Random) -> float:
    """Delay before reconnect ``attempt`` (0 = first): exponential, capped, with jitter.

    The jitter draws from the upper half of the capped delay ("equal jitter"): after a shared
    outage (the broadcaster's CDN, our network) hundreds of stations would otherwise reconnect
    in the same instant, yet no delay falls below half of what the schedule asks for.
    """
    capped = min(max_s, initial_s * 2.0 ** min(attempt, 62))
    return capped / 2 + rng.uniform(0, capped / 2)


def segment_start_ms(previous_end_ms: int, now_ms: int, first_block_ms: int) -> int:
    """``ts`` of a new connection's first sample: the wall clock, but never before the previous
    connection's audio ended.

    A station's ``ts`` runs ahead of the wall clock by what it sent faster than real time (Icecast's
    burst on connect, a server that floods): anchored on the clock alone, a quick reconnect would
    go back in stream time and reuse ``window_seq`` values that consumers already hold for other
    audio.
    """
    return max(previous_end_ms, now_ms - first_block_ms)


def parse_stream_title(metadata: bytes) -> str | None:
    """The ``StreamTitle`` of one ICY metadata block; None when the block carries none.

    ICY has no declared charset: UTF-8 where it decodes, else Latin-1 (what SHOUTcast-era
    encoders send), so a title never raises.
    """
    match = _STREAM_TITLE.search(metadata)
    if match is None:
        return None
    raw = match.group(1)
    try:
        title = raw.decode("utf-8")
    except UnicodeDecodeError:
        title = raw.decode("latin-1")
    return title.strip()


class IcyDemuxer:
    """Splits an ICY stream into audio bytes and titles, across arbitrary read boundaries.

    With ``Icy-MetaData: 1`` the server inserts, after every ``metaint`` audio bytes, one length
    byte ``n`` and ``16 n`` bytes of metadata (``StreamTitle='...';`` padded with NULs). Parsed by
    hand because no maintained library does this incremental split, and ffmpeg's own ICY support
    only reports titles in its log, not in step with the audio we pipe on.
    """

    def __init__(self, metaint: int | None) -> None:
        self.metaint = metaint
        self._audio_left = metaint or 0  # audio bytes before the next length byte
        self._meta_left: int | None = None  # metadata bytes still to read, None outside a block
        self._meta = bytearray()

    def feed(self, data: bytes) -> tuple[bytes, str | None]:
        """Audio bytes of ``data`` and the last title completed in it (None if none)."""
        if not self.metaint:
            return data, None
        audio = bytearray()
        title: str | None = None
        view = memoryview(data)
        while view:
            if self._meta_left is None and self._audio_left:
                take = min(self._audio_left, len(view))
                audio += view[:take]
                view, self._audio_left = view[take:], self._audio_left - take
            elif self._meta_left is None:
                self._meta_left = 16 * view[0]
                view = view[1:]
                self._meta.clear()
            else:
                take = min(self._meta_left, len(view))
                self._meta += view[:take]
                view, self._meta_left = view[take:], self._meta_left - take
            if self._meta_left == 0:
                found = parse_stream_title(bytes(self._meta)) if self._meta else None
                title = found if found is not None else title
                self._meta_left, self._audio_left = None, self.metaint
        return bytes(audio), title


def failure_reason(exc: BaseException) -> str:
    """A short, stable label (log line and metric) for why a station connection failed."""
    if isinstance(exc, urllib.error.HTTPError):
        return "http_status"
    if isinstance(exc, urllib.error.URLError):
        if isinstance(exc.reason, socket.gaierror):
            return "dns"
        if isinstance(exc.reason, TimeoutError):
            return "stalled"
        return "connect"
    if isinstance(exc, TimeoutError):
        return "stalled"
    if isinstance(exc, http.client.RemoteDisconnected):  # also a ConnectionResetError: the server hung up
        return "connect"
    if isinstance(exc, http.client.HTTPException):  # not HTTP (e.g. SHOUTcast v1's "ICY 200 OK"), truncated
        return "bad_response"
    if isinstance(exc, OSError):
        return "connect"
    return "internal_error"
