"""Memory at scale: RSS and state per stream with thousands of streams held, most idle, some active.

The real-time runs stop at a few hundred streams (the box's CPU), but a daemon holds every
stream it has seen until the stream is evicted, so its memory is set by how many streams it
holds, not by how many send right now. Draining a 10,000-stream backlog through the broker
would take this box an hour of CPU, so this runs in a fresh process of its own: the daemon's
per-stream objects — a :class:`~streamgenre.stream.framing.Framer` state (resampler, streaming
STFT, frame buffer, chunk offsets) and a :class:`~streamgenre.stream.smoothing.GenreSmoother`
— for ``streams`` streams, each fed a window, a hop and a chunk of audio (so every buffer page
has been written: ``np.zeros`` pages cost no RSS until then), then ``active`` of them fed
``ACTIVE_S`` seconds more. The model is not run: its memory does not grow with streams.
RSS growth over the process before the first stream, per stream, is the figure; what the
states themselves account for (``state_bytes``) is beside it, so the gap is Python's overhead.
"""

from __future__ import annotations

import math
import multiprocessing
import time
from pathlib import Path
from typing import Any

import numpy as np

from streamgenre.bench.audio import INPUT_RATE, N_VOICES, voice
from streamgenre.bench.procfs import rss_bytes
from streamgenre.config import DEFAULT_CHUNK_S, Settings

ACTIVE_S = 6.0  # seconds of audio the active streams receive after every stream holds a window


def memory_worker(model_path: str, streams: int, active: int, chunk_s: float, out: Any) -> None:
    """In a spawned process: hold ``streams`` stream states, feed ``active`` more; report RSS."""
    import gc
    import os

    from streamgenre.model.contract import load_spec
    from streamgenre.stream.framing import Arrival, Framer
    from streamgenre.stream.heap import release_free_heap
    from streamgenre.stream.smoothing import GenreSmoother
    from streamgenre.stream.wire import Chunk, ChunkHeaders

    spec = load_spec(Path(model_path))
    settings = Settings.model_fields
    framer = Framer(spec.recipe, spec.hop_frames, max_streams=max(streams, settings["max_streams"].default))
    smoothers: dict[str, GenreSmoother] = {}
    probs = np.full(len(spec.labels), 1.0 / len(spec.labels), np.float32)
    chunk_n = round(chunk_s * INPUT_RATE)
    voices = [voice(v) for v in range(N_VOICES)]
    step_records = settings["step_max_records"].default
    start_ms = 1_760_000_000_000

    def feed(ids: range, chunks: range) -> int:
        windows = 0
        for k in chunks:
            headers = ChunkHeaders(content_type="audio/pcm;format=f32le", sample_rate=INPUT_RATE, channels=1,
                                   seq=k, ts=start_ms + round(1000 * k * chunk_s))
            for block in range(ids.start, ids.stop, step_records):
                step = []
                for i in range(block, min(block + step_records, ids.stop)):
                    v = voices[i % N_VOICES]
                    pos = (k * chunk_n) % (v.size - chunk_n)
                    step.append(Arrival(Chunk.model_construct(stream_id=f"m-{i}", headers=headers,
                                                              samples=v[pos : pos + chunk_n], sample_rate=INPUT_RATE),
                                        0, k, 0.0))
                for result in framer.push_many(step):
                    for w in result.windows:
                        smoother = smoothers.setdefault(w.stream_id, GenreSmoother(spec.labels, 0.5, 10.0))
                        smoother.update(probs, w.t_start, w.t_end)
                        windows += 1
        return windows

    def settled_rss() -> int:
        # As the daemon's worker does on its housekeeping tick (streamgenre/stream/heap.py): freed
        # temporaries are not the streams' memory.
        gc.collect()
        release_free_heap()
        return rss_bytes(os.getpid())

    rss0 = settled_rss()
    # A window and a hop: whatever a stream's phase on the window grid (up to a hop of its first
    # audio makes no window), every stream completes at least one window.
    held_chunks = math.ceil((spec.window_s + spec.hop_s) / chunk_s) + 1
    started, cpu0 = time.perf_counter(), time.process_time()
    windows = feed(range(streams), range(held_chunks))
    rss_held = settled_rss()
    windows += feed(range(min(active, streams)), range(held_chunks, held_chunks + round(ACTIVE_S / chunk_s)))
    rss_active = settled_rss()
    state = [s.state_bytes() for s in framer.streams.values()]
    out.put({
        "streams": streams, "active": active, "streams_held": len(framer.streams),
        "windows": windows, "audio_s_per_stream": held_chunks * chunk_s,
        "rss_before_mb": round(rss0 / 2**20, 1), "rss_held_mb": round(rss_held / 2**20, 1),
        "rss_with_active_mb": round(rss_active / 2**20, 1),
        "rss_bytes_per_stream": round((max(rss_held, rss_active) - rss0) / streams),
        "state_bytes_per_stream": round(float(np.mean(state))) if state else 0,
        "wall_s": round(time.perf_counter() - started, 1), "cpu_s": round(time.process_time() - cpu0, 1),
    })


def measure_memory(model_path: Path, streams: int, active: int, chunk_s: float = DEFAULT_CHUNK_S,
                   verbose: bool = True) -> dict[str, Any]:
    """:func:`memory_worker` in a fresh spawned process (its RSS is this measurement's alone)."""
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    worker = ctx.Process(target=memory_worker, args=(str(model_path), streams, active, chunk_s, out))
    worker.start()
    result = out.get(timeout=3600)
    worker.join()
    if verbose:
        print(f"  memory: {result}", flush=True)
    return result
