"""The pipeline's content stage: window state, segments, dead air and stream down, per stream.

Sits between inference and publishing (:meth:`streamgenre.stream.pipeline.Pipeline._publish`):
it classifies each window's content (:mod:`streamgenre.model.content`), feeds the stream's
:class:`~streamgenre.stream.segments.Segmenter`, and keeps which streams have gone quiet at the
transport level (no chunks at all, *stream down*, as opposed to chunks of silence, *dead air*).
It does no I/O: it returns the messages to publish and sets gauges.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

import numpy as np

from streamgenre.config import Settings
from streamgenre.model.content import (
    MODEL_CLASSES,
    ContentModel,
    ContentModelError,
    ContentState,
    level_of,
)
from streamgenre.model.features import FeatureRecipe
from streamgenre.stream.messages import StreamAlert, encode_json
from streamgenre.stream.metrics import Metrics
from streamgenre.stream.segments import DeadAir, Segment, Segmenter, WindowState

log = logging.getLogger(__name__)


def level_only_states(band_power: np.ndarray, silence_dbfs: float) -> list[ContentState]:
    """Without a content model: silence by level, every audible window music (the old assumption).

    ``band_power``: ``(N, bands, n_frames)``, as :meth:`ContentStage.classify` takes it.
    """
    states = []
    for level in level_of(band_power).tolist():
        silent = level < silence_dbfs
        probs = {name: 0.0 for name in MODEL_CLASSES} | {"music": 0.0 if silent else 1.0, "silence": float(silent)}
        states.append(ContentState("silence" if silent else "music", probs, round(level, 2)))
    return states


class ContentStage:
    """Content state, segments and alerts of every stream of one worker.

    Parameters
    ----------
    settings : Settings
        ``content_model_path`` (None: level only), ``silence_dbfs``, ``segment_min_s``,
        ``dead_air_s``, ``stream_down_s``.
    recipe : FeatureRecipe
        The genre model's front end; the content model must have been fitted on the same one.
    metrics : Metrics
    """

    def __init__(self, settings: Settings, recipe: FeatureRecipe, metrics: Metrics) -> None:
        self.settings = settings
        self.recipe = recipe
        self.metrics = metrics
        self.model: ContentModel | None = None
        if settings.content_model_path is not None:
            self.model = ContentModel(settings.content_model_path, settings.silence_dbfs)
            try:
                self.model.check_recipe(recipe)
            except ContentModelError as exc:
                # Another genre model (a student, a test model) must still serve; its windows
                # get the level-only states, and the gauge and this line say so.
                log.warning("%s; states are level only (silence/music). Set STREAMGENRE_CONTENT_MODEL_PATH to "
                            "a content model fitted on this front end (training/content.py)", exc)
                self.model = None
        metrics.content_model_loaded.set(0 if self.model is None else 1)
        self.segmenters: dict[str, Segmenter] = {}
        self.down: dict[str, float] = {}  # stream -> stream time of its last audio
        self._not_music_since: dict[str, float] = {}

    def classify(self, band_power: np.ndarray) -> list[ContentState]:
        """States of a micro-batch from its windows' band power ``(N, bands, n_frames)``
        (``Window.band_power``: the audio as it arrived, before the level normalisation)."""
        if self.model is None:
            return level_only_states(band_power, self.settings.silence_dbfs)
        return self.model.classify_bands(band_power, self.recipe)

    def new_programme(self, stream_id: str, state: str, t_start: float) -> bool:
        """True when this music window follows at least ``segment_min_s`` of non-music: the
        genre smoothing should start afresh rather than carry the last song into the next one
        across the talk or silence between them."""
        if state != "music":
            self._not_music_since.setdefault(stream_id, t_start)
            return False
        since = self._not_music_since.pop(stream_id, None)
        return since is not None and t_start - since >= self.settings.segment_min_s

    def observe(self, stream_id: str, window: WindowState) -> tuple[list[bytes], list[bytes]]:
        """Fold a published window into its stream's segments; JSON of closed segments and alerts."""
        segmenter = self.segmenters.get(stream_id)
        if segmenter is None:
            segmenter = self.segmenters[stream_id] = Segmenter(
                stream_id, self.settings.segment_min_s, self.settings.dead_air_s)
        was_dead = segmenter.in_dead_air
        closed, dead_air = segmenter.update(window)
        self.metrics.content_windows.labels(window.state).inc()
        if segmenter.in_dead_air != was_dead:
            self.metrics.dead_air_streams.inc() if segmenter.in_dead_air else self.metrics.dead_air_streams.dec()
        return self._segments(closed), [self._dead_air(stream_id, alert, window) for alert in dead_air]

    def _segments(self, closed: Iterable[Segment]) -> list[bytes]:
        out = []
        for segment in closed:
            self.metrics.segments.labels(segment.state).inc()
            out.append(encode_json({"schema_version": 1, **segment.to_dict()}))
        return out

    def _dead_air(self, stream_id: str, alert: DeadAir, window: WindowState) -> bytes:
        self.metrics.alerts.labels(alert.kind).inc()
        log.info("%s %s at %.1f (%.1f s silent)", stream_id, alert.kind, alert.at_t, alert.silent_s)
        return StreamAlert(stream_id=stream_id, kind=alert.kind, at_t=round(alert.at_t, 4),  # type: ignore[arg-type]
                           silent_s=alert.silent_s, ts=round(window.t_end * 1000), title=alert.title).to_json()

    def audio_arrived(self, stream_ids: Iterable[str], stream_time: dict[str, float]) -> list[tuple[str, bytes]]:
        """``stream_up`` alerts for down streams that sent audio again."""
        alerts = []
        for stream_id in stream_ids:
            last = self.down.pop(stream_id, None)
            if last is not None:
                now = stream_time.get(stream_id, last)
                alerts.append((stream_id, self._transport_alert(stream_id, "stream_up", last, now - last)))
        self.metrics.streams_down.set(len(self.down))
        return alerts

    def check_down(self, idle_s: dict[str, tuple[float, float]]) -> list[tuple[str, bytes]]:
        """``stream_down`` alerts for streams idle longer than ``stream_down_s``.

        ``idle_s`` maps each open stream to (seconds since its last chunk, stream time of the
        end of its audio).
        """
        alerts = []
        for stream_id, (idle, last_t) in idle_s.items():
            if idle >= self.settings.stream_down_s and stream_id not in self.down:
                self.down[stream_id] = last_t
                alerts.append((stream_id, self._transport_alert(stream_id, "stream_down", last_t, idle)))
        self.metrics.streams_down.set(len(self.down))
        return alerts

    def _transport_alert(self, stream_id: str, kind: str, at_t: float, silent_s: float) -> bytes:
        self.metrics.alerts.labels(kind).inc()
        log.warning("%s %s (%.1f s without audio)", stream_id, kind, silent_s)
        segmenter = self.segmenters.get(stream_id)
        title = segmenter.current.title if segmenter is not None and segmenter.current is not None else None
        return StreamAlert(stream_id=stream_id, kind=kind, at_t=round(at_t, 4),  # type: ignore[arg-type]
                           silent_s=round(silent_s, 3), ts=round(time.time() * 1000), title=title).to_json()

    def close(self, stream_ids: Iterable[str]) -> list[tuple[str, bytes]]:
        """Streams that ended or were forgotten: their open segments are final."""
        out = []
        for stream_id in stream_ids:
            segmenter = self.segmenters.pop(stream_id, None)
            if segmenter is not None:
                if segmenter.in_dead_air:
                    self.metrics.dead_air_streams.dec()
                out.extend((stream_id, value) for value in self._segments(segmenter.close()))
            self.down.pop(stream_id, None)
            self._not_music_since.pop(stream_id, None)
        self.metrics.streams_down.set(len(self.down))
        return out
