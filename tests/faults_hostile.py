"""Hypothesis strategies for malformed and hostile input chunks, each labelled with its DLQ reason.

Every generated message is bad by construction and knows the one :class:`Reason` the decoder
must give it, so a fuzz run can check the dead-letter topic message by message. The limit on
message size is :data:`MAX_BYTES` and on decoded audio :data:`MAX_DECODED_S` (the fuzz daemon is
configured with both) so that oversized messages and decompression bombs stay small enough to
produce thousands of them quickly.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass

import numpy as np
import soundfile as sf
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from streamgenre.stream.wire import CONTAINER_TYPES, PCM_TYPES, Reason, chunk_headers

MAX_BYTES = 65536
MAX_DECODED_S = 1.0
KNOWN_HEADERS = {"content-type", "seq", "ts", "sample-rate", "channels", "eos"}


@dataclass(frozen=True)
class Hostile:
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]
    reason: Reason


def _silence(fmt: str, subtype: str, seconds: float, channels: int) -> bytes:
    buffer = io.BytesIO()
    sf.write(
        buffer, np.zeros((int(16000 * seconds), channels), np.float32), 16000, format=fmt, subtype=subtype
    )
    return buffer.getvalue()


def _wav(frames: int, channels: int = 1) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, np.full((frames, channels), 0.1, np.float32), 16000, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def wav_claiming(declared_bytes: int, carried: int) -> bytes:
    """A WAV whose header declares ``declared_bytes`` of audio but carries ``carried`` bytes."""
    header = (
        b"RIFF"
        + struct.pack("<I", 36 + declared_bytes)
        + b"WAVEfmt "
        + struct.pack("<IHHIIHH", 16, 1, 1, 16000, 32000, 2, 16)
        + b"data"
        + struct.pack("<I", declared_bytes)
    )
    return header + b"\x01\x00" * (carried // 2)


def flac_claiming(seconds: float, rate: int = 8000) -> bytes:
    """A ~100-byte FLAC whose STREAMINFO declares ``seconds`` of audio: a real decompression bomb."""
    buffer = io.BytesIO()
    sf.write(buffer, np.zeros(rate // 10, np.float32), rate, format="FLAC")
    data = bytearray(buffer.getvalue())
    # "fLaC", a 4-byte block header, then STREAMINFO: the 64 bits at its byte 10 are sample rate
    # (20), channels - 1 (3), bits per sample - 1 (5) and total samples (36, the low bits).
    fields = int.from_bytes(data[18:26], "big")
    data[18:26] = ((fields & ~((1 << 36) - 1)) | int(seconds * rate)).to_bytes(8, "big")
    return bytes(data)


# Small files that decode to more than MAX_DECODED_S of audio, and files that declare hours.
BOMBS = [("audio/flac", _silence("FLAC", "PCM_16", s, c)) for s in (2, 30, 600) for c in (1, 2)] + [
    ("audio/ogg", _silence("OGG", "VORBIS", s, 1)) for s in (2, 30)
] + [("audio/flac", flac_claiming(hours * 3600)) for hours in (3, 100)]
VALID_WAV = _wav(400, 2)

seqs = st.integers(0, 2**31)
timestamps = st.integers(0, 2**45)
text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=20)
# Keys the daemon accepts (streamgenre.stream.wire.validate_stream_id); others are bad_key.
good_keys = st.from_regex(r"[A-Za-z0-9._:/@+-]{1,40}", fullmatch=True).map(str.encode)
extra_headers = st.lists(
    st.tuples(
        st.text("abcdefghijklmnopqrstuvwxyz-_.0123456789", min_size=1, max_size=12).filter(
            lambda n: n.lower() not in KNOWN_HEADERS and not n.lower().startswith(("dlq-", "fuzz-"))
        ),
        st.binary(max_size=40),
    ),
    max_size=4,
)
pcm_types = st.sampled_from(sorted(PCM_TYPES))
container_types = st.sampled_from(sorted(CONTAINER_TYPES))
channels = st.integers(1, 8)


def _headers(
    content_type: str,
    seq: int,
    ts: int,
    rate: int | None = None,
    ch: int | None = None,
    drop: str | None = None,
    replace: tuple[str, bytes] | None = None,
) -> list[tuple[str, bytes]]:
    headers = chunk_headers(content_type, seq, ts, rate, ch)
    if replace is not None:
        headers = [(n, replace[1] if n == replace[0] else v) for n, v in headers]
    return [(n, v) for n, v in headers if n != drop]


@st.composite
def bad_key(draw: st.DrawFn) -> Hostile:
    key = draw(st.one_of(st.none(), st.just(b""), st.binary(max_size=30).map(lambda b: b"\xff" + b)))
    return Hostile(
        key,
        draw(st.binary(max_size=200)),
        _headers("audio/pcm;format=s16le", draw(seqs), draw(timestamps), 16000, 1),
        Reason.BAD_KEY,
    )


@st.composite
def empty_payload(draw: st.DrawFn) -> Hostile:
    return Hostile(
        draw(good_keys),
        b"",
        _headers(draw(pcm_types), draw(seqs), draw(timestamps), 16000, 1),
        Reason.EMPTY_PAYLOAD,
    )


@st.composite
def oversized(draw: st.DrawFn) -> Hostile:
    size, fill = draw(st.integers(MAX_BYTES + 1, MAX_BYTES + 4096)), draw(st.integers(0, 255))
    return Hostile(
        draw(good_keys),
        bytes([fill]) * size,
        _headers("audio/pcm;format=s16le", draw(seqs), draw(timestamps), 16000, 1),
        Reason.OVERSIZED,
    )


@st.composite
def missing_header(draw: st.DrawFn) -> Hostile:
    content_type = draw(st.sampled_from([*PCM_TYPES, "audio/wav"]))
    pcm = content_type in PCM_TYPES
    drop = draw(st.sampled_from(["content-type", "seq", "ts", *(["sample-rate", "channels"] if pcm else [])]))
    headers = _headers(
        content_type, draw(seqs), draw(timestamps), 16000 if pcm else None, 1 if pcm else None, drop=drop
    )
    return Hostile(draw(good_keys), draw(st.binary(min_size=1, max_size=200)), headers, Reason.MISSING_HEADER)


@st.composite
def invalid_header(draw: st.DrawFn) -> Hostile:
    name, value = draw(
        st.one_of(
            st.tuples(
                st.sampled_from(["seq", "ts", "sample-rate", "channels"]),
                st.text("abcxyz.,+e ", min_size=1, max_size=8)
                .filter(lambda v: not v.strip().lstrip("+").isdigit())
                .map(str.encode),
            ),
            st.tuples(
                st.sampled_from(["seq", "ts"]), st.integers(-(2**40), -1).map(lambda v: str(v).encode())
            ),
            st.tuples(st.just("channels"), st.sampled_from([b"0", b"33", b"1000", b"-2"])),
            st.tuples(st.just("sample-rate"), st.sampled_from([b"0", b"-16000"])),
            st.tuples(
                st.sampled_from(["content-type", "seq", "ts"]),
                st.binary(max_size=10).map(lambda b: b"\xc3(" + b),
            ),
        )
    )
    headers = _headers(
        "audio/pcm;format=s16le", draw(seqs), draw(timestamps), 16000, 1, replace=(name, value)
    )
    return Hostile(draw(good_keys), draw(st.binary(min_size=1, max_size=200)), headers, Reason.INVALID_HEADER)


@st.composite
def unknown_content_type(draw: st.DrawFn) -> Hostile:
    known = set(PCM_TYPES) | CONTAINER_TYPES
    content_type = draw(text.filter(lambda t: t.strip().lower().replace(" ", "") not in known))
    headers = _headers(
        "x", draw(seqs), draw(timestamps), 16000, 1, replace=("content-type", content_type.encode())
    )
    return Hostile(
        draw(good_keys), draw(st.binary(min_size=1, max_size=200)), headers, Reason.UNKNOWN_CONTENT_TYPE
    )


@st.composite
def sample_rate_out_of_range(draw: st.DrawFn) -> Hostile:
    rate = draw(st.one_of(st.integers(1, 7999), st.integers(96001, 10**9)))
    headers = _headers(draw(pcm_types), draw(seqs), draw(timestamps), rate, draw(channels))
    return Hostile(
        draw(good_keys), draw(st.binary(min_size=1, max_size=200)), headers, Reason.SAMPLE_RATE_OUT_OF_RANGE
    )


@st.composite
def truncated_pcm(draw: st.DrawFn) -> Hostile:
    content_type, ch = draw(pcm_types), draw(channels)
    frame = PCM_TYPES[content_type].itemsize * ch
    size = draw(
        st.integers(1, 50).flatmap(lambda frames: st.integers(1, frame - 1).map(lambda r: frames * frame + r))
    )
    value = draw(st.binary(min_size=size, max_size=size))
    headers = _headers(content_type, draw(seqs), draw(timestamps), draw(st.integers(8000, 96000)), ch)
    return Hostile(draw(good_keys), value, headers, Reason.TRUNCATED_PCM)


@st.composite
def non_finite_samples(draw: st.DrawFn) -> Hostile:
    ch = draw(channels)
    samples = draw(st.lists(st.floats(-1, 1, width=32), min_size=ch, max_size=40 * ch))
    samples = samples[: len(samples) // ch * ch]
    samples[draw(st.integers(0, len(samples) - 1))] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    headers = _headers("audio/pcm;format=f32le", draw(seqs), draw(timestamps), 16000, ch)
    return Hostile(draw(good_keys), np.asarray(samples, "<f4").tobytes(), headers, Reason.NON_FINITE_SAMPLES)


@st.composite
def corrupt_container(draw: st.DrawFn) -> Hostile:
    value = draw(
        st.one_of(
            st.binary(min_size=1, max_size=300).map(lambda b: b"\x00" + b),  # no known magic
            st.sampled_from([b"RIFF", b"fLaC", b"OggS"]).flatmap(
                lambda m: st.binary(max_size=300).map(lambda b: m + b)
            ),
            st.integers(1, len(VALID_WAV) - 1).map(lambda n: VALID_WAV[:n]),  # truncated upload
            st.tuples(st.integers(10**6, 2**31), st.integers(0, 256)).map(
                lambda a: wav_claiming(*a)
            ),  # lying header
        )
    )
    headers = _headers(draw(container_types), draw(seqs), draw(timestamps))
    return Hostile(draw(good_keys), value, headers, Reason.CORRUPT_CONTAINER)


@st.composite
def decompression_bomb(draw: st.DrawFn) -> Hostile:
    content_type, value = draw(st.sampled_from(BOMBS))
    return Hostile(
        draw(good_keys),
        value,
        _headers(content_type, draw(seqs), draw(timestamps)),
        Reason.DECOMPRESSION_BOMB,
    )


# Oversized messages are the bulky ones: rarer, so 10,000 messages stay a few MB.
hostile_messages = st.one_of(
    bad_key(),
    empty_payload(),
    missing_header(),
    invalid_header(),
    unknown_content_type(),
    sample_rate_out_of_range(),
    truncated_pcm(),
    non_finite_samples(),
    corrupt_container(),
    decompression_bomb(),
    st.integers(0, 9).flatmap(lambda i: oversized() if i == 0 else empty_payload()),
).flatmap(lambda h: extra_headers.map(lambda extra: Hostile(h.key, h.value, h.headers + extra, h.reason)))


def generate(n: int, random_seed: int = 20251125) -> list[Hostile]:
    """``n`` hostile messages from one seeded hypothesis run (no ``.example()``, reproducible)."""
    generated: list[Hostile] = []

    @seed(random_seed)
    @settings(
        max_examples=n,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(hostile_messages)
    def collect(message: Hostile) -> None:
        generated.append(message)

    collect()
    return generated
