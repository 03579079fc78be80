"""``streamgenre tail``: a human-readable live timeline of the output topics."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable

from kafka import KafkaConsumer, TopicPartition

from streamgenre.config import Settings


def format_prediction(p: dict) -> str:
    clock = time.strftime("%H:%M:%S", time.localtime(p["ts"] / 1000))
    # Genre only while music; otherwise the content state (speech, mixed, silence) takes its place.
    genre = p.get("smoothed_genre")
    if genre is None:
        label = f"{p.get('state', '?'):<10} {p.get('state_probs', {}).get(p.get('state'), 0.0):.2f}"
        change = ""
    else:
        label = f"{genre:<10} {p['smoothed_probs'][genre]:.2f}"
        change = "" if p["genre"] == genre else f" (now {p['genre']} {p['confidence']:.2f})"
    title = f"  \u266a {p['title']}" if p.get("title") else ""
    return (f"{clock}  {p['stream_id']:<28.28} #{p['window_seq'] % 100000:>5}  "
            f"{label}{change}  [{p['latency_ms']:.0f} ms]{title}")


def format_event(e: dict) -> str:
    return f"{'':8}  {e['stream_id']:<28.28} >>> {e['from'] or '(start)'} -> {e['to']} ({e['confidence']:.2f})"


def follow(settings: Settings, stop: threading.Event, emit: Callable[[str], None] = print,
           timeout_s: float | None = None, max_messages: int | None = None) -> int:
    """Print predictions and genre-change events until ``stop`` is set, a timeout or a count.

    Reads every partition from the beginning without joining a group, so watching never
    disturbs the daemon's group or commits anything.
    """
    consumer = KafkaConsumer(bootstrap_servers=settings.bootstrap_servers.split(","), enable_auto_commit=False,
                             **settings.kafka_security())
    topics = [settings.output_topic, settings.events_topic]
    partitions = [TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or [])]
    consumer.assign(partitions)
    consumer.seek_to_beginning(*partitions)
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    seen = 0
    try:
        while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
            for tp, messages in consumer.poll(timeout_ms=200).items():
                for message in messages:
                    payload = json.loads(message.value)
                    emit(format_event(payload) if tp.topic == settings.events_topic else format_prediction(payload))
                    seen += 1
                    if max_messages is not None and seen >= max_messages:
                        return seen
    finally:
        consumer.close()
    return seen
