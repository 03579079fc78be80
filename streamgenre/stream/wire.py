"""The input wire format: one Kafka message (key, headers, audio bytes) → a validated chunk.

Input (topic ``audio.chunks``): key = stream id (UTF-8), value = audio bytes, headers
``content-type``, ``sample-rate`` + ``channels`` (PCM only), ``seq``, ``ts``, optional ``eos`` and
``title`` (the now-playing title, e.g. a radio's ICY ``StreamTitle``, carried into each prediction).
Everything that can be wrong with a message is detected here and raised as :class:`BadInput`
with a machine-readable ``reason``; the daemon routes those to the dead-letter topic.

What the daemon publishes in return is in :mod:`streamgenre.stream.messages`.
"""

from __future__ import annotations

import io
import itertools
import re
from collections.abc import Iterator
from enum import StrEnum

import numpy as np
import soundfile as sf
from pydantic import BaseModel, ConfigDict, Field, ValidationError

MIN_SAMPLE_RATE = 8000
MAX_SAMPLE_RATE = 96000
MAX_CHANNELS = 32
MAX_TITLE_CHARS = 512
PCM_TYPES = {"audio/pcm;format=s16le": np.dtype("<i2"), "audio/pcm;format=f32le": np.dtype("<f4")}
CONTAINER_TYPES = {"audio/wav", "audio/x-wav", "audio/wave", "audio/flac", "audio/ogg"}
# Stream ids become Kafka keys, Redis key parts ({prefix}:{stream_id}:latest), metric-free log
# fields and file names in reports, so they are kept short and free of whitespace, control
# characters and shell/glob specials. Producers (ingest) and the daemon share this one check.
STREAM_ID_MAX_LENGTH = 128
STREAM_ID_CHARACTERS = "A-Z a-z 0-9 . _ - : / @ +"
_STREAM_ID = re.compile(rf"[A-Za-z0-9._:/@+-]{{1,{STREAM_ID_MAX_LENGTH}}}")


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
    title: str | None = Field(None, description="now-playing title of the chunk's audio (ICY StreamTitle)")


