"""Decoding an uploaded file, whatever its codec, into the blocks the framer takes.

soundfile first (WAV, FLAC, Ogg/Vorbis/Opus, MP3 with libsndfile >= 1.1): it decodes in blocks
and states the length up front, so a long or hostile file is refused before it is decoded
(:func:`streamgenre.stream.wire.open_container`, the daemon's own check). Anything else (AAC/M4A,
WMA, WebM...) goes through ffmpeg, which writes mono float32 at the model's rate; its output is
read in blocks and cut off one block past the duration limit, so a bomb costs at most that.
"""

from __future__ import annotations

import io
import itertools
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from streamgenre.stream.wire import CONTAINER_BLOCK_S, BadInput, Reason, open_container

# Wire content types of the formats the daemon decodes itself (an async upload in these is
# published as it is; anything else is published as PCM).
WIRE_FORMATS = {"WAV": "audio/wav", "FLAC": "audio/flac", "OGG": "audio/ogg"}


@dataclass
class DecodedAudio:
    """A decoded file: its first block, the rest (lazy) and the rate; ``duration_s`` as declared."""

    first: np.ndarray
    more: Iterator[np.ndarray] | None
    sample_rate: int
    duration_s: float
    wire_type: str | None  # the wire content type when the daemon can decode the bytes as they are

    def blocks(self) -> Iterator[np.ndarray]:
        return itertools.chain([self.first], self.more or [])


def probe_duration(data: bytes) -> float | None:
    """Declared duration of a file soundfile reads, without decoding it; None if it cannot."""
    try:
        info = sf.info(io.BytesIO(data))
    except Exception:  # libsndfile reports unknown formats through several exception types
        return None
    return info.frames / info.samplerate if info.samplerate else None


def decode_bytes(data: bytes, max_seconds: float, ffmpeg_rate: int) -> DecodedAudio:
    """Decode an upload; raises :class:`BadInput` (undecodable, or longer than ``max_seconds``)."""
    if not data:
        raise BadInput(Reason.EMPTY_PAYLOAD, "the upload is empty")
    try:
        info = sf.info(io.BytesIO(data))
    except Exception:  # not a format libsndfile knows: try ffmpeg
        return _decode_ffmpeg(data, max_seconds, ffmpeg_rate)
    first, more, rate = open_container(data, max_seconds)
    return DecodedAudio(first, more, rate, info.frames / rate, WIRE_FORMATS.get(info.format))


def decode_path(path: Path, max_seconds: float, ffmpeg_rate: int) -> DecodedAudio:
    return decode_bytes(path.read_bytes(), max_seconds, ffmpeg_rate)


def _decode_ffmpeg(data: bytes, max_seconds: float, rate: int) -> DecodedAudio:
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise BadInput(Reason.CORRUPT_CONTAINER, "not a format soundfile reads, and ffmpeg is not installed")
    # A file rather than a pipe: MP4/M4A keep their index at the end and ffmpeg must seek.
    with tempfile.NamedTemporaryFile(suffix=".upload") as source:
        source.write(data)
        source.flush()
        process = subprocess.Popen(
            [ffmpeg, "-nostdin", "-v", "error", "-i", source.name, "-vn", "-f", "f32le", "-ac", "1",
             "-ar", str(rate), "-"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        limit = int(max_seconds * rate)
        block_bytes = 4 * max(1, int(CONTAINER_BLOCK_S * rate))
        pieces: list[np.ndarray] = []
        decoded = 0
        assert process.stdout is not None and process.stderr is not None
        try:
            while data_block := process.stdout.read(block_bytes):
                samples = np.frombuffer(data_block[: len(data_block) - len(data_block) % 4], "<f4")
                decoded += samples.shape[0]
                if decoded > limit:
                    raise BadInput(Reason.DECOMPRESSION_BOMB, f"decodes to more than {max_seconds:.0f} s of audio")
                pieces.append(samples)
            error = process.stderr.read().decode("utf-8", "replace").strip()
        finally:
            process.kill()
            process.wait()
    if process.returncode not in (0, -9) or not decoded:
        reason = error.splitlines()[-1] if error else "no audio stream"
        raise BadInput(Reason.CORRUPT_CONTAINER, f"ffmpeg cannot decode it: {reason}"[:300])
    samples = np.concatenate(pieces)
    if not np.isfinite(samples).all():
        raise BadInput(Reason.NON_FINITE_SAMPLES, "audio contains NaN or Inf")
    return DecodedAudio(samples, None, rate, samples.shape[0] / rate, None)
