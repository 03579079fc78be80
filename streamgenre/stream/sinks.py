"""Output sinks: the Kafka producer (predictions, events, DLQ) and the Redis pipeline.

The pipeline sees them only through the :class:`OutputSink` and :class:`CacheSink` protocols.

Kafka is the system of record; Redis is a cache of the latest state for dashboards and APIs.
So a Kafka failure stops progress (nothing is committed until outputs are acknowledged), while
a Redis failure only degrades: writes are retried for a bounded time, then skipped and
counted, and the daemon keeps publishing to Kafka.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import redis
from kafka import KafkaProducer
from kafka.errors import KafkaError
from kafka.producer.future import FutureRecordMetadata

from streamgenre.config import Settings

log = logging.getLogger(__name__)


class SinkError(RuntimeError):
    """Outputs could not be acknowledged; the caller must not commit past them."""


@dataclass(frozen=True)
class OutMessage:
    topic: str
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]] | None = None


class OutputSink(Protocol):
    """Where the pipeline sends predictions, events and dead letters: the system of record.

    The pipeline's commits rest on the counts: a checkpoint remembers :attr:`sent`, and its
    offsets become committable once :meth:`acknowledged` reaches it (see
    :meth:`streamgenre.stream.pipeline.Pipeline.checkpoint`). :class:`KafkaSink` is the one in
    production; the unit tests use fakes that fail on demand.
    """

    @property
    def sent(self) -> int:
        """Messages handed to :meth:`send` so far."""
        ...

    def send(self, message: OutMessage) -> None: ...

    def acknowledged(self) -> int:
        """How many of the sent messages, counted from the first, are acknowledged; may raise SinkError."""
        ...

    def flush(self, timeout_s: float = 30.0) -> None:
        """Block until everything sent is acknowledged; raise SinkError if it cannot be."""
        ...


class CacheSink(Protocol):
    """Latest value and timeline per stream (Redis): a cache, so a failed write is skipped, not retried."""

    @property
    def up(self) -> bool:
        """Whether the last write or ping succeeded."""
        ...

    def write(self, timeline: list[tuple[str, bytes]], latest: dict[str, bytes],
              segments: Sequence[tuple[str, bytes]] = ()) -> bool:
        """Append to timelines, set latest values, append closed segments; False when skipped."""
        ...


class KafkaSink:
    """Producer for every output topic; keeps unacknowledged messages so a retry can resend them.

    kafka-python's producer is idempotent by default; after a broker restart an open producer
    fails with ``UnknownProducerIdError`` for good, so on failure we close it, build a new one
    and resend everything not yet acknowledged (at-least-once: a consumer may see a duplicate,
    never a gap).
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # Sent and not yet acknowledged, in send order; everything before the head is acknowledged.
        self._pending: collections.deque[tuple[OutMessage, FutureRecordMetadata | None]] = collections.deque()
        self._acknowledged = 0
        self._producer: KafkaProducer | None = None

    def _connect(self) -> KafkaProducer:
        s = self.settings
        return KafkaProducer(
            bootstrap_servers=s.bootstrap_servers.split(","),
            client_id=f"streamgenre-{s.group_id}-out",
            acks="all",
            linger_ms=s.producer_linger_ms,
            compression_type=s.compression_type,
            # A DLQ message forwards the original bytes, which may be as large as the input limit.
            max_request_size=s.max_message_bytes + 65536,
            request_timeout_ms=10000,
            max_block_ms=10000,
            # Unread, and not free: its sensors cost ~15% of the producer's CPU per message.
            metrics_enabled=False,
            reconnect_backoff_max_ms=int(s.broker_retry_max_s * 1000),
            **s.kafka_security(),
        )

    def _send(self, message: OutMessage) -> FutureRecordMetadata | None:
        try:
            if self._producer is None:
                self._producer = self._connect()
            return self._producer.send(message.topic, key=message.key, value=message.value,
                                       headers=message.headers)
        except KafkaError as exc:
            log.warning("send failed, will retry on flush: %s", exc)
            return None

    def send(self, message: OutMessage) -> None:
        self._pending.append((message, self._send(message)))

    @property
    def sent(self) -> int:
        """Messages handed to :meth:`send` since this sink was created."""
        return self._acknowledged + len(self._pending)

    def acknowledged(self) -> int:
        """How many of the :attr:`sent` messages, counted from the first, the broker has
        acknowledged; never blocks while all is well.

        This is what lets the worker commit without waiting for acks (see
        :meth:`streamgenre.stream.pipeline.Pipeline.checkpoint`). A failed message at the head falls
        back to :meth:`flush`, which resends it and may raise SinkError.
        """
        while self._pending:
            future = self._pending[0][1]
            if future is not None and not future.is_done:
                break
            if future is None or future.failed():
                self.flush()
                break
            self._pending.popleft()
            self._acknowledged += 1
        return self._acknowledged

    def flush(self, timeout_s: float = 30.0) -> None:
        """Block until every message sent so far is acknowledged.

        Messages that failed are resent once on a fresh producer; if they fail again they stay
        pending and SinkError tells the caller not to commit past them.
        """
        for attempt in (1, 2):
            if self._producer is not None:
                try:
                    self._producer.flush(timeout=timeout_s)
                except KafkaError as exc:
                    log.warning("producer flush failed: %s", exc)
            failed = [m for m, f in self._pending if f is None or not f.succeeded()]
            if not failed:
                self._acknowledged += len(self._pending)
                self._pending.clear()
                return
            log.warning("%d output messages not acknowledged (attempt %d)", len(failed), attempt)
            self._reset()
            # The failed ones go again; the others keep their place, so a message counts as
            # acknowledged only once everything sent before it is (see acknowledged()).
            self._pending = collections.deque(
                (m, f if f is not None and f.succeeded() else self._send(m)) for m, f in self._pending
            )
        raise SinkError(f"{len(self._pending)} output messages not acknowledged by the broker")

    def _reset(self) -> None:
        if self._producer is not None:
            try:
                self._producer.close(timeout=1)
            except Exception as exc:  # closing a broken producer may fail in many ways; we replace it
                log.debug("closing failed producer: %s", exc)
        self._producer = None

    def close(self, timeout_s: float = 5.0) -> None:
        if self._producer is not None:
            self._producer.close(timeout=timeout_s)
            self._producer = None


