"""The worker's pipeline: record → decode → frame → micro-batch → infer → smooth → outputs.

Owned by one worker thread; the only I/O it does is through the sinks it is given. It also
knows, per partition, which offset is safe to commit: see :meth:`Pipeline.checkpoint`.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from streamgenre.config import Settings
from streamgenre.model.content import ContentState
from streamgenre.model.contract import GenreModel
from streamgenre.model.features import log_mel, window_input
from streamgenre.stream.batching import MicroBatcher
from streamgenre.stream.content import ContentStage
from streamgenre.stream.framing import Arrival, Framer
from streamgenre.stream.messages import SCHEMA_VERSION, GenreEvent, encode_json, rounded_probs
from streamgenre.stream.metrics import Metrics
from streamgenre.stream.neighbours import LiveNeighbours, NeighbourIndex
from streamgenre.stream.segments import WindowState
from streamgenre.stream.sinks import CacheSink, OutMessage, OutputSink
from streamgenre.stream.smoothing import GenreSmoother
from streamgenre.stream.source import Record
from streamgenre.stream.streamstate import Window
from streamgenre.stream.wire import BadInput, decode_chunk

log = logging.getLogger(__name__)

INTERNAL_ERROR = "internal_error"
DEAD_LETTER_LOG_INTERVAL_S = 10.0


class DeadLetterLog:
    """One warning per dead letter, but at most one line per ``interval_s``.

    A misconfigured producer (an empty key, say) dead-letters every chunk it sends; a line per
    message would drown the log, no line at all left users guessing why nothing came out. The
    suppressed ones are counted into the next line, and every one is in
    ``streamgenre_dlq_messages_total{reason}`` anyway.
    """

    def __init__(self, interval_s: float = DEAD_LETTER_LOG_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_s = interval_s
        self._clock = clock
        self._next_line = float("-inf")
        self._suppressed = 0

    def record(self, reason: str, where: str, detail: str) -> bool:
        """Log this dead letter unless a line went out less than ``interval_s`` ago; True if logged."""
        now = self._clock()
        if now < self._next_line:
            self._suppressed += 1
            return False
        since = f" (+{self._suppressed} more since the last such line)" if self._suppressed else ""
        log.warning("dead letter %s at %s: %s%s", reason, where, detail[:200], since)
        self._suppressed = 0
        self._next_line = now + self.interval_s
        return True


class Pipeline:
    """Everything between a consumed record and the published outputs, for one worker.

    Parameters
    ----------
    settings : Settings
    model : GenreModel
        Loaded model; its sidecar fixes the features and the window hop (unless
        ``settings.hop_s`` overrides the hop).
    kafka : OutputSink
        Receives predictions, events and dead letters (a :class:`~streamgenre.stream.sinks.KafkaSink`
        in the daemon).
    redis : CacheSink or None
        Latest + timeline cache (a :class:`~streamgenre.stream.sinks.RedisSink`); None disables it.
    metrics : Metrics
    catalog : NeighbourIndex, optional
        When given, the top-k catalogue neighbours of each stream's recent audio are attached
        to its Redis ``latest`` value.
    """

    def __init__(self, settings: Settings, model: GenreModel, kafka: OutputSink, redis: CacheSink | None,
                 metrics: Metrics, catalog: NeighbourIndex | None = None) -> None:
        self.settings = settings
        self.model = model
        self.kafka = kafka
        self.redis = redis
        self.metrics = metrics
        recipe = model.recipe
        hop_frames = recipe.seconds_to_frames(settings.hop_s) if settings.hop_s else model.spec.hop_frames
        self.hop_s = recipe.frames_to_seconds(hop_frames)
        self.framer = Framer(recipe, hop_frames, settings.max_gap_s, settings.max_streams)
        self.batcher = MicroBatcher(settings.max_batch, settings.max_wait_ms)
        self.smoothers: dict[str, GenreSmoother] = {}
        self.content = ContentStage(settings, recipe, metrics)
        self._closed_segments: list[tuple[str, bytes]] = []
        self.neighbours = None if catalog is None else LiveNeighbours(
            catalog, settings.neighbours_k, round(settings.neighbours_window_s / self.hop_s))
        self.last_offset: dict[int, int] = {}
        self.dead_letter_log = DeadLetterLog()
        # (output messages sent at the checkpoint, offsets it allows), oldest first.
        self._checkpoints: collections.deque[tuple[int, dict[int, int]]] = collections.deque()

    def warm_up(self) -> None:
        """Build filterbanks and run one inference before consuming.

        The first call into librosa's filterbank and onnxruntime's first run take seconds (lazy
        imports, JIT, memory planning); paid on the first live chunk, that stall would show up
        as seconds of latency for every stream queued behind it.
        """
        recipe = self.model.recipe
        self.model.predict(window_input(log_mel(np.zeros(recipe.window_samples, np.float32), recipe), recipe)[None])

    # -- input -----------------------------------------------------------------------------
    def process(self, records: Sequence[Record]) -> None:
        """Decode records and add the windows they complete to the batcher. Never raises.

        Takes several records at once so that their audio shares one spectral pass
        (:meth:`Framer.push_many`); a bad record goes to the DLQ without holding up the others.
        """
        arrivals: list[Arrival] = []
        decoded_records: list[Record] = []
        for record in records:
            self.metrics.chunks.inc()
            self.metrics.bytes.inc(len(record.value or b""))
            try:
                chunk = decode_chunk(record.key, record.value, record.headers, self.settings.max_message_bytes,
                                     self.settings.max_decoded_s)
            except BadInput as exc:
                self.metrics.decode_errors.labels(exc.reason.value).inc()
                self.dead_letter(record, exc.reason.value, exc.detail)
            else:
                arrivals.append(Arrival(chunk, record.partition, record.offset, record.received_at))
                decoded_records.append(record)
        try:
            results = self.framer.push_many(arrivals)
        except Exception as exc:  # a bug must cost these records, not the process and every station with it
            log.exception("framing failed; %d records go to the DLQ", len(arrivals))
            # Their streams may be half-advanced: start them afresh rather than glue audio.
            self.framer.forget({arrival.chunk.stream_id for arrival in arrivals})
            decoded = {(arrival.partition, arrival.offset) for arrival in arrivals}
            for record in records:
                if (record.partition, record.offset) in decoded:
                    self.dead_letter(record, INTERNAL_ERROR, repr(exc))
            results = []
        for record, result in zip(decoded_records, results, strict=False):
            if result.bad_input is not None:  # a long container's later block failed to decode
                self.metrics.decode_errors.labels(result.bad_input.reason.value).inc()
                self.dead_letter(record, result.bad_input.reason.value, result.bad_input.detail)
        if self.content.down:
            stream_time = {a.chunk.stream_id: a.chunk.headers.ts / 1000 for a in arrivals}
            for stream_id, alert in self.content.audio_arrived(stream_time, stream_time):
                self.kafka.send(OutMessage(self.settings.alerts_topic, stream_id.encode(), alert))
        now = time.monotonic()
        for result in results:
            if result.reset_reason:
                self.metrics.window_resets.labels(result.reset_reason).inc()
                if result.reset_reason == "seq_gap":
                    self.metrics.seq_gaps.inc()
            for window in result.windows:
                if window.short:
                    self.metrics.short_streams.inc()
                self.batcher.add(window, now)
        for record in records:
            self.last_offset[record.partition] = record.offset

    def dead_letter(self, record: Record, reason: str, detail: str) -> None:
        """Forward the original key, bytes and headers with the reason; nothing is dropped."""
        headers = [(k, v) for k, v in record.headers if not k.startswith("dlq-")] + [
            ("dlq-reason", reason.encode()),
            ("dlq-detail", detail[:1000].encode("utf-8", "replace")),
            ("dlq-source", f"{record.topic}/{record.partition}/{record.offset}".encode()),
        ]
        value = record.value or b""
        if len(value) > self.settings.max_message_bytes:
            # The producer refuses a request this large: forwarded whole, it would fail every
            # flush and block all commits behind it. Keep its head and say how long it was.
            headers.append(("dlq-original-bytes", str(len(value)).encode()))
            value = value[: self.settings.max_message_bytes]
        self.kafka.send(OutMessage(self.settings.dlq_topic, record.key, value, headers))
        self.metrics.dlq_messages.labels(reason).inc()
        self.dead_letter_log.record(reason, f"{record.topic}/{record.partition}/{record.offset}", detail)

    # -- inference and outputs ---------------------------------------------------------------
    def run_due_batches(self, flush: bool = False) -> None:
        """Run every batch that is due (full, or its oldest window has waited ``max_wait_ms``);
        with ``flush`` the last partial one too.

        The worker calls this after each step, so all due batches run before it takes more
        input: running one batch per step let windows pile up behind the features of later
        steps whenever a step completed more windows than a batch holds.
        """
        while len(self.batcher) and (flush or self.batcher.due(time.monotonic())):
            self._run_batch()

    def _run_batch(self) -> None:
        """Infer one micro-batch and publish its predictions, events and Redis writes."""
        windows = self.batcher.take()
        started = time.perf_counter()
        logmels = np.stack([w.logmel for w in windows])
        probs, embeddings = self.model.predict(logmels)
        self.metrics.inference_seconds.observe(time.perf_counter() - started)
        self.metrics.batch_size.observe(len(windows))
        contents = self.content.classify(np.stack([w.band_power for w in windows]))
        timeline: list[tuple[str, bytes]] = []
        latest: dict[str, bytes] = {}
        for window, window_probs, embedding, content in zip(windows, probs, embeddings, contents, strict=True):
            prediction, value = self._publish(window, window_probs, content)
            timeline.append((window.stream_id, value))
            latest[window.stream_id] = (value if self.neighbours is None
                                        else self.neighbours.attach(window.stream_id, prediction, embedding))
        segments, self._closed_segments = self._closed_segments, []
        if self.redis is not None and not self.redis.write(timeline, latest, segments):
            self.metrics.redis_errors.inc()
            self.metrics.redis_skipped.inc(len(timeline))
        self.metrics.redis_up.set(1 if self.redis is None or self.redis.up else 0)
        done, wall_now = time.monotonic(), time.time()
        for window in windows:
            self.metrics.window_latency.observe(done - window.completed_at)
            self.metrics.e2e_latency.observe(max(0.0, wall_now - window.chunk_ts_ms / 1000))
        self.metrics.windows.inc(len(windows))

    def _publish(self, window: Window, probs: np.ndarray, content: ContentState) -> tuple[dict[str, Any], bytes]:
        """Send a window's prediction (and a genre event if the smoothed genre changed).

        Returns the prediction and its JSON bytes, which Redis stores as they were sent.

        The prediction is built as a plain dict in :class:`~streamgenre.stream.messages.Prediction`'s field
        order rather than through pydantic: at hundreds of windows per second the model
        construction and dump were a measurable share of the worker. The schema stays the
        contract; ``tests/test_e2e.py`` validates every published message against it.
        """
        labels = self.model.labels
        new_programme = self.content.new_programme(window.stream_id, content.state, window.t_start)
        smoother = self.smoothers.get(window.stream_id)
        if smoother is None or new_programme:
            smoother = GenreSmoother(labels, self.settings.ema_alpha, self.settings.change_min_s)
            self.smoothers[window.stream_id] = smoother
        # Genre only while music: speech and silence would drag the smoothed genre (a news
        # bulletin used to come out as "hiphop"), so they do not reach the smoother either.
        music = content.state == "music"
        change = smoother.update(probs, window.t_start, window.t_end) if music else None
        smoothed = smoother.smoothed_genre if music else None
        smoothed_probs = rounded_probs(labels, probs if smoother.probs is None else smoother.probs)
        best = int(np.argmax(probs))
        key = window.stream_id.encode()
        prediction = {
            "schema_version": SCHEMA_VERSION, "stream_id": window.stream_id, "window_seq": window.window_seq,
            "t_start": round(window.t_start, 4), "t_end": round(window.t_end, 4), "ts": round(window.t_end * 1000),
            "genre": labels[best] if music else None, "confidence": round(float(probs[best]), 5),
            "uncertain": bool(probs[best] < self.settings.uncertain_below), "probs": rounded_probs(labels, probs),
            "smoothed_genre": smoothed, "smoothed_probs": smoothed_probs,
            "model_version": self.model.version,
            "latency_ms": round(1000 * (time.monotonic() - window.completed_at), 3),
            "title": window.title,
            "state": content.state, "state_probs": content.probs, "level_dbfs": content.level_dbfs,
        }
        value = encode_json(prediction)
        self.kafka.send(OutMessage(self.settings.output_topic, key, value))
        self.metrics.predictions_by_genre.labels(labels[best]).inc()
        self._segment(window, content.state, content.probs, smoothed, smoothed_probs)
        if change is not None:
            event = GenreEvent.model_validate({
                "stream_id": window.stream_id, "from": change.from_genre, "to": change.to_genre,
                "at_t": round(change.at_t, 4), "ts": round(change.t_end * 1000),
                "confidence": round(change.confidence, 5),
            })
            self.kafka.send(OutMessage(self.settings.events_topic, key, event.to_json()))
            self.metrics.genre_changes.inc()
        return prediction, value

    def _segment(self, window: Window, state: str, state_probs: dict[str, float], genre: str | None,
                 genre_probs: dict[str, float]) -> None:
        """Feed the stream's segments; publish the segments and dead-air alerts that closes."""
        closed, alerts = self.content.observe(window.stream_id, WindowState(
            window.t_start, window.t_end, state, state_probs, genre, genre_probs if genre else None, window.title))
        key = window.stream_id.encode()
        for value in closed:
            self.kafka.send(OutMessage(self.settings.segments_topic, key, value))
            self._closed_segments.append((window.stream_id, value))
        for value in alerts:
            self.kafka.send(OutMessage(self.settings.alerts_topic, key, value))

    # -- commits and state -------------------------------------------------------------------
    def checkpoint(self) -> None:
        """Mark a point whose offsets become committable once the broker has acknowledged the
        outputs; does not wait for the acknowledgement (see :meth:`committable`).

        The order is the guarantee:

        1. Infer and publish every complete window still waiting in the batcher (Redis is
           written per batch, so this also writes Redis or counts the skip), then the final
           segment of every stream that ended: both are outputs of the records processed.
        2. Note how many output messages have been sent so far: every prediction, event and
           dead letter for the records processed up to here is among them.
        3. Per partition, the commit offset is the oldest chunk an open window still needs, or
           the record after the last processed one when no window needs anything. Committing
           that replays at most one window's audio after a crash, and loses nothing.

        The offsets are handed out by :meth:`committable` only after step 2's messages are all
        acknowledged, so a commit never gets ahead of the outputs. Not waiting here matters:
        a synchronous flush stalled the worker (and every window queued behind it) for the
        broker's round trip once per checkpoint, which was the p99 of window → publish.
        """
        # Step 1.
        self.run_due_batches(flush=True)
        self._forget_closed_streams()
        # Steps 2 and 3.
        self._checkpoints.append((self.kafka.sent, self._safe_offsets()))

    def committable(self) -> dict[int, int]:
        """Offsets of every checkpoint whose outputs are now all acknowledged (newest wins).

        Raises SinkError when outputs failed even after a resend; nothing is committable then.
        """
        if not self._checkpoints:
            return {}
        acknowledged = self.kafka.acknowledged()
        offsets: dict[int, int] = {}
        while self._checkpoints and self._checkpoints[0][0] <= acknowledged:
            offsets.update(self._checkpoints.popleft()[1])
        return offsets

    def checkpoint_and_flush(self) -> dict[int, int]:
        """:meth:`checkpoint`, then block until the outputs are acknowledged; return the offsets.

        For rebalances and shutdown, which must commit before they let go of the partitions.
        Raises SinkError (nothing is committable) when the outputs are not acknowledged.
        """
        self.checkpoint()
        self.kafka.flush()
        return self.committable()

    def _safe_offsets(self) -> dict[int, int]:
        needed = self.framer.needed_offsets()
        return {p: min(needed.get(p, last + 1), last + 1) for p, last in self.last_offset.items()}

    def evict_idle(self, now: float) -> None:
        """Raise stream-down alerts for streams quiet for ``stream_down_s``; forget idle ones."""
        down_s = self.settings.stream_down_s
        quiet = {sid: (now - state.last_activity, state.expected_ts_ms() / 1000)
                 for sid, state in self.framer.streams.items()
                 if now - state.last_activity >= down_s and sid not in self.content.down}
        for stream_id, alert in self.content.check_down(quiet):
            self.kafka.send(OutMessage(self.settings.alerts_topic, stream_id.encode(), alert))
        if self.framer.evict_idle(now, self.settings.idle_timeout_s):
            self._forget_closed_streams()

    def drop_partitions(self, partitions: set[int]) -> None:
        """Forget the streams of revoked partitions; their new owner replays from our commit."""
        self.framer.drop_partitions(partitions)
        for partition in partitions:
            self.last_offset.pop(partition, None)
        self._forget_closed_streams()

    def _forget_closed_streams(self) -> None:
        open_streams = self.framer.streams
        for stream_id in [s for s in self.smoothers if s not in open_streams]:
            del self.smoothers[stream_id]
        if self.neighbours is not None:
            self.neighbours.forget(open_streams)
        # An ended (eos) or forgotten stream's open segment is final: publish it now.
        ended = [s for s in self.content.segmenters if s not in open_streams]
        ended += [s for s in self.content.down if s not in open_streams and s not in ended]
        closed = self.content.close(ended)
        for stream_id, value in closed:
            self.kafka.send(OutMessage(self.settings.segments_topic, stream_id.encode(), value))
        if closed and self.redis is not None and not self.redis.write([], {}, closed):
            self.metrics.redis_errors.inc()
        self.metrics.active_streams.set(len(open_streams))
