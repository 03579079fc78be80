"""A pluggable distillation corpus (any folders of audio) and consistent on-the-fly augmentation.

Distillation labels are free (the teacher makes them), so the corpus is simply every audio file
under the folders given, minus what must never be trained on:

- any GTZAN clip whose number ends 5-9 (gtzan-mini's ``mini_test`` and its neighbours),
  recognised by the ``<genre>.000NN`` name wherever it appears in a file name;
- any file under a folder named ``examples`` (the beyond-GTZAN check).

Files that do not decode are skipped with a warning naming them and counted, never a crash,
both when the corpus is scanned and when a crop is read later.

:func:`augmented_crop` draws one training example's audio: a random crop at any offset of a
random file, then a random chain of broadcast-like damage (pitch shift, time stretch, mixup
with a second recording, band limits, an mp3 round trip through ffmpeg, noise, gain). Teacher
and student are then both computed from *that* audio (``training.distill_scale``), which is
what "consistent" distillation means (Beyer et al. 2022).
"""

from __future__ import annotations

import logging
import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import librosa
import numpy as np
import soundfile as sf

from streamgenre.model.features import resample, to_mono
from training.augment import add_noise, band_limit, codec_lowpass
from training.data import AUDIO_EXTENSIONS, GTZAN_GENRES

log = logging.getLogger(__name__)

_GTZAN_NAME = re.compile(rf"(?:{'|'.join(GTZAN_GENRES)})\.(\d{{5}})")
#: Longest stretch of a file any one example reads, in seconds (long tracks are read by seeking).
MAX_READ_S = 8.0


def gtzan_genre(path: Path) -> str | None:
    """The genre of a GTZAN clip from its ``<genre>.000NN`` name, else None."""
    match = _GTZAN_NAME.search(path.name)
    return match.group(0).split(".")[0] if match else None


def excluded_reason(path: Path) -> str | None:
    """Why ``path`` must never be trained on, or None when it may be."""
    if "examples" in path.parts:
        return "examples/ is the beyond-GTZAN check"
    match = _GTZAN_NAME.search(path.name)
    if match and match.group(1)[-1] in "56789":
        return "GTZAN clip number ends 5-9 (test side)"
    return None


@dataclass(frozen=True)
class CorpusFile:
    """One usable audio file: where it is, which corpus folder it came from, its length."""

    path: Path
    root: str
    duration_s: float
    sample_rate: int


@dataclass
class Corpus:
    """The usable files of a scan and what was left out, for the training report."""

    files: list[CorpusFile]
    excluded: dict[str, str]
    undecodable: dict[str, str]

    @property
    def hours(self) -> float:
        return sum(f.duration_s for f in self.files) / 3600

    def summary(self) -> dict[str, object]:
        by_root: dict[str, dict[str, float]] = {}
        for f in self.files:
            entry = by_root.setdefault(f.root, {"files": 0, "hours": 0.0})
            entry["files"] += 1
            entry["hours"] = round(entry["hours"] + f.duration_s / 3600, 4)
        return {
            "files": len(self.files),
            "hours": round(self.hours, 3),
            "by_folder": by_root,
            "excluded": len(self.excluded),
            "undecodable": self.undecodable,
        }

    def subset_hours(self, hours: float, seed: int = 0) -> Corpus:
        """Files in a seeded random order until ``hours`` of audio (for the learning curve)."""
        order = np.random.default_rng(seed).permutation(len(self.files))
        chosen, total = [], 0.0
        for i in order:
            if total >= hours * 3600:
                break
            chosen.append(self.files[i])
            total += self.files[i].duration_s
        return Corpus(chosen, self.excluded, self.undecodable)


def scan_corpus(folders: Sequence[Path | str], min_duration_s: float = 1.0) -> Corpus:
    """Every decodable audio file under ``folders`` (recursively), minus the excluded ones.

    ``sf.info`` reads only headers, so the scan is fast; a file it cannot parse is logged and
    counted in ``undecodable``.
    """
    files: list[CorpusFile] = []
    excluded: dict[str, str] = {}
    undecodable: dict[str, str] = {}
    for folder in map(Path, folders):
        if not folder.is_dir():
            raise FileNotFoundError(f"corpus folder {folder} does not exist")
        for path in sorted(p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file()):
            reason = excluded_reason(path)
            if reason:
                excluded[str(path)] = reason
                continue
            try:
                info = sf.info(str(path))
            except Exception as err:  # libsndfile raises several types for corrupt files
                log.warning("skipping %s: does not decode (%s)", path, err)
                undecodable[str(path)] = str(err).splitlines()[0][:200]
                continue
            if info.duration < min_duration_s:
                excluded[str(path)] = f"shorter than {min_duration_s} s"
                continue
            files.append(CorpusFile(path, folder.name, float(info.duration), int(info.samplerate)))
    return Corpus(files, excluded, undecodable)


