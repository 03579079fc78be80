"""Message formats: the input chunk (Kafka headers + audio bytes) and the JSON outputs.

Input (topic ``audio.chunks``): key = stream id (UTF-8), value = audio bytes, headers
``content-type``, ``sample-rate`` + ``channels`` (PCM only), ``seq``, ``ts``, optional ``eos``.
Everything that can be wrong with a message is detected here and raised as :class:`BadInput`
with a machine-readable ``reason``; the daemon routes those to the dead-letter topic.

Outputs (``genre.predictions``, ``genre.events``) are pydantic models; their JSON Schemas are
generated from these classes into ``streamgenre/stream/schemas/`` (``python -m streamgenre.stream.wire``),
and a test checks that the committed schemas match and that emitted messages validate.
"""

from __future__ import annotations

import io
import json
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

import numpy as np
import soundfile as sf
from pydantic import BaseModel, ConfigDict, Field, ValidationError

SCHEMA_VERSION = 1
MIN_SAMPLE_RATE = 8000
MAX_SAMPLE_RATE = 96000
MAX_CHANNELS = 32
PCM_TYPES = {"audio/pcm;format=s16le": np.dtype("<i2"), "audio/pcm;format=f32le": np.dtype("<f4")}
CONTAINER_TYPES = {"audio/wav", "audio/x-wav", "audio/wave", "audio/flac", "audio/ogg"}
SCHEMA_DIR = Path(__file__).resolve().parent / "schemas"


class Reason(StrEnum):
    """Why a message went to the dead-letter topic (header ``dlq-reason``, metric label)."""

    EMPTY_PAYLOAD = "empty_payload"
    OVERSIZED = "oversized"
    BAD_KEY = "bad_key"
    MISSING_HEADER = "missing_header"
    INVALID_HEADER = "invalid_header"
    UNKNOWN_CONTENT_TYPE = "unknown_content_type"
    SAMPLE_RATE_OUT_OF_RANGE = "sample_rate_out_of_range"
    TRUNCATED_PCM = "truncated_pcm"
    NON_FINITE_SAMPLES = "non_finite_samples"
    CORRUPT_CONTAINER = "corrupt_container"
    DECOMPRESSION_BOMB = "decompression_bomb"


class BadInput(ValueError):
    """A message that can never be decoded; carries the DLQ reason."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


class ChunkHeaders(BaseModel):
    """Validated headers of one input chunk."""

    model_config = ConfigDict(frozen=True)

    content_type: str
    sample_rate: int | None = Field(None, ge=1)
    channels: int | None = Field(None, ge=1, le=MAX_CHANNELS)
    seq: int = Field(ge=0)
    ts: int = Field(ge=0, description="epoch ms of the chunk's first sample")
    eos: bool = False


class Chunk(BaseModel):
    """A decoded chunk: mono float32 samples at their original rate plus its position."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    stream_id: str
    headers: ChunkHeaders
    samples: np.ndarray
    sample_rate: int


def _header(headers: dict[str, bytes], name: str, required: bool = True) -> str | None:
    raw = headers.get(name)
    if raw is None:
        if required:
            raise BadInput(Reason.MISSING_HEADER, f"header {name!r} is required")
        return None
    try:
        return raw.decode("utf-8").strip()
    except UnicodeDecodeError as exc:
        raise BadInput(Reason.INVALID_HEADER, f"header {name!r} is not UTF-8") from exc


