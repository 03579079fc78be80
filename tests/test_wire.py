"""Input decoding and output schemas."""

from __future__ import annotations

import io
import json
import struct

import numpy as np
import pytest
import soundfile as sf

from streamgenre.stream.messages import SCHEMA_DIR, GenreEvent, Prediction, encode_json, write_schemas
from streamgenre.stream.wire import (
    MAX_TITLE_CHARS,
    STREAM_ID_MAX_LENGTH,
    BadInput,
    Reason,
    chunk_headers,
    decode_chunk,
    parse_key,
    validate_stream_id,
)
from tests.audio import encode_chunk, tone_mix
from tests.faults_hostile import flac_claiming

LIMIT = 1 << 20


@pytest.mark.parametrize("fmt", ["s16le", "f32le", "wav", "flac", "ogg"])
@pytest.mark.parametrize("rate,channels", [(8000, 1), (44100, 2), (96000, 6)])
def test_every_format_decodes_to_mono_at_its_rate(fmt: str, rate: int, channels: int) -> None:
    audio = tone_mix(0.2, rate, channels, seed=1)
    encoded = encode_chunk(audio, rate, fmt, seq=3, ts_ms=123)
    chunk = decode_chunk(b"station", encoded.value, encoded.headers, LIMIT)
    assert chunk.stream_id == "station" and chunk.sample_rate == rate
    assert chunk.headers.seq == 3 and chunk.headers.ts == 123
    assert chunk.samples.dtype == np.float32 and chunk.samples.ndim == 1
    assert chunk.samples.shape[0] == encoded.n_samples
    if fmt != "ogg":  # lossy: only the length is exact
        np.testing.assert_allclose(chunk.samples, audio.mean(axis=1), atol=1e-3)


def pcm(reason_bytes: bytes = b"\x00\x00" * 100) -> tuple[bytes, list]:
    return reason_bytes, chunk_headers("audio/pcm;format=s16le", 0, 0, 16000, 1)


def silent_flac(seconds: float) -> bytes:
    """Minutes of silence compress to a few KB: a small message that decodes to a huge one."""
    buffer = io.BytesIO()
    sf.write(buffer, np.zeros(int(seconds * 8000), np.float32), 8000, format="FLAC")
    return buffer.getvalue()


def wav_claiming(frames: int) -> bytes:
    """A WAV header that declares ``frames`` samples but carries almost none."""
    data_bytes = frames * 2
    header = b"RIFF" + struct.pack("<I", 36 + data_bytes) + b"WAVEfmt " + struct.pack(
        "<IHHIIHH", 16, 1, 1, 16000, 32000, 2, 16) + b"data" + struct.pack("<I", data_bytes)
    return header + b"\x00" * 64


def test_each_bad_input_has_its_reason() -> None:
    good_value, good_headers = pcm()
    cases = {
        Reason.BAD_KEY: (b"\xff\xfe", good_value, good_headers),
        Reason.EMPTY_PAYLOAD: (b"k", b"", good_headers),
        Reason.OVERSIZED: (b"k", b"\x00" * (LIMIT + 2), good_headers),
        Reason.MISSING_HEADER: (b"k", good_value, [h for h in good_headers if h[0] != "seq"]),
        Reason.INVALID_HEADER: (b"k", good_value, [(n, b"x" if n == "ts" else v) for n, v in good_headers]),
        Reason.UNKNOWN_CONTENT_TYPE: (b"k", good_value, chunk_headers("audio/mpeg", 0, 0)),
        Reason.SAMPLE_RATE_OUT_OF_RANGE: (b"k", good_value, chunk_headers("audio/pcm;format=s16le", 0, 0, 4000, 1)),
        Reason.TRUNCATED_PCM: (b"k", good_value + b"\x01", good_headers),
        Reason.NON_FINITE_SAMPLES: (b"k", np.array([0.1, np.nan], "<f4").tobytes(),
                                    chunk_headers("audio/pcm;format=f32le", 0, 0, 16000, 1)),
        Reason.CORRUPT_CONTAINER: (b"k", b"OggS" + b"\x00" * 200, chunk_headers("audio/ogg", 0, 0)),
        Reason.DECOMPRESSION_BOMB: (b"k", flac_claiming(3 * 3600), chunk_headers("audio/flac", 0, 0)),
    }
    for reason, (key, value, headers) in cases.items():
        with pytest.raises(BadInput) as caught:
            decode_chunk(key, value, headers, LIMIT)
        assert caught.value.reason is reason, f"{reason}: got {caught.value}"


