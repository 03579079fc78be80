"""One stream's framing state: resampler, log-mel front end, frame buffer and window grid (pure).

For each stream we keep a resampler, the incremental log-mel front end and a buffer of the mel
frames not yet fully used, so the frames that consecutive windows share are computed once.

Windows sit on an absolute grid: window ``k`` covers model-rate samples
``[k * hop + phase, k * hop + phase + L)`` of the producer's clock (``ts`` header, epoch based),
where ``phase`` is a hash of the stream id (:func:`grid_phase`). That is what makes
``window_seq = k`` stable across a restart: after a replay from the committed offset the same
audio lands on the same grid, so consumers can drop duplicates by ``(stream_id, window_seq)``.
The per-stream phase spreads the instants at which windows complete evenly over a hop; with one
shared grid every live stream would complete a window within the same chunk period, and the
batch that follows would be the latency of all of them. Within a segment, position is counted in samples (``ts`` is only
millisecond-precise); a ``seq`` gap or a ``ts`` that disagrees with the audio received so far
starts a new segment rather than gluing unrelated audio into one window.

Every stream also remembers the Kafka offsets of the chunks that the *next* window still needs,
which bounds what the daemon may commit (see ``docs/RELIABILITY.md``).
"""

from __future__ import annotations

import collections
import math
import zlib
from dataclasses import dataclass

import numpy as np
import soxr

from streamgenre.model.features import (
    FeatureRecipe,
    StreamingLogMel,
    compress,
    level_gain_db,
    mel_frames,
    window_input,
)


@dataclass
class Window:
    """One complete window, ready for inference."""

    stream_id: str
    partition: int
    window_seq: int
    logmel: np.ndarray
    t_start: float
    t_end: float
    completed_at: float
    chunk_ts_ms: int
    # ``(bands, n_frames)``: the window's mel power summed into the content stage's band groups
    # (``model.content.group_matrix``), before the log and the level normalisation. Kept from the
    # framing pass, which had the power in hand, so that the content stage need not undo the log
    # of every bin of every window (``exp`` is most of that stage's cost otherwise).
    band_power: np.ndarray
    title: str | None = None
    short: bool = False  # an ended stream's only window, off the grid (see StreamState.short_window)
    # The level normalisation's gain in ``logmel`` (features.level_gain_db): stages that need the
    # stream's real level (silence, dBFS) undo it.
    level_gain_db: float = 0.0


