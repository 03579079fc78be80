"""Per-stream segments and dead air (pure, no I/O): window states in, closed segments and alerts out.

A **segment** is a run of windows with one *label* — the content state, the now-playing title,
and the genre while the state is music and no title is known (:attr:`WindowState.label`).
Labels of single windows flicker (a 3-second jingle, a drum break that looks like speech), so
a new label must hold for ``min_segment_s`` of stream time before the open segment closes;
until then its windows are *pending*. If the old label comes back first, the pending windows
are folded into the open segment, so a jingle shorter than ``min_segment_s`` never splits a
song. When a challenger does hold, the open segment ends where the challenger's run began
(the flicker before it stays with the old segment).

**Dead air** is judged on the raw window states, not the segments: ``dead_air_s`` of
consecutive silent windows opens an episode (one ``dead_air_start`` alert) and the first
audible window ends it (``dead_air_end`` with its duration). Hysteresis would only delay it.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

Label = tuple[str, str | None, str | None]


@dataclass(frozen=True)
class WindowState:
    """What the segmenter needs of one published window (``genre`` is None unless music)."""

    t_start: float
    t_end: float
    state: str
    state_probs: dict[str, float]
    genre: str | None
    genre_probs: dict[str, float] | None
    title: str | None

    @property
    def label(self) -> Label:
        """State, title, and the genre only when there is no title: a title names the song, and
        a genre flip inside one song (the model hearing a rock bridge in a jazz tune) is no new
        segment; without titles the genre is all that tells two songs apart."""
        return self.state, self.genre if self.title is None else None, self.title


@dataclass
class Segment:
    """A run of windows with one label; ``end`` moves while it is open."""

    stream_id: str
    start: float
    end: float
    label: Label
    state_prob_sum: float = 0.0
    genre_votes: collections.Counter[str] = field(default_factory=collections.Counter)
    genre_prob_sums: collections.Counter[str] = field(default_factory=collections.Counter)
    windows: int = 0

    @property
    def state(self) -> str:
        return self.label[0]

    @property
    def title(self) -> str | None:
        return self.label[2]

    @property
    def genre(self) -> str | None:
        """The label's genre, or with a title the genre most of its music windows had."""
        if self.state != "music" or not self.genre_votes:
            return None
        return self.label[1] or self.genre_votes.most_common(1)[0][0]

    def add(self, window: WindowState) -> None:
        self.end = window.t_end
        # Confidence in *this segment's* label, also over the windows it absorbed from a
        # challenger that faded.
        self.state_prob_sum += window.state_probs.get(self.state, 0.0)
        if window.genre is not None and window.genre_probs is not None:
            self.genre_votes[window.genre] += 1
            self.genre_prob_sums.update(window.genre_probs)
        self.windows += 1

    def to_dict(self) -> dict[str, object]:
        """The ``genre.segments`` message (see :class:`streamgenre.stream.messages.SegmentMessage`)."""
        genre = self.genre
        music_windows = self.genre_votes.total()
        return {
            "stream_id": self.stream_id, "start": round(self.start, 4), "end": round(self.end, 4),
            "duration_s": round(self.end - self.start, 3),
            "state": self.state, "genre": genre,
            "confidence": round(self.state_prob_sum / max(1, self.windows), 5),
            "genre_confidence": round(self.genre_prob_sums[genre] / music_windows, 5) if genre else None,
            "title": self.title, "windows": self.windows,
        }


@dataclass(frozen=True)
class DeadAir:
    """A dead-air alert: ``dead_air_start`` (once ``dead_air_s`` of silence) or ``dead_air_end``."""

    kind: str
    at_t: float
    silent_s: float
    title: str | None


@dataclass
class Segmenter:
    """Segments and dead air of one stream; feed windows in stream order with :meth:`update`.

    Parameters
    ----------
    stream_id : str
    min_segment_s : float
        Stream seconds a new label must hold before the open segment closes.
    dead_air_s : float
        Seconds of consecutive silent windows that make dead air.
    """

    stream_id: str
    min_segment_s: float
    dead_air_s: float
    current: Segment | None = None
    pending: list[WindowState] = field(default_factory=list)
    silence_since: float | None = None
    in_dead_air: bool = False

    def update(self, window: WindowState) -> tuple[list[Segment], list[DeadAir]]:
        """Fold in one window; return the segments it closed and the dead-air alerts it raised."""
        return self._segment(window), self._dead_air(window)

    def _segment(self, window: WindowState) -> list[Segment]:
        if self.current is None:
            self.current = self._open(window)
            return []
        if window.label == self.current.label:
            for held in self.pending:  # the challenger faded: its windows were part of this segment
                self.current.add(held)
            self.pending.clear()
            self.current.add(window)
            return []
        self.pending.append(window)
        run_start = len(self.pending) - 1
        while run_start > 0 and self.pending[run_start - 1].label == window.label:
            run_start -= 1
        winner = window.label
        if window.t_end - self.pending[run_start].t_start < self.min_segment_s:
            if window.t_end - self.pending[0].t_start < 2 * self.min_segment_s:
                return []
            # No label has held for twice the minimum: the audio alternates (talk over a beat,
            # a medley). Rather than hold windows without bound, the most frequent pending
            # label takes over from its first pending window.
            labels = [held.label for held in self.pending]
            winner = max(labels, key=labels.count)
            run_start = labels.index(winner)
        for held in self.pending[:run_start]:
            self.current.add(held)
        closed = self.current
        first = self.pending[run_start]
        self.current = Segment(self.stream_id, first.t_start, first.t_end, winner)
        for held in self.pending[run_start:]:
            self.current.add(held)
        self.pending.clear()
        return [closed]

    def _open(self, window: WindowState) -> Segment:
        segment = Segment(self.stream_id, window.t_start, window.t_end, window.label)
        segment.add(window)
        return segment

    def _dead_air(self, window: WindowState) -> list[DeadAir]:
        if window.state != "silence":
            alerts = []
            if self.in_dead_air and self.silence_since is not None:
                alerts.append(DeadAir("dead_air_end", window.t_start, round(window.t_start - self.silence_since, 3),
                                      window.title))
            self.silence_since, self.in_dead_air = None, False
            return alerts
        if self.silence_since is None:
            self.silence_since = window.t_start
        silent_s = window.t_end - self.silence_since
        if not self.in_dead_air and silent_s >= self.dead_air_s:
            self.in_dead_air = True
            return [DeadAir("dead_air_start", self.silence_since, round(silent_s, 3), window.title)]
        return []

    def close(self) -> list[Segment]:
        """End of stream: the open segment (with any pending windows) is final."""
        if self.current is None:
            return []
        for held in self.pending:
            self.current.add(held)
        closed, self.current, self.pending = self.current, None, []
        return [closed]
