"""Song -> speech -> silence -> song through the real broker, Redis and the shipped models.

Real audio from ``../shared/data/examples`` (a jazz track, two LibriSpeech clips, a country
track) with 18 s of near-silence between speech and the second song, as one live stream with
now-playing titles. Checks the published segments, the dead-air alerts, the Redis copy and the
report built from it.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import redis
import soundfile as sf
from kafka import KafkaProducer

from streamgenre.apps.report import build_report
from streamgenre.config import SHIPPED_CONTENT_MODEL, SHIPPED_MODEL
from streamgenre.model.features import resample, to_mono
from streamgenre.stream.messages import SegmentMessage, StreamAlert
from streamgenre.stream.wire import chunk_headers
from tests.conftest import REDIS_URL, SHARED, isolated_settings, read_topic, running_daemon

pytestmark = pytest.mark.integration

EXAMPLES = SHARED / "data" / "examples"
RATE = 16000
START_MS = 1_764_000_000_000
CHUNK = RATE // 2
PROGRAMME = [  # (file or None for silence, seconds, title)
    ("macleod_vibe_ace.ogg", 30.0, "Kevin MacLeod - Vibe Ace"),
    ("librispeech_198-209-0000.ogg", 13.5, "News"),
    ("librispeech_3436-172162-0000.ogg", 16.5, "News"),
    (None, 18.0, "News"),
    ("hobbs_lets_go_fishin.ogg", 30.0, "Karissa Hobbs - Let's Go Fishin'"),
]


def programme_audio() -> list[tuple[np.ndarray, str]]:
    parts = []
    rng = np.random.default_rng(0)
    for name, seconds, title in PROGRAMME:
        n = int(seconds * RATE)
        if name is None:
            audio = rng.normal(0, 10 ** (-80 / 20), n).astype(np.float32)  # dead air: -80 dBFS hiss
        else:
            path = EXAMPLES / name
            if not path.is_file():
                pytest.skip(f"{path} is absent (shared data not installed)")
            data, rate = sf.read(path, dtype="float32", always_2d=True)
            audio = resample(to_mono(data), rate, RATE)[:n]
        parts.append((audio, title))
    return parts


def send(settings, parts: list[tuple[np.ndarray, str]]) -> None:
    producer = KafkaProducer(bootstrap_servers=settings.bootstrap_servers, linger_ms=5)
    chunks = [(audio[i : i + CHUNK], title) for audio, title in parts for i in range(0, len(audio), CHUNK)]
    sent = 0
    for seq, (samples, title) in enumerate(chunks):
        headers = chunk_headers("audio/pcm;format=s16le", seq, START_MS + sent * 1000 // RATE, RATE, 1,
                                eos=seq == len(chunks) - 1, title=title)
        pcm = (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()
        producer.send(settings.input_topic, key=b"radio-e2e", value=pcm, headers=headers)
        sent += len(samples)
    producer.flush()
    producer.close()


def test_song_speech_silence_song_timeline(broker, redis_prefix: str, tmp_path) -> None:
    from streamgenre.apps.devbroker import ensure_topics

    parts = programme_audio()
    settings = isolated_settings(broker.bootstrap, SHIPPED_MODEL, redis_prefix,
                                 content_model_path=SHIPPED_CONTENT_MODEL)
    ensure_topics(settings, partitions=1)
    with running_daemon(settings) as daemon:
        send(settings, parts)
        segments = [json.loads(m.value) for m in read_topic(settings.bootstrap_servers, settings.segments_topic, 4,
                                                             timeout_s=90)]
        alerts = [json.loads(m.value) for m in read_topic(settings.bootstrap_servers, settings.alerts_topic, 2,
                                                           timeout_s=10)]
        assert daemon.pipeline.content.model is not None, "the shipped content model fits the shipped genre model"
    for message in segments:
        SegmentMessage.model_validate(message)
    for message in alerts:
        StreamAlert.model_validate(message)
    states = [s["state"] for s in segments]
    # Short flickers may add segments (a "mixed" intro), but the programme's order must hold.
    order = [state for i, state in enumerate(states) if i == 0 or state != states[i - 1]]
    assert [s for s in order if s in ("music", "speech", "silence")] == ["music", "speech", "silence", "music"], states
    silence = next(s for s in segments if s["state"] == "silence")
    silence_start = (START_MS / 1000) + 60.0
    assert abs(silence["start"] - silence_start) < 4.0 and silence["duration_s"] >= 12.0
    assert [a["kind"] for a in alerts] == ["dead_air_start", "dead_air_end"]
    assert alerts[1]["silent_s"] >= settings.dead_air_s
    # With titles, each song is one segment, its genre the one most of its windows had.
    assert segments[0]["title"] == PROGRAMME[0][2] and segments[-1]["title"] == PROGRAMME[-1][2]
    assert segments[0]["state"] == segments[-1]["state"] == "music"
    assert segments[0]["genre"] and segments[-1]["genre"]
    assert {s["title"] for s in segments if s["state"] in ("speech", "silence")} == {"News"}

    stored = redis.Redis.from_url(REDIS_URL).xrange(f"{redis_prefix}:radio-e2e:segments")
    assert [json.loads(fields[b"json"]) for _, fields in stored] == segments
    report = build_report(settings, "radio-e2e", float("-inf"), float("inf"), tmp_path)
    assert [s["state"] for s in report] == states
    assert (tmp_path / "timeline.png").stat().st_size > 10_000
    assert (tmp_path / "segments.csv").read_text().count("\n") == len(segments) + 1