class RedisSink:
    """Latest prediction and timeline per stream, written with one pipeline per batch.

    Keys: ``{prefix}:{stream_id}:latest`` (JSON string, TTL), ``{prefix}:{stream_id}:timeline``
    (Redis Stream, field ``json``, ``MAXLEN ~``, expiring ``redis_timeline_ttl_s`` to
    ``redis_timeline_ttl_s + timeline_renew_s`` after its last write) and
    ``{prefix}:{stream_id}:segments`` (closed segments: Redis Stream, field ``json``, ``MAXLEN ~``,
    expires ``redis_segments_ttl_s`` after its last segment).
    """

    def __init__(self, settings: Settings) -> None:
        self.prefix = settings.redis_prefix
        self.ttl_s = settings.redis_latest_ttl_s
        self.maxlen = settings.redis_timeline_maxlen
        self.timeline_ttl_s = settings.redis_timeline_ttl_s
        # An EXPIRE per window was a third of the daemon's Redis commands. Renewing a timeline's
        # TTL once per `timeline_renew_s`, set that much longer, keeps the promise (it lives at
        # least the TTL after its last write) with one EXPIRE per stream per interval.
        self.timeline_renew_s = min(600.0, self.timeline_ttl_s / 8)
        self._renew_due: dict[str, float] = {}  # stream id -> when its timeline's TTL is renewed next
        self._next_prune = 0.0
        self.segments_maxlen = settings.redis_segments_maxlen
        self.segments_ttl_s = settings.redis_segments_ttl_s
        self.retry_s = settings.redis_retry_s
        self.client = redis.Redis.from_url(
            settings.redis_url.get_secret_value(), socket_timeout=1.0, socket_connect_timeout=1.0
        )
        self.up = True

    def key(self, stream_id: str, kind: str) -> str:
        return f"{self.prefix}:{stream_id}:{kind}"

    def write(self, timeline: list[tuple[str, bytes]], latest: dict[str, bytes],
              segments: Sequence[tuple[str, bytes]] = ()) -> bool:
        """Append predictions to timelines, set latest values, append closed segments; False if
        skipped (Redis down).

        A failing write is retried for ``retry_s``, then Redis is marked down. While it is down,
        writes are skipped at once: this runs on the worker thread, and a Redis that hangs
        instead of refusing would otherwise cost a socket timeout per batch. Recovery is noticed
        by :meth:`ping`, which the daemon's poll thread calls every couple of seconds.
        """
        if not self.up:
            return False
        # MAXLEN bounds a long stream; the TTL frees the timeline of one that ended.
        renew = self._due_for_renewal(timeline) if self.timeline_ttl_s else []
        renewed_ttl_s = round(self.timeline_ttl_s + self.timeline_renew_s)
        deadline = time.monotonic() + self.retry_s
        while True:
            try:
                pipe = self.client.pipeline(transaction=False)
                for stream_id, value in timeline:
                    pipe.xadd(self.key(stream_id, "timeline"), {"json": value}, maxlen=self.maxlen, approximate=True)
                for stream_id in renew:
                    pipe.expire(self.key(stream_id, "timeline"), renewed_ttl_s)
                for stream_id, value in latest.items():
                    pipe.set(self.key(stream_id, "latest"), value, ex=self.ttl_s)
                for stream_id, value in segments:
                    key = self.key(stream_id, "segments")
                    pipe.xadd(key, {"json": value}, maxlen=self.segments_maxlen, approximate=True)
                    pipe.expire(key, self.segments_ttl_s)
                pipe.execute()
                self._renew_due.update(dict.fromkeys(renew, time.monotonic() + self.timeline_renew_s))
                return True
            except redis.RedisError as exc:
                if time.monotonic() >= deadline:
                    log.warning("redis down, skipping its writes until it answers: %s", exc)
                    self.up = False
                    return False
                time.sleep(0.1)

    def _due_for_renewal(self, timeline: list[tuple[str, bytes]]) -> list[str]:
        """The streams of ``timeline`` whose timeline TTL is due for renewal."""
        now = time.monotonic()
        if now >= self._next_prune:  # forget streams that stopped writing: the dict stays bounded
            self._renew_due = {s: due for s, due in self._renew_due.items() if due > now}
            self._next_prune = now + self.timeline_renew_s
        return [s for s in {s for s, _ in timeline} if self._renew_due.get(s, 0.0) <= now]

    def ping(self) -> bool:
        was_up = self.up
        try:
            self.up = bool(self.client.ping())
        except redis.RedisError:
            self.up = False
        if self.up and not was_up:
            log.info("redis is back")
            self._renew_due = {}  # a restarted Redis may have lost the keys with their TTLs
        return self.up

    def close(self) -> None:
        self.client.close()
