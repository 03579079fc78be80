"""Per-stream smoothing of class probabilities and genre-change detection (pure).

Raw window predictions flicker: a drum break in a jazz track looks like hip-hop for three
seconds. An exponential moving average steadies the probabilities, and hysteresis turns them
into *events*: a new genre must lead the smoothed probabilities for ``change_min_s`` of stream
time before we announce a change, so one odd window never produces a pair of events.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class GenreChange:
    from_genre: str | None
    to_genre: str
    at_t: float
    t_end: float
    confidence: float


class GenreSmoother:
    """EMA + hysteresis for one stream.

    Parameters
    ----------
    labels : list of str
        Class names, index = column of the probabilities.
    alpha : float in (0, 1]
        Weight of the newest window (1.0 = no smoothing).
    change_min_s : float
        Stream seconds a challenger must lead before a change event (0 = immediately).
    """

    def __init__(self, labels: list[str], alpha: float, change_min_s: float) -> None:
        if not 0 < alpha <= 1:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        self.labels = labels
        self.alpha = alpha
        self.change_min_s = change_min_s
        self.probs: np.ndarray | None = None
        self.genre: str | None = None
        self._challenger: str | None = None
        self._challenger_since = 0.0

    def update(self, probs: np.ndarray, t_start: float, t_end: float) -> GenreChange | None:
        """Fold in one window (in stream order); return a change event when one is due."""
        self.probs = probs.copy() if self.probs is None else self.alpha * probs + (1 - self.alpha) * self.probs
        leader = self.labels[int(np.argmax(self.probs))]
        if leader == self.genre:
            self._challenger = None
            return None
        if leader != self._challenger:
            self._challenger, self._challenger_since = leader, t_start
        # The first genre of a stream needs no hysteresis: there is nothing to flicker from.
        if self.genre is not None and t_end - self._challenger_since < self.change_min_s:
            return None
        change = GenreChange(self.genre, leader, self._challenger_since, t_end, float(self.probs.max()))
        self.genre, self._challenger = leader, None
        return change

    @property
    def smoothed_genre(self) -> str:
        assert self.probs is not None, "update() first"
        return self.labels[int(np.argmax(self.probs))]
