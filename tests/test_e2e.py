"""End to end on the real embedded broker and the real Redis: many streams, mixed formats."""

from __future__ import annotations

import json
import threading
import urllib.request
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import redis
import soundfile as sf
from kafka import KafkaProducer

from streamgenre.apps.tail import follow
from streamgenre.config import Settings
from streamgenre.model.contract import load_spec
from streamgenre.stream.messages import SCHEMA_DIR
from streamgenre.stream.streamstate import grid_phase
from streamgenre.stream.wire import chunk_headers
from tests.audio import chunked_stream, expected_window_seqs, tone_mix
from tests.conftest import REDIS_URL, SHARED, predictions, read_topic, running_daemon

pytestmark = pytest.mark.integration

RATES = [8000, 16000, 22050, 44100, 48000, 96000, 11025]
FORMATS = ["s16le", "f32le", "wav", "flac", "ogg"]
N_STREAMS = 56
SECONDS = 4.3


def _send_streams(settings: Settings, model_path: Path) -> dict[str, list[int]]:
    """Produce N_STREAMS streams, interleaved chunk by chunk; return expected window seqs."""
    spec = load_spec(model_path)
    recipe = spec.recipe
    hop_samples = spec.hop_frames * recipe.hop_length
    rng = np.random.default_rng(42)
    producer = KafkaProducer(bootstrap_servers=settings.bootstrap_servers, linger_ms=5)
    expected: dict[str, list[int]] = {}
    streams = []
    for i in range(N_STREAMS):
        rate, fmt = RATES[i % len(RATES)], FORMATS[i % len(FORMATS)]
        channels = 1 + i % 2
        audio = tone_mix(SECONDS, rate, channels, seed=i)
        start_ms = 1_760_000_000_000 + int(rng.integers(0, 100_000))
        sizes = [int(s) for s in rng.integers(int(0.05 * rate), int(0.9 * rate), size=7)]
        chunks = chunked_stream(audio, rate, fmt, start_ms, sizes)
        stream_id = f"station-{i:03d}-{fmt}-{rate}"
        n_input = sum(c.n_samples for c in chunks)
        expected[stream_id] = expected_window_seqs(stream_id, start_ms, n_input, rate, recipe.sample_rate, hop_samples,
                                                   recipe.window_samples)
        streams.append((stream_id, chunks))
    for index in range(max(len(c) for _, c in streams)):
        for stream_id, chunks in streams:
            if index < len(chunks):
                producer.send(settings.input_topic, key=stream_id.encode(), value=chunks[index].value,
                              headers=chunks[index].headers)
    producer.flush()
    producer.close()
    return expected


def test_many_streams_every_window_once_in_order(settings: Settings, test_model: Path) -> None:
    schema = json.loads((SCHEMA_DIR / "prediction.schema.json").read_text())
    spec = load_spec(test_model)
    with running_daemon(settings) as daemon:
        expected = _send_streams(settings, test_model)
        total = sum(len(v) for v in expected.values())
        assert total >= 3 * N_STREAMS
        messages = read_topic(settings.bootstrap_servers, settings.output_topic, total)
        metrics_page = urllib.request.urlopen(f"http://127.0.0.1:{settings.metrics_port}/metrics").read().decode()
        ready = urllib.request.urlopen(f"http://127.0.0.1:{settings.metrics_port}/readyz")
        assert ready.status == 200 and json.loads(ready.read())["ready"] is True
        assert daemon.metrics.dlq_messages._metrics == {}, "no good chunk may end in the DLQ"

    seen: dict[str, list[int]] = {}
    for message, payload in zip(messages, predictions(messages), strict=True):
        jsonschema.validate(payload, schema)
        assert message.key.decode() == payload["stream_id"]
        seen.setdefault(payload["stream_id"], []).append(payload["window_seq"])
        # Timing fields: grid position, window length, ts = window end in ms.
        assert payload["t_end"] - payload["t_start"] == pytest.approx(spec.window_s, abs=1e-3)
        hop = spec.hop_frames * spec.recipe.hop_length / spec.recipe.sample_rate
        rate = spec.recipe.sample_rate
        phase = grid_phase(payload["stream_id"], spec.hop_frames * spec.recipe.hop_length, rate) / rate
        assert payload["t_start"] == pytest.approx(payload["window_seq"] * hop + phase, abs=1e-3)
        assert payload["ts"] == round(payload["t_end"] * 1000)
        assert 0 <= payload["latency_ms"] < 60_000
        assert payload["model_version"] == spec.version
        assert sum(payload["probs"].values()) == pytest.approx(1.0, abs=1e-3)
    assert seen == expected  # every expected window, exactly once, in order, per stream

    client = redis.Redis.from_url(REDIS_URL)
    for stream_id, seqs in expected.items():
        timeline = client.xrange(f"{settings.redis_prefix}:{stream_id}:timeline")
        assert [json.loads(fields[b"json"])["window_seq"] for _, fields in timeline] == seqs
        latest = json.loads(client.get(f"{settings.redis_prefix}:{stream_id}:latest"))
        assert latest["window_seq"] == seqs[-1]
        assert 0 < client.ttl(f"{settings.redis_prefix}:{stream_id}:latest") <= settings.redis_latest_ttl_s

    for name in ("streamgenre_window_latency_seconds_bucket", "streamgenre_e2e_latency_seconds_count",
                 "streamgenre_inference_seconds_count", "streamgenre_batch_size_bucket",
                 "streamgenre_chunks_total", "streamgenre_bytes_total", "streamgenre_active_streams",
                 "streamgenre_consumer_lag"):
        assert name in metrics_page
    assert f"streamgenre_windows_total {float(total)}" in metrics_page


