"""The compute ceiling: the daemon's framing + batched inference on in-memory audio, no broker."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path
from typing import Any

import numpy as np

from streamgenre.bench.audio import INPUT_RATE, N_VOICES, voice
from streamgenre.config import Settings


def ceiling_worker(
    model_path: str,
    streams: int,
    seconds: float,
    chunk_s: float,
    max_batch: int,
    ort_threads: int,
    seed: int,
    out: Any,
) -> None:
    from streamgenre.model.contract import GenreModel
    from streamgenre.stream.daemon import limit_native_threads
    from streamgenre.stream.framing import Arrival, Framer

    limit_native_threads()  # as the daemon does
    from streamgenre.stream.wire import Chunk, ChunkHeaders

    model = GenreModel(Path(model_path), threads=ort_threads)
    framer = Framer(model.recipe, model.spec.hop_frames)
    chunk_n = round(chunk_s * INPUT_RATE)
    voices = [voice(v) for v in range(N_VOICES)]
    n_chunks = max(1, round(seconds / chunk_s))
    start_ms = 1_760_000_000_000 + seed * 7919
    # Records per worker step, as the daemon takes them from its queue.
    step_records = Settings.model_fields["step_max_records"].default
    pending: list[np.ndarray] = []
    windows, infer_s = 0, 0.0

    def infer(batch: list[np.ndarray]) -> None:
        nonlocal windows, infer_s
        t0 = time.perf_counter()
        model.predict(np.stack(batch))
        infer_s += time.perf_counter() - t0
        windows += len(batch)

    def feed(chunk_indices: range) -> None:
        nonlocal pending
        step: list[Arrival] = []
        for k in chunk_indices:
            headers = ChunkHeaders(content_type="audio/pcm;format=f32le", sample_rate=INPUT_RATE, channels=1,
                                   seq=k, ts=start_ms + round(1000 * k * chunk_s))
            for i in range(streams):
                v = voices[(i + seed) % N_VOICES]
                pos = (k * chunk_n) % (v.size - chunk_n)
                chunk = Chunk.model_construct(stream_id=f"s{seed}-{i}", headers=headers,
                                              samples=v[pos : pos + chunk_n], sample_rate=INPUT_RATE)
                step.append(Arrival(chunk, 0, k, 0.0))
                if len(step) == step_records or i == streams - 1:
                    for result in framer.push_many(step):
                        pending.extend(w.logmel for w in result.windows)
                    step = []
                while len(pending) >= max_batch:
                    infer(pending[:max_batch])
                    pending = pending[max_batch:]

    # Pre-roll, untimed: one window of audio per stream, so that the timed part runs in the
    # steady state (every stream completing a window per hop) rather than filling buffers, and
    # one-off costs (filterbank, onnxruntime's first runs) are paid before the clock starts.
    preroll = int(np.ceil(model.spec.window_s / chunk_s))
    feed(range(preroll))
    pending, windows, infer_s = [], 0, 0.0
    started, cpu0 = time.perf_counter(), time.process_time()
    feed(range(preroll, preroll + n_chunks))
    if pending:
        infer(pending)
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu0
    state = [s.state_bytes() for s in framer.streams.values()]
    out.put(
        {
            "audio_s": streams * n_chunks * chunk_s,
            "wall_s": wall,
            "cpu_s": cpu,
            "windows": windows,
            "infer_s": infer_s,
            "state_bytes_mean": float(np.mean(state)) if state else 0.0,
        }
    )


def measure_ceiling(
    model_path: Path,
    streams: int,
    seconds: float,
    chunk_s: float,
    workers: int,
    max_batch: int = Settings.model_fields["max_batch"].default,
    ort_threads: int = 1,
) -> dict[str, Any]:
    """Audio-seconds per wall-second of features + inference for ``streams`` streams."""
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    per = [streams // workers + (1 if i < streams % workers else 0) for i in range(workers)]
    procs = [
        ctx.Process(
            target=ceiling_worker,
            args=(str(model_path), n, seconds, chunk_s, max_batch, ort_threads, i, out),
        )
        for i, n in enumerate(per)
        if n
    ]
    for p in procs:
        p.start()
    parts = [out.get(timeout=600) for _ in procs]
    for p in procs:
        p.join()
    audio_s = sum(p["audio_s"] for p in parts)
    wall = max(p["wall_s"] for p in parts)
    infer = sum(p["infer_s"] for p in parts)
    cpu = sum(p["cpu_s"] for p in parts)
    return {
        "streams": streams,
        "workers": workers,
        "audio_s": audio_s,
        "wall_s": round(wall, 3),
        "audio_s_per_s": round(audio_s / wall, 1),
        "audio_s_per_cpu_s": round(audio_s / cpu, 1),
        "windows": sum(p["windows"] for p in parts),
        "model_share": round(infer / cpu, 3),
        "state_bytes_per_stream": round(float(np.mean([p["state_bytes_mean"] for p in parts])), 0),
    }
