"""Live neighbours: the catalogue tracks that sound most like a stream's recent audio.

Each stream keeps the embeddings of its last ``neighbours_window_s`` of windows; the catalogue
(:mod:`streamgenre.model.similarity`) is asked for the top ``neighbours_k`` of them, and the
answer rides along in the stream's Redis ``latest`` value (never in the Kafka prediction, whose
schema stays small).
"""

from __future__ import annotations

import collections
from collections.abc import Container
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from streamgenre.model.contract import GenreModel
from streamgenre.stream.messages import encode_json


class NeighbourIndex(Protocol):
    """What live neighbours need from a catalogue (see :mod:`streamgenre.model.similarity`)."""

    def neighbours(self, embeddings: np.ndarray, k: int) -> list[dict]: ...

    def check_model(self, model: GenreModel) -> None: ...


@dataclass
class _StreamNeighbours:
    """A stream's recent window embeddings and the neighbours last found for them."""

    recent: collections.deque[np.ndarray]
    neighbours: list[dict] = field(default_factory=list)
    windows_since_query: int = 0


class LiveNeighbours:
    """Per-stream recent embeddings and their catalogue neighbours.

    Parameters
    ----------
    catalog : NeighbourIndex
    k : int
        Neighbours per stream.
    keep_windows : int
        Recent windows whose embeddings are averaged (``neighbours_window_s / hop_s``).
    """

    def __init__(self, catalog: NeighbourIndex, k: int, keep_windows: int) -> None:
        self.catalog = catalog
        self.k = k
        self.keep_windows = max(1, keep_windows)
        self.streams: dict[str, _StreamNeighbours] = {}

    def attach(self, stream_id: str, prediction: dict[str, Any], embedding: np.ndarray) -> bytes:
        """The JSON of ``prediction`` with the stream's current neighbours added."""
        live = self.streams.get(stream_id)
        if live is None:
            live = self.streams[stream_id] = _StreamNeighbours(collections.deque(maxlen=self.keep_windows))
        live.recent.append(embedding)
        # A catalogue query costs up to ~10 ms at 100k tracks; the recent-audio mean barely moves
        # from one window to the next, so refresh it three times per neighbours window.
        if live.windows_since_query == 0:
            live.neighbours = self.catalog.neighbours(np.stack(live.recent), self.k)
        live.windows_since_query = (live.windows_since_query + 1) % max(1, self.keep_windows // 3)
        return encode_json({**prediction, "neighbours": live.neighbours})

    def forget(self, open_streams: Container[str]) -> None:
        """Drop the state of every stream not in ``open_streams``."""
        for stream_id in [s for s in self.streams if s not in open_streams]:
            del self.streams[stream_id]
