"""Whole tracks (uploads, a back catalogue) through the daemon's own stages, for many callers at once.

The HTTP API and ``streamgenre classify`` classify a file as the daemon classifies a stream that
sends all its audio in one message with ``eos``: the same :class:`~streamgenre.stream.framing.Framer`
(resampler, incremental log-mel, window grid), the same :class:`~streamgenre.stream.batching.MicroBatcher`
and the same :class:`~streamgenre.model.contract.GenreModel`. Framing runs in the caller's
thread (tracks are framed in parallel); the windows of every track in flight go into one
micro-batcher, which one inference thread drains, so concurrent requests share batches exactly
as concurrent streams do in the daemon.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from streamgenre.model.content import ContentState
from streamgenre.model.contract import GenreModel
from streamgenre.stream.batching import MicroBatcher
from streamgenre.stream.framing import Framer
from streamgenre.stream.messages import rounded_probs
from streamgenre.stream.metrics import Metrics
from streamgenre.stream.streamstate import Window, grid_phase
from streamgenre.stream.wire import Chunk, ChunkHeaders

TRACK_STREAM_ID = "track"


class TooShort(ValueError):
    """The file decodes to no audio at all, so there is nothing to classify."""


class Neighbours(Protocol):
    def neighbours(self, embeddings: np.ndarray, k: int) -> list[dict]: ...


class ContentClassifier(Protocol):
    """The daemon's content stage (:class:`streamgenre.stream.content.ContentStage`)."""

    def classify(self, logmels: np.ndarray, level_gains_db: np.ndarray | None = None) -> list[ContentState]: ...


def aligned_anchor_ms(stream_id: str, recipe_rate: int, hop_samples: int) -> int:
    """A ``ts`` (ms) that puts the stream's first window at its first sample.

    Windows sit on a per-stream grid shifted by :func:`grid_phase` (a whole number of ms); a
    track anchored at ts 0 would lose up to one hop of its opening to the grid.
    """
    return grid_phase(stream_id, hop_samples, recipe_rate) * 1000 // recipe_rate