def grid_phase(stream_id: str, hop_samples: int, sample_rate: int) -> int:
    """Offset of a stream's window grid within one hop, in model-rate samples (stable: CRC-32 of the id).

    A whole number of milliseconds, so that where the plain epoch grid has window starts on whole
    milliseconds (e.g. 16 kHz with a hop that is a multiple of 16 samples) the shifted grid has
    too; a replay anchored on a millisecond ``ts`` then starts exactly (docs/RELIABILITY.md).
    """
    quantum = sample_rate // math.gcd(sample_rate, 1000)  # samples in the shortest whole-ms step
    return (zlib.crc32(stream_id.encode()) % max(1, hop_samples // quantum)) * quantum


RESAMPLE_BLOCK = 2048  # input samples per soxr call; see resample_in_blocks


def resample_in_blocks(resampler: soxr.ResampleStream, samples: np.ndarray, last: bool) -> np.ndarray:
    """``samples`` through a streaming resampler, in blocks of at most ``RESAMPLE_BLOCK``.

    soxr sizes its buffers to the largest block it was ever given and keeps them for the
    stream's life: 1-s chunks held ~410 KB per stream, 2048-sample blocks ~160 KB, with
    bit-identical output (``docs/PERFORMANCE.md``, memory at scale).
    """
    n = samples.shape[0]
    if n <= RESAMPLE_BLOCK:
        return resampler.resample_chunk(samples, last=last)
    blocks = range(0, n, RESAMPLE_BLOCK)
    return np.concatenate([resampler.resample_chunk(samples[i : i + RESAMPLE_BLOCK],
                                                    last=last and i + RESAMPLE_BLOCK >= n) for i in blocks])


class StreamState:
    """Resampler, feature front end, frame buffer and needed offsets of one stream segment.

    Memory is bounded: the frame buffer holds one window of mel frames (``n_frames``; a window
    is emitted as soon as the buffer is full, which frees a hop for the next frames), the feature
    front end fewer than ``n_fft`` samples, the resampler its filter state, and the offset
    list one entry per chunk of the current window. Until its first window, a segment also keeps
    its first ``window_samples`` of model-rate audio, for :meth:`short_window`.
    """

    def __init__(self, stream_id: str, partition: int, recipe: FeatureRecipe, hop_frames: int,
                 input_rate: int, anchor_ms: int, seq: int, band_groups: np.ndarray) -> None:
        self.stream_id = stream_id
        self.partition = partition
        self.recipe = recipe
        self.hop_frames = hop_frames
        self.hop_samples = hop_frames * recipe.hop_length
        self.input_rate = input_rate
        self.anchor_ms = anchor_ms
        self.last_seq = seq - 1
        self.input_samples = 0
        self.last_activity = 0.0
        self.phase = grid_phase(stream_id, self.hop_samples, recipe.sample_rate)
        anchor = round(anchor_ms * recipe.sample_rate / 1000)
        self.anchor_sample = anchor
        self.next_window = math.ceil((anchor - self.phase) / self.hop_samples)
        # Samples between the segment start and the first grid point never make a window.
        self._skip = self.window_start(self.next_window) - anchor
        self._features = StreamingLogMel(recipe)
        # soxr's streaming resampler keeps filter state across chunks, so chunk boundaries
        # leave no seams; librosa.resample only works on whole signals. HQ, as librosa.load
        # resamples in training.
        self._resampler = (
            soxr.ResampleStream(input_rate, recipe.sample_rate, 1, dtype="float32", quality="HQ")
            if input_rate != recipe.sample_rate else None
        )
        self._frames = np.zeros((recipe.n_mels, recipe.n_frames), np.float32)
        self.band_groups = band_groups  # (bands, n_mels), shared by every stream of the framer
        self._bands = np.zeros((band_groups.shape[0], recipe.n_frames), np.float32)
        self._n_frames = 0  # valid frames in the buffer, the first belongs to window next_window
        self._chunk_starts: collections.deque[tuple[int, int]] = collections.deque()
        self.windows_emitted = 0
        self._head: list[np.ndarray] = []  # model-rate audio from the segment start, until a window is out
        self._head_samples = 0

    def expected_ts_ms(self) -> float:
        return self.anchor_ms + 1000.0 * self.input_samples / self.input_rate

    def window_start(self, window_seq: int) -> int:
        """First model-rate sample (on the producer's clock) of window ``window_seq``."""
        return window_seq * self.hop_samples + self.phase

    def take_frames(self, samples: np.ndarray, offset: int, received_at: float, last: bool = False) -> np.ndarray:
        """Append a chunk's mono samples (at ``input_rate``); return its new raw STFT frames.

        Step 1 of 2: the caller turns the frames of many chunks into log-mel in one pass and
        hands each chunk's share back to :meth:`add_frames`, in the same order.
        """
        chunk_start = self.anchor_sample + round(self.input_samples * self.recipe.sample_rate / self.input_rate)
        self._chunk_starts.append((offset, chunk_start))
        self.input_samples += samples.shape[0]
        self.last_activity = received_at
        if self._resampler is not None:
            samples = resample_in_blocks(self._resampler, samples, last)
        if not self.windows_emitted and self._head_samples < self.recipe.window_samples:
            kept = samples[: self.recipe.window_samples - self._head_samples].copy()
            self._head.append(kept)
            self._head_samples += kept.shape[0]
        if self._skip:
            dropped = min(self._skip, samples.shape[0])
            samples, self._skip = samples[dropped:], self._skip - dropped
        return self._features.take_frames(samples)

    def add_frames(self, new_frames: np.ndarray, new_bands: np.ndarray, received_at: float, ts_ms: int,
                   title: str | None = None) -> list[Window]:
        """Step 2 of 2: append compressed mel frames ``(n_mels, n)`` and their band power
        ``(bands, n)`` (``band_groups`` @ mel power); return the windows they complete.

        The windows carry ``title``, the title of the chunk that completes them (its audio is the
        window's most recent).
        """
        windows: list[Window] = []
        while new_frames.shape[1]:
            room = self._frames.shape[1] - self._n_frames
            taken = min(room, new_frames.shape[1])
            self._frames[:, self._n_frames : self._n_frames + taken] = new_frames[:, :taken]
            self._bands[:, self._n_frames : self._n_frames + taken] = new_bands[:, :taken]
            self._n_frames += taken
            new_frames, new_bands = new_frames[:, taken:], new_bands[:, taken:]
            # Emit before taking more frames: a full buffer is exactly one window.
            if self._n_frames == self.recipe.n_frames:
                windows.append(self._emit(received_at, ts_ms, title))
        self._forget_consumed_chunks()
        return windows

    def _emit(self, received_at: float, ts_ms: int, title: str | None) -> Window:
        n_frames, sr = self.recipe.n_frames, self.recipe.sample_rate
        start = self.window_start(self.next_window)
        frames = self._frames[:, :n_frames]
        gain = level_gain_db(frames, self.recipe)
        window = Window(
            stream_id=self.stream_id, partition=self.partition, window_seq=self.next_window,
            logmel=window_input(frames, self.recipe, gain),
            t_start=start / sr, t_end=(start + self.recipe.window_samples) / sr,
            completed_at=received_at, chunk_ts_ms=ts_ms, title=title, level_gain_db=gain,
            band_power=self._bands[:, :n_frames].copy(),
        )
        # Slide by one hop. A shift rather than a wrap-around ring: the model needs a
        # contiguous window anyway, and the copy is tiny next to the FFTs that made the frames.
        keep = max(0, self._n_frames - self.hop_frames)
        self._frames[:, :keep] = self._frames[:, self._n_frames - keep : self._n_frames]
        self._bands[:, :keep] = self._bands[:, self._n_frames - keep : self._n_frames]
        self._n_frames = keep
        self.next_window += 1
        self.windows_emitted += 1
        self._head, self._head_samples = [], 0
        return window

    def short_window(self, received_at: float, ts_ms: int, title: str | None = None) -> Window | None:
        """The one window of an ended segment that completed none on the grid, else None.

        An upload shorter than a window, or one whose audio ends before the window that starts
        at its first grid point does (the grid's phase depends on the stream id), would get no
        classification at all. Instead its audio from the segment start is classified: a window
        aligned on the first sample when the audio is long enough, else the audio repeated to
        fill one (repetition keeps the model's input music; zero padding would add silence the
        model never saw in training). ``window_seq`` is that of the first grid window, which
        never completed, so a replay gives the same key; ``t_end`` is where the audio ended.
        """
        if self.windows_emitted or not self._head_samples:
            return None
        recipe = self.recipe
        audio = np.concatenate(self._head)
        filled = np.resize(audio, recipe.window_samples)  # np.resize repeats the input to fill
        start = self.anchor_sample
        self.windows_emitted += 1
        power = mel_frames(filled, recipe)
        frames = compress(power, recipe)
        gain = level_gain_db(frames, recipe)
        return Window(
            stream_id=self.stream_id, partition=self.partition, window_seq=self.next_window,
            logmel=window_input(frames, recipe, gain),
            t_start=start / recipe.sample_rate, t_end=(start + audio.shape[0]) / recipe.sample_rate,
            completed_at=received_at, chunk_ts_ms=ts_ms, title=title, short=True, level_gain_db=gain,
            band_power=self.band_groups @ power,
        )

    def _forget_consumed_chunks(self) -> None:
        next_start = self.window_start(self.next_window)
        while len(self._chunk_starts) > 1 and self._chunk_starts[1][1] <= next_start:
            self._chunk_starts.popleft()

    def needed_offset(self) -> int | None:
        """Offset of the oldest chunk that the next window still needs (None: none yet)."""
        return self._chunk_starts[0][0] if self._chunk_starts else None

    def state_bytes(self) -> int:
        return (self._frames.nbytes + self._bands.nbytes + 4 * self._features.pending_samples
                + 16 * len(self._chunk_starts))


def expected_windows(stream_id: str, ts_ms: int, n_input: int, input_rate: int, recipe: FeatureRecipe,
                     hop_frames: int) -> int:
    """How many windows a stream of ``n_input`` samples starting at ``ts_ms`` produces (one segment, eos).

    At least one when there is any audio: the short window of :meth:`StreamState.short_window`.

    The resampler's output length is rounded to the nearest sample, as soxr's streaming
    resampler gives it once told the last chunk has come.
    """
    hop_samples = hop_frames * recipe.hop_length
    rate = recipe.sample_rate
    phase = grid_phase(stream_id, hop_samples, rate)
    anchor = round(ts_ms * rate / 1000)
    n_out = n_input if input_rate == rate else math.floor(n_input * rate / input_rate + 0.5)
    first = math.ceil((anchor - phase) / hop_samples)
    last = math.floor((anchor + n_out - recipe.window_samples - phase) / hop_samples)
    on_grid = max(0, last - first + 1)
    # An ended stream with audio but no grid window gets its one short window (StreamState.short_window).
    return on_grid if on_grid or n_out <= 0 else 1