def test_lying_container_header_is_refused() -> None:
    """libsndfile would clamp it to the 32 samples present; a header that lies is a corrupt container."""
    with pytest.raises(BadInput) as caught:
        decode_chunk(b"k", wav_claiming(10**9), chunk_headers("audio/wav", 0, 0), LIMIT)
    assert caught.value.reason is Reason.CORRUPT_CONTAINER
    assert len(silent_flac(600)) < LIMIT // 50


def test_decoded_audio_is_bounded_by_duration_not_bytes() -> None:
    """Ten minutes of FLAC decode (lazily, in blocks) under the default limit; over a set limit it is a bomb."""
    value, headers = silent_flac(600), chunk_headers("audio/flac", 0, 0)
    chunk = decode_chunk(b"k", value, headers, LIMIT)
    assert chunk.more is not None, "a long container is decoded block by block"
    assert chunk.samples.shape[0] + sum(block.shape[0] for block in chunk.more) == 600 * 8000
    with pytest.raises(BadInput) as caught:
        decode_chunk(b"k", value, headers, LIMIT, max_decoded_s=599)
    assert caught.value.reason is Reason.DECOMPRESSION_BOMB
    tiny = flac_claiming(3 * 3600)
    assert len(tiny) < 200
    with pytest.raises(BadInput, match="10800 s"):
        decode_chunk(b"k", tiny, headers, LIMIT)


def test_short_container_is_decoded_at_once() -> None:
    encoded = encode_chunk(tone_mix(2.0, 16000, 2, seed=3), 16000, "ogg", seq=0, ts_ms=0)
    chunk = decode_chunk(b"k", encoded.value, encoded.headers, LIMIT)
    assert chunk.more is None and chunk.samples.shape[0] == encoded.n_samples


def test_container_corrupt_after_its_first_block_fails_when_that_block_is_read() -> None:
    """NaNs in the middle of a float WAV are found only when their block is decoded."""
    audio = tone_mix(35.0, 8000, 1, seed=4)
    audio[25 * 8000] = np.nan  # the third 10 s block: the second is read ahead to know there is more
    buffer = io.BytesIO()
    sf.write(buffer, audio, 8000, format="WAV", subtype="FLOAT")
    chunk = decode_chunk(b"k", buffer.getvalue(), chunk_headers("audio/wav", 0, 0), 4 * LIMIT)
    assert chunk.more is not None
    with pytest.raises(BadInput) as caught:
        list(chunk.more)
    assert caught.value.reason is Reason.NON_FINITE_SAMPLES


def test_pcm_headers_are_required_for_pcm_only() -> None:
    with pytest.raises(BadInput, match="sample-rate"):
        decode_chunk(b"k", b"\x00\x00", chunk_headers("audio/pcm;format=s16le", 0, 0), LIMIT)
    buffer = io.BytesIO()
    sf.write(buffer, np.zeros(800, np.float32), 8000, format="WAV")
    assert decode_chunk(b"k", buffer.getvalue(), chunk_headers("audio/wav", 0, 0), LIMIT).sample_rate == 8000


def test_committed_schemas_match_the_models(tmp_path) -> None:
    write_schemas(tmp_path)
    for name in ("prediction", "event"):
        assert json.loads((tmp_path / f"{name}.schema.json").read_text()) == json.loads(
            (SCHEMA_DIR / f"{name}.schema.json").read_text()
        ), "run `python -m streamgenre.stream.messages` and commit the schemas"