class Chunk(BaseModel):
    """A decoded chunk: mono float32 samples at their original rate plus its position."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    stream_id: str
    headers: ChunkHeaders
    samples: np.ndarray
    sample_rate: int
    more: Iterator[np.ndarray] | None = Field(
        None, description="a long container's remaining blocks, decoded as they are read (may raise BadInput)")


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


def _title(raw: bytes | None) -> str | None:
    """The optional ``title`` header, never a reason to refuse the audio it labels.

    Radio titles come from third parties (ICY metadata is often Latin-1 or worse): undecodable
    bytes are replaced and an overlong title is cut, rather than dead-lettering good audio.
    """
    if raw is None:
        return None
    title = raw.decode("utf-8", "replace").strip()[:MAX_TITLE_CHARS]
    return title or None


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
    fields["title"] = _title(headers.get("title"))
    try:
        parsed = ChunkHeaders.model_validate(fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise BadInput(Reason.INVALID_HEADER, f"{'.'.join(map(str, first['loc']))}: {first['msg']}") from exc
    if parsed.content_type in PCM_TYPES and (parsed.sample_rate is None or parsed.channels is None):
        raise BadInput(Reason.MISSING_HEADER, "PCM needs 'sample-rate' and 'channels' headers")
    return parsed


def validate_stream_id(stream_id: str) -> str:
    """Return ``stream_id`` if it is a valid stream id, else raise :class:`BadInput` (``bad_key``).

    Valid: 1 to :data:`STREAM_ID_MAX_LENGTH` characters from :data:`STREAM_ID_CHARACTERS`
    (docs/wire-format.md). The ``ingest`` CLI calls this before it connects, the daemon for
    every message key, so a producer learns at once what the daemon would dead-letter.
    """
    if _STREAM_ID.fullmatch(stream_id):
        return stream_id
    if not stream_id:
        raise BadInput(Reason.BAD_KEY, "stream id is empty")
    if len(stream_id) > STREAM_ID_MAX_LENGTH:
        raise BadInput(Reason.BAD_KEY, f"stream id is {len(stream_id)} characters long, the limit is "
                                       f"{STREAM_ID_MAX_LENGTH}")
    bad = next(c for c in stream_id if not _STREAM_ID.fullmatch(c))
    raise BadInput(Reason.BAD_KEY, f"stream id contains {bad!r}; allowed characters: {STREAM_ID_CHARACTERS}")


def parse_key(key: bytes | None) -> str:
    if not key:
        raise BadInput(Reason.BAD_KEY, "message key (stream id) is empty")
    if len(key) > STREAM_ID_MAX_LENGTH:  # before decoding: a 100 KB key costs nothing to refuse
        raise BadInput(Reason.BAD_KEY, f"message key is {len(key)} bytes long, the limit is {STREAM_ID_MAX_LENGTH}")
    try:
        return validate_stream_id(key.decode("utf-8"))
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


# Containers decode in blocks of this many seconds: a whole song in one message never exists as
# one decoded array (nor as one array of STFT frames in the framer), only a block at a time.
CONTAINER_BLOCK_S = 10.0


def _mono_block(block: np.ndarray) -> np.ndarray:
    mono = block.mean(axis=1, dtype=np.float32) if block.shape[1] > 1 else block[:, 0].astype(np.float32)
    if not np.isfinite(mono).all():
        raise BadInput(Reason.NON_FINITE_SAMPLES, "audio contains NaN or Inf")
    return mono


def _container_blocks(audio: sf.SoundFile, block_frames: int, max_frames: int) -> Iterator[np.ndarray]:
    """Mono float32 blocks of an open container, at most ``max_frames`` frames in all.

    The declared length was checked before; this also refuses a file that decodes to more than
    the limit (a container can lie about its length), at the first block that crosses it.
    """
    decoded = 0
    try:
        with audio:
            for block in audio.blocks(blocksize=block_frames, dtype="float32", always_2d=True):
                decoded += block.shape[0]
                if decoded > max_frames:
                    raise BadInput(Reason.DECOMPRESSION_BOMB, f"decodes to more than {max_frames} frames")
                yield _mono_block(block)
    except BadInput:
        raise
    except Exception as exc:  # libsndfile reports corrupt input through several exception types
        raise BadInput(Reason.CORRUPT_CONTAINER, f"soundfile cannot decode it: {exc}") from exc


def open_container(payload: bytes, max_seconds: float) -> tuple[np.ndarray, Iterator[np.ndarray] | None, int]:
    """Check a container's header and decode its first block.

    Returns ``(first block, the remaining blocks or None, sample rate)``. The header's declared
    length is refused before anything is decoded when it exceeds ``max_seconds`` (a few KB can
    declare hours); the remaining blocks are decoded lazily, as the framer asks for them, and
    raise :class:`BadInput` themselves.
    """
    _check_riff_length(payload)
    try:
        audio = sf.SoundFile(io.BytesIO(payload))
    except Exception as exc:  # libsndfile reports corrupt input through several exception types
        raise BadInput(Reason.CORRUPT_CONTAINER, f"soundfile cannot decode it: {exc}") from exc
    rate, channels, frames = audio.samplerate, audio.channels, audio.frames
    try:
        _check_rate(rate)
        if channels > MAX_CHANNELS:
            raise BadInput(Reason.CORRUPT_CONTAINER, f"{channels} channels")
        max_frames = int(max_seconds * rate)
        if frames > max_frames:
            raise BadInput(Reason.DECOMPRESSION_BOMB,
                           f"declares {frames / rate:.0f} s of audio, the limit is {max_seconds:.0f} s")
    except BadInput:
        audio.close()
        raise
    blocks = _container_blocks(audio, max(1, int(CONTAINER_BLOCK_S * rate)), max_frames)
    first = next(blocks, np.zeros(0, np.float32))
    following = next(blocks, None)
    if following is None:
        return first, None, rate
    return first, itertools.chain([following], blocks), rate


def decode_chunk(key: bytes | None, payload: bytes | None, raw_headers: list[tuple[str, bytes]] | None,
                 max_bytes: int, max_decoded_s: float = 1200.0) -> Chunk:
    """Decode one Kafka message into a mono :class:`Chunk`, or raise :class:`BadInput`.

    ``max_bytes`` bounds the payload; ``max_decoded_s`` bounds the audio a container may decode
    to (by duration: a four-minute song is a few MB of Ogg but 40 M decoded samples), so that
    a small compressed message cannot expand without limit. A container longer than one block
    (:data:`CONTAINER_BLOCK_S`) carries its remaining blocks undecoded in ``Chunk.more``.
    """
    stream_id = parse_key(key)
    if not payload:
        raise BadInput(Reason.EMPTY_PAYLOAD, "message value is empty")
    if len(payload) > max_bytes:
        raise BadInput(Reason.OVERSIZED, f"{len(payload)} bytes > limit {max_bytes}")
    headers = parse_headers(raw_headers)
    more = None
    if headers.content_type in PCM_TYPES:
        assert headers.sample_rate is not None
        _check_rate(headers.sample_rate)
        samples, rate = _decode_pcm(payload, headers), headers.sample_rate
        if PCM_TYPES[headers.content_type].kind == "f" and not np.isfinite(samples).all():
            raise BadInput(Reason.NON_FINITE_SAMPLES, "audio contains NaN or Inf")
    elif headers.content_type in CONTAINER_TYPES:
        samples, more, rate = open_container(payload, max_decoded_s)
    else:
        raise BadInput(Reason.UNKNOWN_CONTENT_TYPE, f"content-type {headers.content_type!r} is not supported")
    # Every field is validated above; model_construct skips pydantic's second pass (hot path).
    return Chunk.model_construct(stream_id=stream_id, headers=headers, samples=samples, sample_rate=rate, more=more)


def chunk_headers(content_type: str, seq: int, ts_ms: int, sample_rate: int | None = None,
                  channels: int | None = None, eos: bool = False,
                  title: str | None = None) -> list[tuple[str, bytes]]:
    """Kafka headers for one chunk, as producers (``streamgenre ingest``, ``relay``) must send them."""
    headers = [("content-type", content_type), ("seq", str(seq)), ("ts", str(ts_ms))]
    if sample_rate is not None:
        headers.append(("sample-rate", str(sample_rate)))
    if channels is not None:
        headers.append(("channels", str(channels)))
    if eos:
        headers.append(("eos", "1"))
    if title:
        headers.append(("title", title[:MAX_TITLE_CHARS]))
    return [(name, value.encode()) for name, value in headers]