def parse_headers(raw_headers: list[tuple[str, bytes]] | None) -> ChunkHeaders:
    """Validate Kafka headers into :class:`ChunkHeaders` (names are case-insensitive)."""
    headers = {name.lower(): value for name, value in (raw_headers or []) if value is not None}
    content_type = (_header(headers, "content-type") or "").lower().replace(" ", "")
    fields: dict[str, object] = {"content_type": content_type}
    for name, required in (("seq", True), ("ts", True), ("sample-rate", False), ("channels", False)):
        value = _header(headers, name, required)
        if value is not None:
            try:
                fields[name.replace("-", "_")] = int(value)
            except ValueError as exc:
                raise BadInput(Reason.INVALID_HEADER, f"header {name!r}={value!r} is not an integer") from exc
    eos = _header(headers, "eos", required=False)
    fields["eos"] = eos is not None and eos.lower() in {"1", "true", "yes"}
    try:
        parsed = ChunkHeaders.model_validate(fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise BadInput(Reason.INVALID_HEADER, f"{'.'.join(map(str, first['loc']))}: {first['msg']}") from exc
    if parsed.content_type in PCM_TYPES and (parsed.sample_rate is None or parsed.channels is None):
        raise BadInput(Reason.MISSING_HEADER, "PCM needs 'sample-rate' and 'channels' headers")
    return parsed


def parse_key(key: bytes | None) -> str:
    if not key:
        raise BadInput(Reason.BAD_KEY, "message key (stream id) is empty")
    try:
        return key.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadInput(Reason.BAD_KEY, "message key is not valid UTF-8") from exc


def _check_rate(rate: int) -> None:
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise BadInput(Reason.SAMPLE_RATE_OUT_OF_RANGE, f"{rate} Hz is outside {MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE}")


def _decode_pcm(payload: bytes, headers: ChunkHeaders) -> np.ndarray:
    assert headers.sample_rate is not None and headers.channels is not None  # parse_headers ensures it
    dtype = PCM_TYPES[headers.content_type]
    frame_bytes = dtype.itemsize * headers.channels
    if len(payload) % frame_bytes:
        raise BadInput(Reason.TRUNCATED_PCM, f"{len(payload)} bytes is not a whole number of {frame_bytes}-byte frames")
    # Zero-copy view of the payload; the downmix below makes the one copy we need anyway.
    samples = np.frombuffer(payload, dtype=dtype).reshape(-1, headers.channels)
    if headers.channels == 1:
        # Mono (most live streams): skip the reduction, same values (the mean of one sample is
        # it); for integers, convert and scale in one pass (x 2^-15 is exact, as / 32768 is).
        if dtype.kind == "i":
            return np.multiply(samples[:, 0], np.float32(1.0 / 32768.0), dtype=np.float32)
        return samples[:, 0].astype(np.float32)
    if dtype.kind == "i":
        return samples.mean(axis=1, dtype=np.float32) / np.float32(32768.0)
    return samples.mean(axis=1, dtype=np.float32)


def _check_riff_length(payload: bytes) -> None:
    """Refuse a WAV (RIFF) whose header declares more bytes than the message carries.

    libsndfile silently clamps such a file to the bytes present, so a truncated upload or a
    hostile header claiming gigabytes would otherwise pass as a short, valid chunk.
    """
    if len(payload) >= 8 and payload[:4] == b"RIFF":
        declared = int.from_bytes(payload[4:8], "little") + 8
        if declared > len(payload):
            raise BadInput(Reason.CORRUPT_CONTAINER,
                           f"RIFF header declares {declared} bytes, the message has {len(payload)}")


def _decode_container(payload: bytes, max_samples: int) -> tuple[np.ndarray, int]:
    _check_riff_length(payload)
    try:
        with sf.SoundFile(io.BytesIO(payload)) as audio:
            rate, channels, frames = audio.samplerate, audio.channels, audio.frames
            _check_rate(rate)
            if channels > MAX_CHANNELS:
                raise BadInput(Reason.CORRUPT_CONTAINER, f"{channels} channels")
            # A container declares its length; a few KB can claim hours of audio. Refuse before
            # decoding, and read at most the limit + 1 frame in case the declaration lies.
            if frames * channels > max_samples:
                raise BadInput(Reason.DECOMPRESSION_BOMB, f"declares {frames} frames x {channels} channels")
            data = audio.read(frames=max_samples // channels + 1, dtype="float32", always_2d=True)
    except BadInput:
        raise
    except Exception as exc:  # libsndfile reports corrupt input through several exception types
        raise BadInput(Reason.CORRUPT_CONTAINER, f"soundfile cannot decode it: {exc}") from exc
    if data.shape[0] * data.shape[1] > max_samples:
        raise BadInput(Reason.DECOMPRESSION_BOMB, "decodes to more samples than it declares")
    return data.mean(axis=1, dtype=np.float32), rate


def decode_chunk(key: bytes | None, payload: bytes | None, raw_headers: list[tuple[str, bytes]] | None,
                 max_bytes: int) -> Chunk:
    """Decode one Kafka message into a mono :class:`Chunk`, or raise :class:`BadInput`.

    ``max_bytes`` bounds the payload and, for containers, the decoded size (4 bytes/sample),
    so that a small compressed message cannot expand without limit.
    """
    stream_id = parse_key(key)
    if not payload:
        raise BadInput(Reason.EMPTY_PAYLOAD, "message value is empty")
    if len(payload) > max_bytes:
        raise BadInput(Reason.OVERSIZED, f"{len(payload)} bytes > limit {max_bytes}")
    headers = parse_headers(raw_headers)
    if headers.content_type in PCM_TYPES:
        assert headers.sample_rate is not None
        _check_rate(headers.sample_rate)
        samples, rate = _decode_pcm(payload, headers), headers.sample_rate
    elif headers.content_type in CONTAINER_TYPES:
        samples, rate = _decode_container(payload, max_samples=max_bytes // 4)
    else:
        raise BadInput(Reason.UNKNOWN_CONTENT_TYPE, f"content-type {headers.content_type!r} is not supported")
    float_pcm = headers.content_type in PCM_TYPES and PCM_TYPES[headers.content_type].kind == "f"
    if (float_pcm or headers.content_type in CONTAINER_TYPES) and not np.isfinite(samples).all():
        raise BadInput(Reason.NON_FINITE_SAMPLES, "audio contains NaN or Inf")
    # Every field is validated above; model_construct skips pydantic's second pass (hot path).
    return Chunk.model_construct(stream_id=stream_id, headers=headers, samples=samples, sample_rate=rate)


def chunk_headers(content_type: str, seq: int, ts_ms: int, sample_rate: int | None = None,
                  channels: int | None = None, eos: bool = False) -> list[tuple[str, bytes]]:
    """Kafka headers for one chunk, as producers (``streamgenre ingest``) must send them."""
    headers = [("content-type", content_type), ("seq", str(seq)), ("ts", str(ts_ms))]
    if sample_rate is not None:
        headers.append(("sample-rate", str(sample_rate)))
    if channels is not None:
        headers.append(("channels", str(channels)))
    if eos:
        headers.append(("eos", "1"))
    return [(name, value.encode()) for name, value in headers]


class Prediction(BaseModel):
    """One window's classification (topic ``genre.predictions``, Redis latest/timeline)."""

    schema_version: Literal[1] = SCHEMA_VERSION
    stream_id: str
    window_seq: int = Field(description="start of the window // hop; the same on replay")
    t_start: float = Field(description="window start, seconds of stream time (the producer's ts clock)")
    t_end: float = Field(description="window end, seconds of stream time")
    ts: int = Field(description="epoch ms of the window end (producer clock)")
    genre: str
    confidence: float = Field(ge=0, le=1, description="calibrated probability of `genre` (the top one): the "
                              "model sidecar's temperature is applied, so among windows at confidence c about "
                              "a share c is right on held-out data")
    uncertain: bool = Field(False, description="confidence below the daemon's STREAMGENRE_UNCERTAIN_BELOW "
                            "(default 0.5: more likely wrong than right); absent in messages of older daemons")
    probs: dict[str, float] = Field(description="calibrated probability of every genre")
    smoothed_genre: str
    smoothed_probs: dict[str, float]
    model_version: str
    latency_ms: float = Field(description="window complete (last audio received) to publish, ms")
    neighbours: list[dict] | None = Field(None, description="top-k catalogue tracks (Redis only, optional)")


class GenreEvent(BaseModel):
    """A change of the smoothed genre of a stream (topic ``genre.events``)."""

    model_config = ConfigDict(populate_by_name=True)

    schema_version: Literal[1] = SCHEMA_VERSION
    stream_id: str
    from_genre: str | None = Field(alias="from", description="previous genre; null for the first")
    to_genre: str = Field(alias="to")
    at_t: float = Field(description="stream time (s) of the window where the new genre took over")
    ts: int = Field(description="epoch ms (producer clock) of that window's end")
    confidence: float

    def to_json(self) -> bytes:
        return self.model_dump_json(by_alias=True).encode()


def encode_json(payload: dict[str, Any]) -> bytes:
    """Compact JSON, as pydantic's ``model_dump_json`` writes it (the hot path skips pydantic)."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


def rounded_probs(labels: list[str], probs: np.ndarray) -> dict[str, float]:
    return {label: round(float(p), 5) for label, p in zip(labels, probs, strict=True)}


def write_schemas(directory: Path = SCHEMA_DIR) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, model in (("prediction", Prediction), ("event", GenreEvent)):
        schema = model.model_json_schema(by_alias=True)
        (directory / f"{name}.schema.json").write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    write_schemas()
