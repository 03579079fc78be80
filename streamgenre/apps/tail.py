"""``streamgenre tail``: a human-readable live timeline of the output topics.

Three things make it usable from the first minute: it waits for the output topics (and picks up
partitions that appear later) instead of failing when started before any prediction exists; it
holds lines for a moment and prints them in stream-time order across streams, not grouped by
partition as the broker hands them out; and it shows each window's stream time as HH:MM:SS.
"""

from __future__ import annotations

import heapq
import itertools
import json
import sys
import threading
import time
from collections.abc import Callable

from kafka import KafkaConsumer, TopicPartition

from streamgenre.config import Settings

# How often the topics' partitions are looked up again (a metadata request, cheap).
TOPIC_REFRESH_S = 2.0
# How long a line waits for earlier lines of other streams, which another partition may deliver a
# little later: long enough to order one poll round, short enough to still feel live.
REORDER_HOLD_S = 1.0


def stream_clock(epoch_s: float) -> str:
    """HH:MM:SS of a point on the producer's clock (the ``ts`` header, epoch based), local time."""
    return time.strftime("%H:%M:%S", time.localtime(epoch_s))


def format_prediction(p: dict) -> str:
    # Genre only while music; otherwise the content state (speech, mixed, silence) takes its place.
    genre = p.get("smoothed_genre")
    if genre is None:
        label = f"{p.get('state', '?'):<10} {p.get('state_probs', {}).get(p.get('state'), 0.0):.2f}"
        change = ""
    else:
        label = f"{genre:<10} {p['smoothed_probs'][genre]:.2f}"
        change = "" if p["genre"] == genre else f" (now {p['genre']} {p['confidence']:.2f})"
    title = f"  \u266a {p['title']}" if p.get("title") else ""
    return (f"{stream_clock(p['t_start'])}  {p['stream_id']:<28.28}  "
            f"{label}{change}  [{p['latency_ms']:.0f} ms]{title}")


def format_event(e: dict) -> str:
    return (f"{stream_clock(e['at_t'])}  {e['stream_id']:<28.28}  "
            f">>> {e['from'] or '(start)'} -> {e['to']} ({e['confidence']:.2f})")


class TimeOrder:
    """Holds lines for ``hold_s`` after they arrive and releases them in stream-time order.

    Pure (the caller passes the clock), so the ordering is unit-tested without a broker. A line
    leaves once it is the earliest held and has waited ``hold_s``: a late line of an earlier
    window still overtakes every later one that arrived less than ``hold_s`` before it.
    """

    def __init__(self, hold_s: float = REORDER_HOLD_S) -> None:
        self.hold_s = hold_s
        self._held: list[tuple[float, int, float, str]] = []
        self._arrivals = itertools.count()

    def add(self, stream_time: float, line: str, now: float) -> None:
        heapq.heappush(self._held, (stream_time, next(self._arrivals), now, line))

    def due(self, now: float) -> list[str]:
        lines = []
        while self._held and now - self._held[0][2] >= self.hold_s:
            lines.append(heapq.heappop(self._held)[3])
        return lines

    def drain(self) -> list[str]:
        return [heapq.heappop(self._held)[3] for _ in range(len(self._held))]


def _partitions(consumer: KafkaConsumer, topics: list[str]) -> set[TopicPartition]:
    consumer.topics()  # refreshes the cluster metadata: new topics and partitions show up
    return {TopicPartition(t, p) for t in topics for p in consumer.partitions_for_topic(t) or ()}


def follow(settings: Settings, stop: threading.Event, emit: Callable[[str], None] = print,
           timeout_s: float | None = None, max_messages: int | None = None,
           notice: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True)) -> int:
    """Print predictions and genre-change events until ``stop`` is set, a timeout or a count.

    Reads every partition from the beginning without joining a group, so watching never
    disturbs the daemon's group or commits anything. ``notice`` gets the one-off status lines
    (waiting for the topics).
    """
    consumer = KafkaConsumer(bootstrap_servers=settings.bootstrap_servers.split(","), enable_auto_commit=False,
                             bootstrap_timeout_ms=int(1000 * settings.cli_broker_timeout_s),
                             **settings.kafka_security())
    topics = [settings.output_topic, settings.events_topic]
    assigned: set[TopicPartition] = set()
    order = TimeOrder()
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    next_lookup, waiting_said, seen = 0.0, False, 0

    def release(lines: list[str]) -> bool:
        """Emit ``lines``; True once ``max_messages`` are out."""
        nonlocal seen
        for line in lines:
            emit(line)
            seen += 1
            if max_messages is not None and seen >= max_messages:
                return True
        return False

    try:
        while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
            if time.monotonic() >= next_lookup:
                next_lookup = time.monotonic() + TOPIC_REFRESH_S
                new = _partitions(consumer, topics) - assigned
                if new:
                    assigned |= new
                    consumer.assign(sorted(assigned))  # positions of the partitions we had are kept
                    consumer.seek_to_beginning(*new)
            if not assigned:
                if not waiting_said:
                    notice(f"waiting for topics {', '.join(topics)} (nothing classified yet)")
                    waiting_said = True
                stop.wait(0.2)
                continue
            for tp, messages in consumer.poll(timeout_ms=200).items():
                for message in messages:
                    payload = json.loads(message.value)
                    if tp.topic == settings.events_topic:
                        order.add(payload["at_t"], format_event(payload), time.monotonic())
                    else:
                        order.add(payload["t_start"], format_prediction(payload), time.monotonic())
            if release(order.due(time.monotonic())):
                return seen
        release(order.drain())
    finally:
        consumer.close()
    return seen
