"""The relay's side channel: its Prometheus metrics and its ``/readyz`` answer.

Apart from :mod:`streamgenre.apps.relay` because SREs read these names on dashboards and alerts
(``deploy/prometheus/``) without needing the connection logic, and the relay's threads only call
the small methods here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.exposition import generate_latest


class RelayMetrics:
    """Per-station Prometheus metrics of one relay process (label ``station``)."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        station = ["station"]
        self.connected = Gauge("streamgenre_relay_connected",
                               "1 while the station is connected and its audio decodes.", station, registry=r)
        self.reconnects = Counter("streamgenre_relay_reconnects", "Reconnect attempts of a station.", station,
                                  registry=r)
        self.failures = Counter("streamgenre_relay_failures",
                                "Station connections that failed or ended, by reason (dns, http_status, connect, "
                                "bad_response, not_audio, stalled, no_audio, decoder_exit, ended).",
                                ["station", "reason"], registry=r)
        self.bytes = Counter("streamgenre_relay_bytes", "Stream bytes received (ICY metadata removed).", station,
                             registry=r)
        self.chunks = Counter("streamgenre_relay_chunks", "PCM chunks published.", station, registry=r)
        self.publish_errors = Counter("streamgenre_relay_publish_errors", "Chunks the broker did not acknowledge.",
                                      station, registry=r)
        self.last_audio_age = Gauge("streamgenre_relay_last_audio_age_seconds",
                                    "Seconds since the station's last decoded audio (since relay start if none).",
                                    station, registry=r)
        self.broker_up = Gauge("streamgenre_relay_broker_up",
                               "1 while the broker acknowledges the relay's chunks (0 after a failed publish).",
                               registry=r)
        self.broker_ok = True  # until a publish says otherwise
        self.broker_up.set(1)
        self._started = time.monotonic()
        self._last_audio: dict[str, float] = {}

    def publish_acknowledged(self, ok: bool) -> None:
        if ok != self.broker_ok:
            self.broker_ok = ok
            self.broker_up.set(1 if ok else 0)

    def add_station(self, station_id: str) -> None:
        """Create the station's series at zero, so a station that never connects is visible."""
        self.connected.labels(station_id).set(0)
        for counter in (self.reconnects, self.bytes, self.chunks, self.publish_errors):
            counter.labels(station_id)
        self._last_audio.setdefault(station_id, self._started)

    def audio_arrived(self, station_id: str) -> None:
        self._last_audio[station_id] = time.monotonic()

    def exposition(self) -> bytes:
        # The age is a function of the scrape time, so it is computed at the scrape.
        now = time.monotonic()
        for station_id, last in list(self._last_audio.items()):
            self.last_audio_age.labels(station_id).set(round(now - last, 3))
        return generate_latest(self.registry)


@dataclass
class RelayHealth:
    """``/readyz`` of the relay: ready while the broker acknowledges chunks; stations are listed, not required
    (one dead station must not get the whole relay restarted)."""

    broker_ok: bool
    stations: dict[str, bool]

    @property
    def ready(self) -> bool:
        return self.broker_ok

    def body(self) -> dict[str, object]:
        return {"ready": self.ready, "broker": "ok" if self.broker_ok else "unreachable",
                "stations": {sid: "connected" if up else "down" for sid, up in self.stations.items()}}