def read_crop(f: CorpusFile, seconds: float, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """``seconds`` of mono audio at ``sample_rate`` from a random offset of ``f`` (zero-padded if short)."""
    n_src = int(np.ceil(min(seconds, MAX_READ_S) * f.sample_rate))
    total = int(f.duration_s * f.sample_rate)
    start = int(rng.integers(0, max(1, total - n_src)))
    with sf.SoundFile(str(f.path)) as handle:
        handle.seek(min(start, max(0, handle.frames - 1)))
        y = handle.read(n_src, dtype="float32", always_2d=True)
    y = resample(to_mono(y), f.sample_rate, sample_rate)
    n = round(seconds * sample_rate)
    return np.pad(y, (0, max(0, n - len(y))))[:n].astype(np.float32)


def mp3_round_trip(y: np.ndarray, sample_rate: int, kbps: int) -> np.ndarray:
    """Encode to mp3 at ``kbps`` and decode back with ffmpeg (what a low-bitrate stream does)."""
    pcm = np.clip(y, -1, 1).astype("<f4").tobytes()
    common = ["ffmpeg", "-nostdin", "-loglevel", "error", "-threads", "1"]
    raw = ["-f", "f32le", "-ar", str(sample_rate), "-ac", "1"]
    encoded = subprocess.run(
        [*common, *raw, "-i", "pipe:0", "-b:a", f"{kbps}k", "-f", "mp3", "pipe:1"],
        input=pcm,
        capture_output=True,
        check=True,
    ).stdout
    decoded = subprocess.run(
        [*common, "-f", "mp3", "-i", "pipe:0", *raw, "pipe:1"],
        input=encoded,
        capture_output=True,
        check=True,
    ).stdout
    out = np.frombuffer(decoded, "<f4")
    # The mp3 decoder adds encoder delay at the start; keep the length, drop the delay.
    delay = max(0, len(out) - len(y))
    return np.pad(out[delay:], (0, max(0, len(y) - len(out) + delay)))[: len(y)].astype(np.float32)


#: Channels a broadcast may pass music through, for :func:`broadcast_band`.
BROADCAST_BANDS = ("telephone", "am", "fm")


def broadcast_band(y: np.ndarray, sample_rate: int, kind: str) -> np.ndarray:
    """The band a ``telephone`` (300-3400 Hz), ``am`` (100-5000 Hz) or ``fm`` (15 kHz) channel passes."""
    if kind == "telephone":
        return band_limit(y, sample_rate, 300.0, 3400.0)
    if kind == "am":
        return band_limit(y, sample_rate, 100.0, 5000.0)
    if kind == "fm":
        return codec_lowpass(y, sample_rate, 15000.0)
    raise ValueError(f"unknown broadcast band {kind!r}; expected one of {BROADCAST_BANDS}")


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities and ranges of the on-the-fly chain (one draw per example)."""

    p_pitch: float = 0.25
    p_stretch: float = 0.25
    p_mixup: float = 0.25
    p_band: float = 0.2
    p_mp3: float = 0.15
    p_noise: float = 0.3
    gain_db: tuple[float, float] = (-45.0, 3.0)


def sampling_weights(files: Sequence[CorpusFile]) -> np.ndarray:
    """File sampling weights: each corpus folder gets an equal share, files within it by length.

    Equal shares per folder keep 5.7 h of game soundtracks from drowning the 25 minutes of
    GTZAN-labelled mini_train; length (capped at 60 s) gives long tracks more crops.
    """
    roots = [f.root for f in files]
    per_root = {r: sum(min(f.duration_s, 60.0) for f in files if f.root == r) for r in set(roots)}
    w = np.array([min(f.duration_s, 60.0) / per_root[f.root] for f in files])
    return w / w.sum()


class Augmenter:
    """Draws augmented crops of a corpus: ``crop(rng)`` returns ``(audio, description)``."""

    def __init__(self, files: Sequence[CorpusFile], sample_rate: int, seconds: float, config: AugmentConfig) -> None:
        if not files:
            raise ValueError("the corpus has no usable file")
        self.files = list(files)
        self.weights = sampling_weights(self.files)
        self.sample_rate = sample_rate
        self.seconds = seconds
        self.config = config
        self.failed: dict[str, str] = {}

    def _read(self, seconds: float, rng: np.random.Generator) -> tuple[np.ndarray, CorpusFile]:
        for _ in range(5):
            f = self.files[int(rng.choice(len(self.files), p=self.weights))]
            if str(f.path) in self.failed:
                continue
            try:
                return read_crop(f, seconds, self.sample_rate, rng), f
            except Exception as err:  # a file that passed the header scan may still fail mid-stream
                log.warning("skipping %s: does not decode (%s)", f.path, err)
                self.failed[str(f.path)] = str(err)[:200]
        raise RuntimeError("five corpus reads in a row failed")

    def crop(self, rng: np.random.Generator) -> tuple[np.ndarray, list[str], str | None]:
        """Random crop, stretch, pitch shift, mixup and band limit; also the crop's GTZAN genre
        when its file name carries one and no second recording was mixed in (else None)."""
        c, sr, n = self.config, self.sample_rate, round(self.seconds * self.sample_rate)
        applied: list[str] = []
        rate = float(rng.uniform(0.8, 1.25)) if rng.random() < c.p_stretch else 1.0
        y, source = self._read(self.seconds * rate + 0.1, rng)
        label = gtzan_genre(source.path)
        if rate != 1.0:
            y = librosa.effects.time_stretch(y, rate=rate)
            applied.append(f"stretch {rate:.2f}")
        if rng.random() < c.p_pitch:
            steps = float(rng.uniform(-3, 3))
            y = librosa.effects.pitch_shift(y, sr=sr, n_steps=steps, res_type="soxr_qq")
            applied.append(f"pitch {steps:+.1f}")
        y = np.pad(y, (0, max(0, n - len(y))))[:n]
        if rng.random() < c.p_mixup:
            # Mixing at a random level ratio: the dominant recording is usually still clear, as
            # in a cross-fade or a DJ mix; the teacher labels the mixture it hears.
            other = self._read(self.seconds, rng)[0][:n]
            label = None
            ratio_db = float(rng.uniform(0, 12))
            y = y + other * 10 ** (-ratio_db / 20) * _rms(y) / max(_rms(other), 1e-7)
            applied.append(f"mixup {ratio_db:.0f} dB")
        if rng.random() < c.p_band:
            kind = str(rng.choice(BROADCAST_BANDS))
            y = broadcast_band(y, sr, kind)
            applied.append(kind)
        return y.astype(np.float32), applied, label

    def finish(self, y: np.ndarray, applied: list[str], rng: np.random.Generator) -> np.ndarray:
        """Noise, then gain: the last steps, after any codec round trip."""
        return noise_then_gain(y, self.config, applied, rng)

    def batch(self, n: int, rng: np.random.Generator) -> tuple[list[np.ndarray], list[list[str]], list[str | None]]:
        """``n`` augmented crops. The mp3 round trip is done for all chosen crops of the batch in
        one ffmpeg encode + decode (one bitrate per batch): starting ffmpeg costs far more than
        encoding 3 s, so per-crop calls would dominate the generator's time."""
        crops, notes, labels = (list(t) for t in zip(*(self.crop(rng) for _ in range(n)), strict=True))
        chosen = [i for i in range(n) if rng.random() < self.config.p_mp3]
        if chosen:
            kbps = int(rng.choice([32, 48, 64, 96, 128]))
            peaks = [max(1.0, float(np.abs(crops[i]).max())) for i in chosen]
            joined = np.concatenate([crops[i] / p for i, p in zip(chosen, peaks, strict=True)])
            coded = mp3_round_trip(joined, self.sample_rate, kbps)
            length = len(crops[0])
            for k, i in enumerate(chosen):
                crops[i] = coded[k * length : (k + 1) * length]
                notes[i].append(f"mp3 {kbps}k")
        return [self.finish(y, a, rng) for y, a in zip(crops, notes, strict=True)], notes, labels


def noise_then_gain(y: np.ndarray, config: AugmentConfig, applied: list[str], rng: np.random.Generator) -> np.ndarray:
    """Noise at 5-30 dB SNR (with ``config.p_noise``), then a gain relative to full scale.

    Gain last, over a wide range: streams arrive at any level, and the student must not care.
    The audio is peak-normalised first so the gain is relative to full scale. What was done is
    appended to ``applied``.
    """
    if rng.random() < config.p_noise:
        snr = float(rng.uniform(5, 30))
        y = add_noise(y, snr, rng, colour=float(rng.choice([0.0, 1.0])))
        applied.append(f"noise {snr:.0f} dB")
    gain = float(rng.uniform(*config.gain_db))
    applied.append(f"gain {gain:.0f} dB")
    return (y / max(float(np.abs(y).max()), 1e-7) * 10 ** (gain / 20)).astype(np.float32)


def _rms(y: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(y, dtype=np.float64))))
