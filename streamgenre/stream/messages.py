"""The JSON outputs: predictions, genre events, segments and alerts.

Topics ``genre.predictions``, ``genre.events``, ``genre.segments`` and ``genre.alerts`` carry
these pydantic models; their JSON Schemas are generated from the classes into
``streamgenre/stream/schemas/`` (``python -m streamgenre.stream.messages``), and a test checks
that the committed schemas match and that emitted messages validate. The input side of the
wire is :mod:`streamgenre.stream.wire`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = 1
SCHEMA_DIR = Path(__file__).resolve().parent / "schemas"


ContentStateName = Literal["music", "speech", "mixed", "silence"]


class Prediction(BaseModel):
    """One window's classification (topic ``genre.predictions``, Redis latest/timeline)."""

    schema_version: Literal[1] = SCHEMA_VERSION
    stream_id: str
    window_seq: int = Field(description="start of the window // hop; the same on replay")
    t_start: float = Field(description="window start, seconds of stream time (the producer's ts clock)")
    t_end: float = Field(description="window end, seconds of stream time")
    ts: int = Field(description="epoch ms of the window end (producer clock)")
    genre: str | None = Field(description="top genre of this window; null unless state is music")
    confidence: float = Field(ge=0, le=1, description="calibrated probability of the top genre: the model "
                              "sidecar's temperature is applied, so among held-out windows at confidence c "
                              "about a share c was right")
    uncertain: bool = Field(False, description="confidence below the daemon's STREAMGENRE_UNCERTAIN_BELOW "
                            "(default 0.5: more likely wrong than right); absent in messages of older daemons")
    probs: dict[str, float] = Field(description="the genre model's calibrated output, whatever the state")
    smoothed_genre: str | None = Field(description="genre after smoothing; null unless state is music")
    smoothed_probs: dict[str, float] = Field(description="smoothed genre probabilities of the music windows so far")
    model_version: str
    latency_ms: float = Field(description="window complete (last audio received) to publish, ms")
    title: str | None = Field(None, description="now-playing title (chunk header `title`) when the window completed")
    neighbours: list[dict] | None = Field(None, description="top-k catalogue tracks (Redis only, optional)")
    state: ContentStateName = Field(description="content of the window: music, speech, mixed or silence")
    state_probs: dict[str, float] = Field(description="probability of each state (they sum to 1)")
    level_dbfs: float = Field(description="RMS level of the window, dBFS (full-scale sine = -3, floor -120)")


class SegmentMessage(BaseModel):
    """A closed run of windows with one state, genre and title (topic ``genre.segments``,
    Redis ``{prefix}:{stream}:segments``)."""

    schema_version: Literal[1] = SCHEMA_VERSION
    stream_id: str
    start: float = Field(description="stream time (s, producer clock) of the first window's start")
    end: float = Field(description="stream time (s) of the last window's end")
    duration_s: float
    state: ContentStateName
    genre: str | None = Field(description="smoothed genre while music, else null")
    confidence: float = Field(ge=0, le=1, description="mean probability of the segment's state over its windows")
    genre_confidence: float | None = Field(None, description="mean smoothed probability of its genre (music only)")
    title: str | None = Field(None, description="now-playing title (chunk header `title`)")
    windows: int = Field(ge=1)


class StreamAlert(BaseModel):
    """Dead air or a stream down/up (topic ``genre.alerts``)."""

    schema_version: Literal[1] = SCHEMA_VERSION
    stream_id: str
    kind: Literal["dead_air_start", "dead_air_end", "stream_down", "stream_up"]
    at_t: float = Field(description="stream time (s): where the silence began / the last or first audio")
    silent_s: float = Field(description="seconds of silence (dead air) or without audio (stream down) so far")
    ts: int = Field(description="epoch ms (producer clock) when the alert was raised")
    title: str | None = None

    def to_json(self) -> bytes:
        return self.model_dump_json().encode()

class GenreEvent(BaseModel):
    """A change of the smoothed genre of a stream (topic ``genre.events``)."""

    model_config = ConfigDict(populate_by_name=True)

    schema_version: Literal[1] = SCHEMA_VERSION
    stream_id: str
    from_genre: str | None = Field(alias="from", description="previous genre; null for the first")
    to_genre: str = Field(alias="to")
    at_t: float = Field(description="stream time (s) of the window where the new genre took over")
    ts: int = Field(description="epoch ms (producer clock) of that window's end")
    confidence: float

    def to_json(self) -> bytes:
        return self.model_dump_json(by_alias=True).encode()


def encode_json(payload: dict[str, Any]) -> bytes:
    """Compact JSON, as pydantic's ``model_dump_json`` writes it (the hot path skips pydantic)."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


def rounded_probs(labels: list[str], probs: np.ndarray) -> dict[str, float]:
    """``{label: p}`` to 5 decimals. One numpy rounding and ``tolist`` rather than ``round`` on
    each numpy scalar: the daemon builds two of these per window. ``k / 1e5`` is correctly
    rounded, so the JSON is what Python's ``round`` writes (ties aside)."""
    return dict(zip(labels, np.round(np.asarray(probs, np.float64), 5).tolist(), strict=True))


def write_schemas(directory: Path = SCHEMA_DIR) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, model in (("prediction", Prediction), ("event", GenreEvent), ("segment", SegmentMessage),
                        ("alert", StreamAlert)):
        schema = model.model_json_schema(by_alias=True)
        (directory / f"{name}.schema.json").write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    write_schemas()
