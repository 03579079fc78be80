"""Kafka source: consumer group membership, polling, pause/resume and offset commits.

kafka-python's consumer is not thread-safe, so everything that touches it (poll, pause,
resume, commit, the rebalance callbacks) runs on the daemon's poll thread; the worker thread
only ever hands it offsets to commit. Offsets are never auto-committed: the daemon commits a
partition only up to the oldest chunk an open window still needs, after the outputs that
depend on everything before it are acknowledged (see :mod:`streamgenre.stream.daemon`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.structs import OffsetAndMetadata

from streamgenre.config import Settings

log = logging.getLogger(__name__)

BOOTSTRAP_TIMEOUT_MS = 5000
COMMIT_TIMEOUT_MS = 5000


@dataclass(frozen=True)
class Record:
    """One consumed message, with the monotonic time the poll thread received it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]
    received_at: float


class _Listener(ConsumerRebalanceListener):
    def __init__(self, on_revoked: Callable[[set[int]], None], on_assigned: Callable[[set[int]], None]) -> None:
        self._on_revoked, self._on_assigned = on_revoked, on_assigned

    def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        self._on_revoked({tp.partition for tp in revoked})

    def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        self._on_assigned({tp.partition for tp in assigned})


class ChunkSource:
    """The consumer side of the daemon, owned by the poll thread."""

    def __init__(self, settings: Settings, on_revoked: Callable[[set[int]], None],
                 on_assigned: Callable[[set[int]], None]) -> None:
        self.topic = settings.input_topic
        self._consumer = KafkaConsumer(
            bootstrap_servers=settings.bootstrap_servers.split(","),
            group_id=settings.group_id,
            client_id=f"streamgenre-{settings.group_id}",
            enable_auto_commit=False,
            # 'latest' would skip audio that arrived while no member held the partition; with
            # committed offsets 'earliest' only applies to a brand-new group.
            auto_offset_reset="earliest",
            session_timeout_ms=settings.session_timeout_ms,
            heartbeat_interval_ms=settings.heartbeat_interval_ms,
            max_poll_interval_ms=settings.max_poll_interval_ms,
            max_partition_fetch_bytes=max(1 << 20, settings.max_message_bytes + 65536),
            fetch_max_bytes=max(52428800, settings.max_message_bytes + 65536),
            fetch_max_wait_ms=settings.fetch_max_wait_ms,
            fetch_min_bytes=settings.fetch_min_bytes,
            reconnect_backoff_max_ms=int(settings.broker_retry_max_s * 1000),
            # Construction blocks until the broker answers; bounded so the daemon's own backoff
            # loop (and a SIGTERM during it) keeps control while the broker is down.
            bootstrap_timeout_ms=BOOTSTRAP_TIMEOUT_MS,
            # kafka-python's own sensors are updated per fetch and per record in Python; the
            # daemon exports what it needs through prometheus_client and never reads them.
            metrics_enabled=False,
            **settings.kafka_security(),
        )
        self._consumer.subscribe([self.topic], listener=_Listener(on_revoked, on_assigned))

    def poll(self, timeout_ms: int, max_records: int = 500) -> list[Record]:
        batches = self._consumer.poll(timeout_ms=timeout_ms, max_records=max_records)
        now = time.monotonic()
        return [
            Record(m.topic, m.partition, m.offset, m.key, m.value, list(m.headers or []), now)
            for messages in batches.values() for m in messages
        ]

    def assigned(self) -> set[int]:
        return {tp.partition for tp in self._consumer.assignment()}

    def pause(self, partitions: set[int]) -> None:
        self._consumer.pause(*[TopicPartition(self.topic, p) for p in partitions])

    def resume(self, partitions: set[int]) -> None:
        self._consumer.resume(*[TopicPartition(self.topic, p) for p in partitions])

    def commit(self, offsets: dict[int, int]) -> None:
        """Synchronously commit ``partition -> next offset to read``.

        Bounded: without a timeout kafka-python retries a commit until the coordinator is back,
        which during a broker outage would freeze the poll thread (no readiness updates, no
        SIGTERM handling). A timed-out commit raises KafkaTimeoutError; the next checkpoint
        commits the same or a later offset.
        """
        if offsets:
            self._consumer.commit({
                TopicPartition(self.topic, p): OffsetAndMetadata(o, "", -1) for p, o in offsets.items()
            }, timeout_ms=COMMIT_TIMEOUT_MS)

    def lag(self) -> dict[int, int]:
        """Records between our position and the fetch high-water mark, per assigned partition.

        From ``highwater()`` (the last fetch response) rather than ``end_offsets()``: it costs
        no request, and some Kafka-API brokers answer list-offsets imprecisely.
        """
        lag: dict[int, int] = {}
        for tp in self._consumer.assignment():
            high = self._consumer.highwater(tp)
            if high is not None:
                lag[tp.partition] = max(0, high - self._consumer.position(tp))
        return lag

    def connected(self) -> bool:
        """True while the consumer holds a live connection to a broker (readiness).

        kafka-python 3's ``bootstrap_connected()`` is only true *during* the bootstrap, and the
        assignment survives a broker outage, so neither tells whether the broker answers now.
        A member always keeps its coordinator (heartbeats) and fetch connections open, so
        "any connection up" is the live signal.
        """
        client = self._consumer._client  # no public accessor for connection state
        return any(client.connected(node) for node in list(client._manager._conns))

    def close(self) -> None:
        self._consumer.close(autocommit=False)
