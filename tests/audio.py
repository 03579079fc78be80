"""Generated audio and chunk encoders shared by the tests (no recorded data needed)."""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
import soundfile as sf

from streamgenre.apps.ingest import encode_pcm
from streamgenre.stream.streamstate import grid_phase
from streamgenre.stream.wire import chunk_headers

CONTAINER_FORMATS = {"wav": ("audio/wav", "WAV", "PCM_16"), "flac": ("audio/flac", "FLAC", "PCM_16"),
                     "ogg": ("audio/ogg", "OGG", "VORBIS")}


def tone_mix(seconds: float, rate: int, channels: int, seed: int) -> np.ndarray:
    """Noise plus a couple of partials, ``(n, channels)`` float32 in [-1, 1]."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    base = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 1000) * t) + 0.1 * rng.normal(size=t.size)
    stereo = np.stack([base * (1 - 0.2 * c) for c in range(channels)], axis=1)
    return np.clip(stereo, -1, 1).astype(np.float32)


@dataclass
class EncodedChunk:
    value: bytes
    headers: list[tuple[str, bytes]]
    n_samples: int  # samples per channel the daemon will decode from it


def encode_chunk(samples: np.ndarray, rate: int, fmt: str, seq: int, ts_ms: int, eos: bool = False) -> EncodedChunk:
    """Encode ``(n, channels)`` audio as one chunk in ``fmt`` (s16le, f32le, wav, flac, ogg)."""
    channels = samples.shape[1]
    if fmt in ("s16le", "f32le"):
        headers = chunk_headers(f"audio/pcm;format={fmt}", seq, ts_ms, rate, channels, eos)
        return EncodedChunk(encode_pcm(samples, fmt), headers, samples.shape[0])
    content_type, container, subtype = CONTAINER_FORMATS[fmt]
    buffer = io.BytesIO()
    sf.write(buffer, samples, rate, format=container, subtype=subtype)
    value = buffer.getvalue()
    decoded = sf.info(io.BytesIO(value)).frames
    return EncodedChunk(value, chunk_headers(content_type, seq, ts_ms, eos=eos), decoded)


def chunked_stream(samples: np.ndarray, rate: int, fmt: str, start_ms: int, chunk_sizes: list[int],
                   first_seq: int = 0) -> list[EncodedChunk]:
    """Cut audio into chunks of the given sizes (cycled), with consecutive seq and exact ts."""
    chunks, position, index = [], 0, 0
    while position < samples.shape[0]:
        size = chunk_sizes[index % len(chunk_sizes)]
        piece = samples[position : position + size]
        ts = start_ms + round(1000 * position / rate)
        last = position + size >= samples.shape[0]
        chunks.append(encode_chunk(piece, rate, fmt, first_seq + index, ts, eos=last))
        position += size
        index += 1
    return chunks


def expected_window_seqs(stream_id: str, start_ms: int, n_input: int, rate: int, model_rate: int,
                         hop_samples: int, window_samples: int) -> list[int]:
    """The absolute-grid windows a stream must produce (see streamgenre.stream.framing)."""
    phase = grid_phase(stream_id, hop_samples, model_rate)
    anchor = round(start_ms * model_rate / 1000)
    n_out = n_input if rate == model_rate else math.floor(n_input * model_rate / rate + 0.5)
    first = math.ceil((anchor - phase) / hop_samples)
    seqs = []
    k = first
    while k * hop_samples + phase + window_samples <= anchor + n_out:
        seqs.append(k)
        k += 1
    return seqs
