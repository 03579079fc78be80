"""Asynchronous uploads: published to the input topic like any stream, read back from Redis.

A job is a stream named ``job-<id>`` that sends its whole file with ``eos``; the daemon
classifies it like any other stream and writes its windows to the Redis timeline. The job record
(``{prefix}:job:<id>``) says how many windows to expect, so the API can tell "pending" from
"done" without knowing anything about the daemon's progress.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import numpy as np

from streamgenre.apps.ingest import AudioBlock, ChunkPublisher
from streamgenre.apps.uploads import DecodedAudio
from streamgenre.config import Settings
from streamgenre.model.features import FeatureRecipe
from streamgenre.stream.streamstate import expected_windows
from streamgenre.stream.tracks import aligned_anchor_ms, summarise
from streamgenre.stream.wire import BadInput, chunk_headers


class PublishError(RuntimeError):
    """The broker did not take the job (down, or refused it)."""


def publish_job(settings: Settings, producer: Any, recipe: FeatureRecipe, hop_frames: int, data: bytes,
                decoded: DecodedAudio) -> dict[str, Any]:
    """Publish an upload as one stream with ``eos``; returns the job record (``job_id`` included).

    A file the daemon decodes itself goes as it is, in one message (the daemon frames it block
    by block); anything else (or a file over max_message_bytes) as float PCM chunks of 10 s.
    Raises :class:`PublishError`, or :class:`BadInput` when a later block of the file is bad.
    """
    job_id = uuid.uuid4().hex
    stream_id = f"job-{job_id}"
    ts_ms = aligned_anchor_ms(stream_id, recipe.sample_rate, hop_frames * recipe.hop_length)
    frames = round(decoded.duration_s * decoded.sample_rate)
    try:
        if decoded.wire_type is not None and len(data) <= settings.max_message_bytes:
            producer.send(settings.input_topic, key=stream_id.encode(), value=data,
                          headers=chunk_headers(decoded.wire_type, 0, ts_ms, eos=True))
        else:
            publisher = ChunkPublisher(producer, settings.input_topic, stream_id, start_ms=ts_ms, fmt="f32le")
            blocks = decoded.blocks()
            block: np.ndarray | None = next(blocks)
            frames = 0
            while block is not None:
                following = next(blocks, None)
                publisher.publish(AudioBlock(block.reshape(-1, 1), decoded.sample_rate), eos=following is None)
                frames += block.shape[0]
                block = following
        producer.flush(timeout=30)
    except BadInput:
        raise
    except Exception as exc:  # kafka-python raises several unrelated types when the broker is away
        raise PublishError(f"cannot publish the job: {type(exc).__name__}") from exc
    return {"job_id": job_id, "stream_id": stream_id, "ts_ms": ts_ms, "duration_s": round(decoded.duration_s, 3),
            "windows_expected": expected_windows(stream_id, ts_ms, frames, decoded.sample_rate, recipe, hop_frames),
            "submitted": time.time()}


def job_state(record: dict[str, Any], predictions: list[dict[str, Any]]) -> dict[str, Any]:
    """A job's status from its record and the predictions in its Redis timeline (pure).

    Done once every expected window is there; a replay after a daemon restart may repeat
    windows (at-least-once), so they are counted once by ``window_seq``.
    """
    by_seq = {p["window_seq"]: p for p in predictions}
    windows = [by_seq[seq] for seq in sorted(by_seq)]
    state: dict[str, Any] = {"job_id": record["job_id"], "status": "pending", "windows_done": len(windows),
                             "windows_expected": record["windows_expected"], "result": None}
    if not windows or len(windows) < record["windows_expected"]:
        return state
    labels = list(windows[0]["probs"])
    probs = np.array([[w["probs"][label] for label in labels] for w in windows], np.float32)
    origin = record["ts_ms"] / 1000
    states = [{key: w[key] for key in ("state", "state_probs", "level_dbfs") if key in w} for w in windows]
    summary = summarise(labels, probs, [w["t_start"] - origin for w in windows],
                        [w["t_end"] - origin for w in windows], states)
    state["status"] = "done"
    state["result"] = {**summary, "windows": len(windows), "duration_s": record["duration_s"],
                       "model_version": windows[-1]["model_version"], "neighbours": windows[-1].get("neighbours")}
    return state
