"""One targeted message per dead-letter reason, through a real daemon, broker and Redis.

A single daemon run receives one bad message per :class:`Reason` (plus a good stream, which
must not be dead-lettered); each parametrized test then checks that reason's DLQ message: the
exact ``dlq-reason`` header, the original key, bytes and headers, and the per-reason counter.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from kafka import KafkaProducer

from streamgenre.apps.devbroker import DevBroker, ensure_topics
from streamgenre.stream.wire import Reason, chunk_headers
from tests.conftest import isolated_settings, running_daemon
from tests.faults_harness import TopicReader, make_streams, wait_all_windows
from tests.faults_hostile import MAX_BYTES, flac_claiming, wav_claiming

pytestmark = pytest.mark.fault

PCM16 = chunk_headers("audio/pcm;format=s16le", 0, 1_000, 16000, 1)
CASES: dict[str, tuple[Reason, bytes | None, bytes, list[tuple[str, bytes]]]] = {
    "empty_payload": (Reason.EMPTY_PAYLOAD, b"s", b"", PCM16),
    "oversized": (Reason.OVERSIZED, b"s", b"\x00" * (MAX_BYTES + 2), PCM16),
    # Larger than the producer accepts (max_message_bytes + 64 KiB): forwarded cut, not whole.
    "oversized_beyond_producer_limit": (Reason.OVERSIZED, b"s", b"\x01" * (2 * MAX_BYTES + 70_000), PCM16),
    "bad_key": (Reason.BAD_KEY, b"\xff\xferadio", b"\x00\x00", PCM16),
    # What `ingest --stream-id ""` or a 100,000-character id used to publish (issue 17.3).
    "empty_key": (Reason.BAD_KEY, b"", b"\x00\x00", PCM16),
    "overlong_key": (Reason.BAD_KEY, b"x" * 100_000, b"\x00\x00", PCM16),
    "missing_header": (Reason.MISSING_HEADER, b"s", b"\x00\x00", [h for h in PCM16 if h[0] != "ts"]),
    "invalid_header": (
        Reason.INVALID_HEADER,
        b"s",
        b"\x00\x00",
        [(n, b"twelve" if n == "seq" else v) for n, v in PCM16],
    ),
    "unknown_content_type": (
        Reason.UNKNOWN_CONTENT_TYPE,
        b"s",
        b"\x00\x00",
        chunk_headers("audio/mpeg", 0, 1_000),
    ),
    "sample_rate_out_of_range": (
        Reason.SAMPLE_RATE_OUT_OF_RANGE,
        b"s",
        b"\x00\x00",
        chunk_headers("audio/pcm;format=s16le", 0, 1_000, 4000, 1),
    ),
    "truncated_pcm": (Reason.TRUNCATED_PCM, b"s", b"\x00\x00\x00", PCM16),
    "non_finite_samples": (
        Reason.NON_FINITE_SAMPLES,
        b"s",
        np.array([0.1, np.nan], "<f4").tobytes(),
        chunk_headers("audio/pcm;format=f32le", 0, 1_000, 16000, 1),
    ),
    "corrupt_container": (
        Reason.CORRUPT_CONTAINER,
        b"s",
        wav_claiming(2**30, 64),
        chunk_headers("audio/wav", 0, 1_000),
    ),
    # ~100 bytes declaring three hours, against the default limit (20 minutes of audio).
    "decompression_bomb": (
        Reason.DECOMPRESSION_BOMB,
        b"s",
        flac_claiming(3 * 3600),
        chunk_headers("audio/flac", 0, 1_000),
    ),
}


@pytest.fixture(scope="module")
def dead_letters(broker: DevBroker, test_model: Path) -> Iterator[tuple[dict[str, object], dict[str, float]]]:
    """Run one daemon over every case; yield (reason -> DLQ message, reason -> counter value)."""
    settings = isolated_settings(broker.bootstrap, test_model, f"sgtest-{uuid.uuid4().hex[:8]}",
                                 max_message_bytes=MAX_BYTES)
    ensure_topics(settings, partitions=4)
    good = make_streams(test_model, 1, 3.0, prefix="dlqgood", rates=(16000,), max_channels=1)
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, max_request_size=1 << 24)
    dlq = TopicReader(broker.bootstrap, settings.dlq_topic)
    out = TopicReader(broker.bootstrap, settings.output_topic)

    def send_case(case: str) -> None:
        _, key, value, headers = CASES[case]
        producer.send(settings.input_topic, key=key, value=value, headers=[*headers, ("case", case.encode())])

    try:
        with running_daemon(settings) as daemon:
            for index, chunk in enumerate(good[0].chunks):
                producer.send(
                    settings.input_topic,
                    key=good[0].stream_id.encode(),
                    value=chunk.value,
                    headers=chunk.headers,
                )
                if index < len(CASES):
                    send_case(list(CASES)[index])
            for case in list(CASES)[len(good[0].chunks):]:  # more cases than the good stream has chunks
                send_case(case)
            producer.flush(30)
            messages = dlq.until(lambda m: len(m) >= len(CASES), 60, "one DLQ message per case")
            wait_all_windows(out, good, 60, "the good stream's windows")
            counters = {
                labels[0]: child._value.get()
                for labels, child in daemon.metrics.dlq_messages._metrics.items()
            }
    finally:
        producer.close()
        dlq.close()
        out.close()
    assert len(messages) == len(CASES), "the good stream must not be dead-lettered"
    yield {dict(m.headers)["case"].decode(): m for m in messages}, counters


@pytest.mark.parametrize("case", list(CASES))
def test_reason_header_original_bytes_and_counter(dead_letters: tuple[dict, dict], case: str) -> None:
    messages, counters = dead_letters
    message = messages[case]
    reason, key, value, headers = CASES[case]
    got = dict(message.headers)
    assert got["dlq-reason"] == reason.value.encode()
    assert got["dlq-detail"]  # a human-readable explanation
    assert (message.key or b"") == (key or b"")
    if len(value) > MAX_BYTES:
        assert message.value == value[:MAX_BYTES] and got["dlq-original-bytes"] == str(len(value)).encode()
    else:
        assert (message.value or b"") == value and "dlq-original-bytes" not in got
    assert [h for h in message.headers if not h[0].startswith("dlq-")] == [*headers, ("case", case.encode())]
    expected_count = sum(r is reason for r, *_ in CASES.values())
    assert counters[reason.value] == float(expected_count)