def summarise(labels: list[str], probs: np.ndarray, t_starts: list[float], t_ends: list[float],
              states: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Track genre, its probabilities, the share of each content state, and the window timeline.

    As in the daemon, genre is only a property of music: the track's probabilities are the mean
    over its music windows (all windows when no states are known), and a window or a track with
    no music has genre null. ``states[i]`` is a window's ``{"state", "state_probs", "level_dbfs"}``.
    """
    states = states or [{} for _ in t_starts]
    music = np.array([s.get("state", "music") == "music" for s in states], bool)
    timeline = [
        {"t_start": round(start, 3), "t_end": round(end, 3),
         "genre": labels[int(np.argmax(p))] if is_music else None,
         "confidence": round(float(p.max()), 5), "probs": rounded_probs(labels, p), **state}
        for start, end, p, state, is_music in zip(t_starts, t_ends, probs, states, music, strict=True)
    ]
    names = [s["state"] for s in states if "state" in s]
    shares = {name: round(names.count(name) / len(names), 4) for name in sorted(set(names))}
    if not music.any():
        return {"genre": None, "confidence": None, "probabilities": None, "states": shares, "timeline": timeline}
    mean = probs[music].mean(axis=0)
    best = int(np.argmax(mean))
    return {"genre": labels[best], "confidence": round(float(mean[best]), 5),
            "probabilities": rounded_probs(labels, mean), "states": shares, "timeline": timeline}


@dataclass
class _Track:
    """One track's windows in flight: filled in by the inference thread."""

    n: int
    probs: list[np.ndarray | None] = field(default_factory=list)
    embeddings: list[np.ndarray | None] = field(default_factory=list)
    left: int = 0
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.probs, self.embeddings, self.left = [None] * self.n, [None] * self.n, self.n


class TrackClassifier:
    """One model, one micro-batcher and one inference thread shared by every caller.

    Parameters
    ----------
    model : GenreModel
    max_batch, max_wait_ms : the daemon's micro-batch settings.
    hop_s : window hop in seconds; None: the sidecar's.
    catalog : optional catalogue; its k nearest tracks are added to each result.
    metrics : optional daemon metrics (inference time, batch size, windows).
    content : optional content stage; each window gets its state (music, speech, mixed, silence).
    """

    def __init__(self, model: GenreModel, max_batch: int, max_wait_ms: float, hop_s: float | None = None,
                 catalog: Neighbours | None = None, neighbours_k: int = 5, metrics: Metrics | None = None,
                 content: ContentClassifier | None = None) -> None:
        self.model = model
        self.content = content
        recipe = model.recipe
        self.hop_frames = recipe.seconds_to_frames(hop_s) if hop_s else model.spec.hop_frames
        self.catalog, self.neighbours_k, self.metrics = catalog, neighbours_k, metrics
        self._batcher = MicroBatcher(max_batch, max_wait_ms)
        self._owners: dict[int, tuple[_Track, int]] = {}
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._infer_forever, name="track-inference", daemon=True)
        self._thread.start()

    def close(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(10)

    def frame(self, first: np.ndarray, more: Iterator[np.ndarray] | None, rate: int) -> list[Window]:
        """The track's windows (raises wire.BadInput when a later block fails to decode)."""
        framer = Framer(self.model.recipe, self.hop_frames)  # per track: callers frame in parallel
        hop_samples = self.hop_frames * self.model.recipe.hop_length
        ts = aligned_anchor_ms(TRACK_STREAM_ID, self.model.recipe.sample_rate, hop_samples)
        headers = ChunkHeaders(content_type="audio/x-track", seq=0, ts=ts, eos=True)
        chunk = Chunk.model_construct(stream_id=TRACK_STREAM_ID, headers=headers, samples=first, sample_rate=rate,
                                      more=more)
        result = framer.push(chunk, 0, 0, time.monotonic())
        if result.bad_input is not None:
            raise result.bad_input
        return result.windows

    def classify(self, first: np.ndarray, more: Iterator[np.ndarray] | None, rate: int,
                 timeout_s: float = 300.0) -> dict[str, Any]:
        """Classify one decoded track; the JSON-ready result (see :func:`summarise`)."""
        windows = self.frame(first, more, rate)
        if not windows:  # audio shorter than a window still gets one (the framer's short window)
            raise TooShort("the file holds no audio")
        track = self._submit(windows)
        if not track.done.wait(timeout_s):
            raise TimeoutError("inference did not finish in time")
        if track.error is not None:
            raise track.error
        probs = np.stack(track.probs)
        origin = windows[0].t_start
        states = None
        if self.content is not None:  # in the caller's thread: the inference thread stays on the model
            contents = self.content.classify(np.stack([w.band_power for w in windows]))
            states = [{"state": c.state, "state_probs": c.probs, "level_dbfs": c.level_dbfs} for c in contents]
        result = summarise(self.model.labels, probs, [w.t_start - origin for w in windows],
                           [w.t_end - origin for w in windows], states)
        result["windows"] = len(windows)
        result["model_version"] = self.model.version
        if self.catalog is not None:
            result["neighbours"] = self.catalog.neighbours(np.stack(track.embeddings), self.neighbours_k)
        return result

    def _submit(self, windows: list[Window]) -> _Track:
        track = _Track(len(windows))
        with self._cond:
            now = time.monotonic()
            for index, window in enumerate(windows):
                self._batcher.add(window, now)
                self._owners[id(window)] = (track, index)
            self._cond.notify()
        return track

    def _infer_forever(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._stopping:
                        return
                    wait = self._batcher.seconds_until_due(time.monotonic())
                    if wait == 0.0:
                        break
                    self._cond.wait(wait)  # None: until a track is submitted
                windows = self._batcher.take()
                owners = [self._owners.pop(id(window)) for window in windows]
            try:
                started = time.perf_counter()
                probs, embeddings = self.model.predict(np.stack([w.logmel for w in windows]))
            except Exception as exc:  # fail these tracks, keep serving the others
                for track, _ in owners:
                    track.error = exc
                    track.done.set()
                continue
            if self.metrics is not None:
                self.metrics.inference_seconds.observe(time.perf_counter() - started)
                self.metrics.batch_size.observe(len(windows))
                self.metrics.windows.inc(len(windows))
            for (track, index), window_probs, embedding in zip(owners, probs, embeddings, strict=True):
                track.probs[index], track.embeddings[index] = window_probs, embedding
                track.left -= 1
                if track.left == 0:
                    track.done.set()