def test_genre_events_follow_smoothed_changes(settings: Settings) -> None:
    """Every event names a change of smoothed genre seen in the predictions; tail shows them all."""
    with running_daemon(settings):
        expected = _send_streams(settings, settings.model_path)
        total = sum(len(v) for v in expected.values())
        messages = predictions(read_topic(settings.bootstrap_servers, settings.output_topic, total))
        events = predictions(read_topic(settings.bootstrap_servers, settings.events_topic, len(expected)))
        lines: list[str] = []
        follow(settings, threading.Event(), emit=lines.append, timeout_s=30, max_messages=total + len(events))
    schema = json.loads((SCHEMA_DIR / "event.schema.json").read_text())
    assert sum(">>>" in line for line in lines) == len(events)  # tail shows every event
    assert sum(">>>" not in line for line in lines) == total  # and one line per prediction
    firsts = {e["stream_id"] for e in events if e["from"] is None}
    assert firsts == set(expected), "each stream announces its first genre once"
    for event in events:
        jsonschema.validate(event, schema)
        stream = [m for m in messages if m["stream_id"] == event["stream_id"]]
        assert event["to"] in {m["smoothed_genre"] for m in stream}


def test_whole_song_in_one_message_is_classified(settings: Settings, test_model: Path) -> None:
    """An upload platform's case: a 61 s stereo 44.1 kHz Ogg (1.45 MB) as one audio/ogg + eos message.

    It used to be dead-lettered as a decompression bomb (the limit was max_message_bytes / 4
    decoded samples); now decoded audio is bounded by duration and decoded block by block.
    """
    song = SHARED / "data" / "examples" / "macleod_vibe_ace.ogg"
    if not song.is_file():
        pytest.skip(f"{song} is absent (shared data not mounted)")
    spec = load_spec(test_model)
    info = sf.info(str(song))
    assert info.duration > 60 and info.channels == 2 and info.samplerate == 44100
    stream_id, start_ms = "upload-macleod", 1_760_000_000_000
    expected = expected_window_seqs(stream_id, start_ms, info.frames, info.samplerate, spec.recipe.sample_rate,
                                    spec.hop_frames * spec.recipe.hop_length, spec.recipe.window_samples)
    with running_daemon(settings) as daemon:
        producer = KafkaProducer(bootstrap_servers=settings.bootstrap_servers, max_request_size=1 << 24)
        producer.send(settings.input_topic, key=stream_id.encode(), value=song.read_bytes(),
                      headers=chunk_headers("audio/ogg", 0, start_ms, eos=True))
        producer.flush()
        producer.close()
        messages = predictions(read_topic(settings.bootstrap_servers, settings.output_topic, len(expected)))
        assert daemon.metrics.dlq_messages._metrics == {}, "the song must not be dead-lettered"
    assert [m["window_seq"] for m in messages] == expected
    assert {m["stream_id"] for m in messages} == {stream_id}