def test_event_uses_from_and_to_on_the_wire() -> None:
    event = GenreEvent.model_validate({"stream_id": "s", "from": None, "to": "jazz", "at_t": 1.0, "ts": 2,
                                       "confidence": 0.5})
    assert json.loads(event.to_json())["to"] == "jazz" and "from" in json.loads(event.to_json())
    assert "neighbours" in Prediction.model_json_schema()["properties"]


def test_hot_path_json_matches_pydantic_output() -> None:
    """The worker writes predictions with json.dumps; the bytes must be what the schema model writes."""
    payload = {
        "schema_version": 1, "stream_id": "radio-ü-7", "window_seq": 588235294, "t_start": 1760000000.25,
        "t_end": 1760000003.2224, "ts": 1760000003222, "genre": "jazz", "confidence": 0.91234, "uncertain": False,
        "probs": {"jazz": 0.91234, "rock": 0.08766}, "smoothed_genre": "jazz",
        "smoothed_probs": {"jazz": 0.8, "rock": 0.2}, "model_version": "m-1", "latency_ms": 12.5,
        "title": "Café Tacvba – Eres",
        "state": "music", "state_probs": {"music": 0.9, "speech": 0.05, "mixed": 0.05, "silence": 0.0},
        "level_dbfs": -18.5,
    }
    assert encode_json(payload) == Prediction.model_validate(payload).model_dump_json(exclude_none=True).encode()


@pytest.mark.parametrize("stream_id",
                         ["radio-7", "blues.00099", "a", "tenant:42/station@eu+1", "x" * STREAM_ID_MAX_LENGTH])
def test_valid_stream_ids_pass_client_and_daemon_alike(stream_id: str) -> None:
    assert validate_stream_id(stream_id) == stream_id
    assert parse_key(stream_id.encode()) == stream_id


@pytest.mark.parametrize(("stream_id", "message"), [
    ("", "empty"),
    ("x" * (STREAM_ID_MAX_LENGTH + 1), "limit is 128"),
    ("x" * 100_000, "limit is 128"),
    ("my song", "' '"),
    ("tab\there", "'\\t'"),
    ("caf\u00e9", "'\u00e9'"),
    ("a*b", "'*'"),
])
def test_bad_stream_ids_are_refused_with_the_rule(stream_id: str, message: str) -> None:
    with pytest.raises(BadInput) as client_side:
        validate_stream_id(stream_id)
    assert client_side.value.reason is Reason.BAD_KEY and message in str(client_side.value)
    with pytest.raises(BadInput) as daemon_side:
        parse_key(stream_id.encode())
    assert daemon_side.value.reason is Reason.BAD_KEY


def test_title_header_is_optional_and_never_refuses_the_audio() -> None:
    """A radio title is third-party text: bad bytes are replaced and a long one is cut, the audio is kept."""
    pcm = b"\x00\x00" * 100
    plain = decode_chunk(b"k", pcm, chunk_headers("audio/pcm;format=s16le", 0, 0, 16000, 1), LIMIT)
    assert plain.headers.title is None
    titled = chunk_headers("audio/pcm;format=s16le", 0, 0, 16000, 1, title="Nina Simone - Sinnerman")
    assert decode_chunk(b"k", pcm, titled, LIMIT).headers.title == "Nina Simone - Sinnerman"
    latin1 = [*chunk_headers("audio/pcm;format=s16le", 0, 0, 16000, 1), ("Title", "Beyoncé".encode("latin-1"))]
    assert decode_chunk(b"k", pcm, latin1, LIMIT).headers.title == "Beyonc\ufffd"
    long = [*chunk_headers("audio/pcm;format=s16le", 0, 0, 16000, 1), ("title", b"x" * 5000)]
    assert len(decode_chunk(b"k", pcm, long, LIMIT).headers.title or "") == MAX_TITLE_CHARS
