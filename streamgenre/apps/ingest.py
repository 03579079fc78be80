"""Producer side: decode audio files or URLs and publish them as chunks, paced like a live stream.

This is what a radio relay or an upload service does, packaged as ``streamgenre ingest``. Audio
is sent as little-endian PCM at the source's own rate and channel count: the daemon downmixes
and resamples, so producers stay dumb and cheap.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from kafka import KafkaProducer

from streamgenre.config import Settings
from streamgenre.stream.wire import chunk_headers


class IngestError(RuntimeError):
    """The input cannot be read (missing file, unsupported format, no ffmpeg for a URL)."""


@dataclass(frozen=True)
class AudioBlock:
    samples: np.ndarray  # (n, channels) float32
    sample_rate: int


def _ffmpeg_blocks(source: str, block_s: float) -> Iterator[AudioBlock]:
    """Decode anything ffmpeg reads (mp3, http streams) to 44.1 kHz stereo float32 blocks."""
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise IngestError(f"{source}: needs ffmpeg on PATH (soundfile cannot read it)")
    rate, channels = 44100, 2
    process = subprocess.Popen(
        [ffmpeg, "-v", "error", "-i", source, "-f", "f32le", "-ac", str(channels), "-ar", str(rate), "-"],
        stdout=subprocess.PIPE,
    )
    assert process.stdout is not None
    block_bytes = int(block_s * rate) * channels * 4
    try:
        while data := process.stdout.read(block_bytes):
            usable = len(data) - len(data) % (channels * 4)
            yield AudioBlock(np.frombuffer(data[:usable], "<f4").reshape(-1, channels), rate)
    finally:
        process.kill()
        process.wait()


def read_blocks(source: str, block_s: float) -> Iterator[AudioBlock]:
    """Yield ``block_s``-second blocks of a file (soundfile) or of a URL/mp3 (ffmpeg)."""
    if "://" in source:
        yield from _ffmpeg_blocks(source, block_s)
        return
    path = Path(source)
    if not path.is_file():
        raise IngestError(f"{source}: no such file")
    try:
        info = sf.info(str(path))
    except sf.LibsndfileError:
        yield from _ffmpeg_blocks(source, block_s)
        return
    block = max(1, int(block_s * info.samplerate))
    for samples in sf.blocks(str(path), blocksize=block, dtype="float32", always_2d=True):
        yield AudioBlock(samples, info.samplerate)


def encode_pcm(samples: np.ndarray, fmt: str) -> bytes:
    """Interleaved little-endian PCM bytes for ``audio/pcm;format=<fmt>``."""
    if fmt == "s16le":
        return (np.clip(samples, -1.0, 1.0) * 32767).astype("<i2").tobytes()
    if fmt == "f32le":
        return samples.astype("<f4").tobytes()
    raise ValueError(f"unknown PCM format {fmt!r}")


class ChunkPublisher:
    """Publishes one stream's chunks with consecutive ``seq`` and sample-accurate ``ts``."""

    def __init__(self, producer: KafkaProducer, topic: str, stream_id: str, start_ms: int | None = None,
                 fmt: str = "s16le") -> None:
        self.producer, self.topic, self.stream_id, self.fmt = producer, topic, stream_id, fmt
        self.start_ms = int(time.time() * 1000) if start_ms is None else start_ms
        self.seq = 0
        self.seconds_sent = 0.0  # not a sample count: consecutive sources may differ in rate

    def publish(self, block: AudioBlock, eos: bool = False) -> None:
        ts = self.start_ms + round(1000 * self.seconds_sent)
        headers = chunk_headers(f"audio/pcm;format={self.fmt}", self.seq, ts, block.sample_rate,
                                block.samples.shape[1], eos)
        self.producer.send(self.topic, key=self.stream_id.encode(), value=encode_pcm(block.samples, self.fmt),
                           headers=headers)
        self.seq += 1
        self.seconds_sent += block.samples.shape[0] / block.sample_rate


def make_producer(settings: Settings) -> KafkaProducer:
    return KafkaProducer(bootstrap_servers=settings.bootstrap_servers.split(","), linger_ms=5,
                         max_request_size=settings.max_message_bytes + 65536, **settings.kafka_security())


def ingest(settings: Settings, sources: list[str], stream_id: str, speed: float = 1.0, chunk_s: float = 0.5,
           fmt: str = "s16le", loop: bool = False) -> int:
    """Publish ``sources`` one after another as one stream; returns the number of chunks sent.

    ``speed`` 1.0 paces chunks in real time (a live relay), X sends X times faster, 0 sends as
    fast as possible (an upload). The last chunk carries ``eos`` unless ``loop`` is set.
    """
    for source in sources:
        if "://" not in source and not Path(source).is_file():
            raise IngestError(f"{source}: no such file")
    producer = make_producer(settings)
    publisher = ChunkPublisher(producer, settings.input_topic, stream_id, fmt=fmt)
    started = time.monotonic()
    try:
        while True:
            for index, source in enumerate(sources):
                blocks = read_blocks(source, chunk_s)
                block = next(blocks, None)
                while block is not None:
                    following = next(blocks, None)
                    last = following is None and index == len(sources) - 1 and not loop
                    publisher.publish(block, eos=last)
                    if speed > 0:
                        ahead = publisher.seconds_sent / speed - (time.monotonic() - started)
                        if ahead > 0:
                            time.sleep(ahead)
                    block = following
            if not loop:
                break
    finally:
        producer.flush()
        producer.close()
    return publisher.seq
