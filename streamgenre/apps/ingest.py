"""Producer side: decode audio files or URLs and publish them as chunks, paced like a live stream.

This is what a radio relay or an upload service does, packaged as ``streamgenre ingest``. Audio
is sent as little-endian PCM at the source's own rate and channel count: the daemon downmixes
and resamples, so producers stay dumb and cheap.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from kafka import KafkaProducer

from streamgenre.config import DEFAULT_CHUNK_S, Settings
from streamgenre.stream.wire import BadInput, chunk_headers, validate_stream_id


class IngestError(RuntimeError):
    """The input cannot be read (missing file, unsupported format, no ffmpeg for a URL)."""


@dataclass(frozen=True)
class AudioBlock:
    samples: np.ndarray  # (n, channels) float32
    sample_rate: int


@dataclass
class SourceReport:
    """What one input gave: the audio read and published, and what went wrong.

    ``error`` is set when the input yielded no audio at all (the run fails); ``warning`` when it
    yielded less than it should have (a decoder stopped early, a truncated file).
    """

    source: str
    seconds: float = 0.0
    chunks: int = 0
    error: str | None = None
    warning: str | None = None

    def line(self) -> str:
        if self.error is not None:
            return f"{self.source}: {self.error}"
        return f"{self.source}: read {self.seconds:.2f} s of audio ({self.chunks} chunks)"


def _ffmpeg_blocks(source: str, block_s: float) -> Iterator[AudioBlock]:
    """Decode anything ffmpeg reads (mp3, http streams) to 44.1 kHz stereo float32 blocks."""
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise IngestError(f"{source}: needs ffmpeg on PATH (soundfile cannot read it)")
    rate, channels = 44100, 2
    # ffmpeg's own message ("Connection refused", "Invalid data found ...") is the clear line a
    # user needs; a file rather than a pipe, so a chatty decoder can never block on stderr.
    with tempfile.TemporaryFile() as stderr:
        process = subprocess.Popen(
            [ffmpeg, "-nostdin", "-v", "error", "-i", source, "-f", "f32le", "-ac", str(channels), "-ar", str(rate),
             "-"],
            stdout=subprocess.PIPE, stderr=stderr,
        )
        assert process.stdout is not None
        block_bytes = int(block_s * rate) * channels * 4
        try:
            while data := process.stdout.read(block_bytes):
                usable = len(data) - len(data) % (channels * 4)
                yield AudioBlock(np.frombuffer(data[:usable], "<f4").reshape(-1, channels), rate)
            returncode = process.wait()
        finally:
            process.kill()
            process.wait()
        stderr.seek(0)
        lines = stderr.read().decode("utf-8", "replace").strip().splitlines()
    if returncode != 0:
        # The cause ("Failed to resolve hostname ...") comes before ffmpeg's conclusion
        # ("Input/output error"): keep both, without the "[tcp @ 0x...]" and input-name prefixes.
        parts = list(dict.fromkeys(re.sub(r"^\[[^]]*\] ", "", line).removeprefix(f"{source}: ") for line in lines))
        parts = [part for part in parts if not any(part in other for other in parts if other != part)]
        raise IngestError(f"{source}: ffmpeg: {'; '.join(parts) or f'exit status {returncode}'}")


def _ogg_is_truncated(path: Path) -> bool:
    """True when an Ogg file's last page lacks the end-of-stream flag (it was cut off).

    Ogg declares no length up front, so a file cut at any page boundary decodes cleanly to
    whatever it still holds; only the missing last page (header_type bit 0x04) gives it away.
    """
    with path.open("rb") as file:
        size = file.seek(0, 2)
        file.seek(max(0, size - 65536))
        tail = file.read()
    last_page = tail.rfind(b"OggS")
    return last_page < 0 or last_page + 5 >= len(tail) or not tail[last_page + 5] & 0x04


def _declared_shortfall(path: Path, declared_frames: int, sample_rate: int, frames_read: int) -> str | None:
    """Why ``path`` holds less audio than its container says, or None when it does not."""
    if declared_frames > frames_read:  # FLAC and others declare their length in the header
        return (f"read {frames_read / sample_rate:.2f} s of the {declared_frames / sample_rate:.2f} s "
                "the container declares")
    with path.open("rb") as file:
        head = file.read(12)
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":  # libsndfile clamps a WAV to the bytes present
        declared, present = int.from_bytes(head[4:8], "little") + 8, path.stat().st_size
        if declared > present:
            return f"the WAV header declares {declared} bytes, the file has {present}"
    if head[:4] == b"OggS" and _ogg_is_truncated(path):
        return "the Ogg stream has no end-of-stream page (truncated file?)"
    return None


def read_blocks(source: str, block_s: float, report: SourceReport | None = None) -> Iterator[AudioBlock]:
    """Yield ``block_s``-second blocks of a file (soundfile) or of a URL/mp3 (ffmpeg).

    Raises IngestError when the input cannot be decoded; ``report.warning`` says when it held
    less audio than its container declares.
    """
    report = report if report is not None else SourceReport(source)
    if "://" in source:
        yield from _ffmpeg_blocks(source, block_s)
        return
    path = Path(source)
    if not path.is_file():
        raise IngestError(f"{source}: no such file")
    if not path.stat().st_size:
        raise IngestError(f"{source}: empty file (0 bytes)")
    try:
        info = sf.info(str(path))
    except sf.LibsndfileError:
        yield from _ffmpeg_blocks(source, block_s)
        return
    block = max(1, int(block_s * info.samplerate))
    frames_read = 0
    try:
        for samples in sf.blocks(str(path), blocksize=block, dtype="float32", always_2d=True):
            frames_read += samples.shape[0]
            yield AudioBlock(samples, info.samplerate)
    except sf.LibsndfileError as exc:
        if not frames_read:
            raise IngestError(f"{source}: soundfile cannot decode it: {exc}") from exc
    report.warning = _declared_shortfall(path, info.frames, info.samplerate, frames_read)


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
                         max_request_size=settings.max_message_bytes + 65536,
                         bootstrap_timeout_ms=int(1000 * settings.cli_broker_timeout_s), **settings.kafka_security())


def _blocks_of(sources: list[str], chunk_s: float, loop: bool, reports: list[SourceReport],
               on_source_done: Callable[[SourceReport], None]) -> Iterator[AudioBlock]:
    """Every block of every source in order (forever with ``loop``); ``reports`` says what each gave.

    A source that fails is reported and skipped, so the others still play; the next source's
    first block follows the last good one.
    """
    while True:
        reports.clear()
        for source in sources:
            report = SourceReport(source)
            reports.append(report)
            try:
                for block in read_blocks(source, chunk_s, report):
                    report.seconds += block.samples.shape[0] / block.sample_rate
                    report.chunks += 1
                    yield block
            except IngestError as exc:
                message = str(exc).removeprefix(f"{source}: ")
                if report.seconds:
                    report.warning = f"decoding stopped after {report.seconds:.2f} s: {message}"
                else:
                    report.error = message
            if report.error is None and not report.seconds:
                report.error = "no audio decoded"
            on_source_done(report)
        if not loop or not any(report.seconds for report in reports):
            return  # looping over inputs that give nothing would spin forever


def ingest(settings: Settings, sources: list[str], stream_id: str, speed: float = 1.0, chunk_s: float = DEFAULT_CHUNK_S,
           fmt: str = "s16le", loop: bool = False,
           on_source_done: Callable[[SourceReport], None] = lambda report: None) -> list[SourceReport]:
    """Publish ``sources`` one after another as one stream; returns what each source gave.

    ``speed`` 1.0 paces chunks in real time (a live relay), X sends X times faster, 0 sends as
    fast as possible (an upload). The last chunk published carries ``eos`` unless ``loop`` is
    set: one block of look-ahead, across sources, so that a failing last source still ends the
    stream. ``on_source_done`` hears about each source as soon as it is exhausted.

    Raises IngestError before connecting when the stream id is invalid or a file is missing.
    """
    try:
        validate_stream_id(stream_id)
    except BadInput as exc:
        raise IngestError(f"--stream-id {stream_id[:40]!r}{'...' if len(stream_id) > 40 else ''}: "
                          f"{exc.detail}") from exc
    for source in sources:
        if "://" not in source and not Path(source).is_file():
            raise IngestError(f"{source}: no such file")
    producer = make_producer(settings)
    publisher = ChunkPublisher(producer, settings.input_topic, stream_id, fmt=fmt)
    reports: list[SourceReport] = []
    started = time.monotonic()
    try:
        blocks = _blocks_of(sources, chunk_s, loop, reports, on_source_done)
        current = next(blocks, None)
        while current is not None:
            following = next(blocks, None)
            publisher.publish(current, eos=following is None and not loop)
            if speed > 0:
                ahead = publisher.seconds_sent / speed - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)
            current = following
    finally:
        producer.flush()
        producer.close()
    return reports
