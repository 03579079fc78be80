"""Dataset loading for training and evaluation: clips, splits, audio decoding, cached features.

A dataset root is laid out as ``<root>/<genre>/<clip>.<ext>`` (``ext`` one of
:data:`AUDIO_EXTENSIONS`), the layout of GTZAN and of ``gtzan-mini``, with optional split lists
under ``<root>/splits/``. The genre of a clip is the name of its folder.

Protocols (:func:`load_split`):

- ``filtered``: ``splits/filtered_{train,valid,test}.txt``, the fault-filtered GTZAN split of
  Kereliuk, Sturm & Larsen (2015), which keeps every artist in one split only;
- ``random``: stratified clip-level 80/10/10 over every clip found, with a fixed seed (the
  protocol of the paper, optimistic on GTZAN because of replicas and repeated artists);
- ``mini``: ``splits/mini_{train,test}.txt`` of ``gtzan-mini`` (no validation list).

Split lists hold paths relative to the root (``blues/blues.00000.ogg``); they are matched by
folder and *stem*, so a list written for ``.ogg`` also finds ``.wav`` or ``.au`` files, and
entries whose file is absent are skipped (the lists describe the full set; partial copies
hold only some of it). Splits are made of whole clips, so the windows of one clip never land
in two splits.

Features are computed only by :mod:`streamgenre.model.features`, the module the daemon uses, and
cached on disk by :func:`cached_log_mel`.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from streamgenre.model.audio import load_audio
from streamgenre.model.features import FeatureRecipe, log_mel

# Re-exported: training code imports the one window slicer from here too.
from streamgenre.model.features import window_starts as window_starts
from streamgenre.model.features import windows_from_frames as windows_from_frames

#: The 10 GTZAN genres, in the order used for class indices when a dataset has all of them.
GTZAN_GENRES: tuple[str, ...] = (
    "blues",
    "classical",
    "country",
    "disco",
    "hiphop",
    "jazz",
    "metal",
    "pop",
    "reggae",
    "rock",
)
#: Extensions recognised as audio, in order of preference when one clip exists in several.
AUDIO_EXTENSIONS: tuple[str, ...] = (".wav", ".flac", ".au", ".ogg", ".mp3")
#: Split names of each protocol that reads lists from ``<root>/splits/``.
SPLIT_LISTS: dict[str, dict[str, str]] = {
    "filtered": {"train": "filtered_train.txt", "valid": "filtered_valid.txt", "test": "filtered_test.txt"},
    "mini": {"train": "mini_train.txt", "test": "mini_test.txt"},
}
PROTOCOLS: tuple[str, ...] = ("filtered", "random", "mini")
SPLITS: tuple[str, ...] = ("train", "valid", "test")
#: The repository root, and the folder of the committed model reports (``model/report``).
REPO = Path(__file__).resolve().parents[1]
REPORT_DIR = REPO / "model" / "report"
#: Default on-disk cache of features (git-ignored).
DEFAULT_CACHE = REPO / ".cache" / "features"


class DatasetNotFoundError(FileNotFoundError):
    """The dataset root (or a split list a protocol needs) does not exist."""


@dataclass(frozen=True, order=True)
class Clip:
    """One audio file of the dataset and its genre label.

    Attributes
    ----------
    path : Path
        Audio file.
    genre : str
        Genre label (the name of the clip's folder).
    """

    path: Path
    genre: str

    @property
    def clip_id(self) -> str:
        """``<genre>/<stem>``: identifies a clip whatever its file extension."""
        return f"{self.genre}/{self.path.stem}"


def _require_root(root: Path) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise DatasetNotFoundError(
            f"dataset root {root} does not exist. Expected <root>/<genre>/<clip>.(wav|au|ogg|flac|mp3), "
            "e.g. GTZAN at ../shared/data/gtzan/ (not on this machine yet) or the partial copy at "
            "../shared/data/gtzan-mini/."
        )
    return root


def scan_clips(root: Path) -> list[Clip]:
    """Every audio clip under ``root/<genre>/``, sorted by genre then file name.

    Parameters
    ----------
    root : Path
        Dataset root. Folders without audio files (such as ``splits/``) are ignored. When one
        clip exists with several extensions, the first of :data:`AUDIO_EXTENSIONS` wins.

    Returns
    -------
    list of Clip
    """
    root = _require_root(root)
    found: dict[str, Clip] = {}
    for genre_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for path in sorted(genre_dir.iterdir()):
            ext = path.suffix.lower()
            if not path.is_file() or ext not in AUDIO_EXTENSIONS:
                continue
            clip = Clip(path, genre_dir.name)
            other = found.get(clip.clip_id)
            rank = AUDIO_EXTENSIONS.index(ext)
            if other is None or rank < AUDIO_EXTENSIONS.index(other.path.suffix.lower()):
                found[clip.clip_id] = clip
    return sorted(found.values(), key=lambda c: (c.genre, c.path.name))


def read_split_list(list_path: Path, available: dict[str, Clip]) -> tuple[list[Clip], list[str]]:
    """Resolve a split list against the clips present.

    Parameters
    ----------
    list_path : Path
        Text file, one path relative to the root per line (``genre/name.ext``); blank lines and
        lines starting with ``#`` are ignored.
    available : dict of str to Clip
        Present clips by :attr:`Clip.clip_id`.

    Returns
    -------
    clips : list of Clip
        Present clips of the list, in list order, each once.
    missing : list of str
        Entries of the list whose clip is absent.
    """
    clips: list[Clip] = []
    missing: list[str] = []
    seen: set[str] = set()
    for line in list_path.read_text().splitlines():
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        rel = Path(entry)
        # Genre is the folder of the entry; match on stem so any audio extension is accepted.
        clip_id = f"{rel.parent.name}/{rel.stem}"
        clip = available.get(clip_id)
        if clip is None:
            missing.append(entry)
        elif clip_id not in seen:
            seen.add(clip_id)
            clips.append(clip)
    return clips, missing


def stratified_split(
    clips: Sequence[Clip], fractions: tuple[float, float, float] = (0.8, 0.1, 0.1), seed: int = 0
) -> dict[str, list[Clip]]:
    """Stratified clip-level train/valid/test split with a fixed seed.

    Parameters
    ----------
    clips : sequence of Clip
    fractions : (float, float, float)
        Train, valid and test fractions; they must sum to 1. Each genre is split on its own
        (valid and test sizes rounded, train gets the rest), so every split has the same genre
        proportions up to rounding.
    seed : int
        Seed of the shuffle; the result depends only on the clips and the seed.

    Returns
    -------
    dict with keys ``train``, ``valid``, ``test``: lists of Clip, sorted.
    """
    if not np.isclose(sum(fractions), 1.0) or min(fractions) < 0:
        raise ValueError(f"fractions must be non-negative and sum to 1, got {fractions}")
    by_genre: dict[str, list[Clip]] = {}
    for clip in sorted(set(clips)):
        by_genre.setdefault(clip.genre, []).append(clip)
    out: dict[str, list[Clip]] = {name: [] for name in SPLITS}
    for genre, members in sorted(by_genre.items()):
        # One RNG per genre, seeded from (seed, genre), so adding a genre does not reshuffle others.
        rng = random.Random(f"{seed}:{genre}")
        members = list(members)
        rng.shuffle(members)
        n_valid = round(fractions[1] * len(members))
        n_test = round(fractions[2] * len(members))
        out["test"].extend(members[:n_test])
        out["valid"].extend(members[n_test : n_test + n_valid])
        out["train"].extend(members[n_test + n_valid :])
    return {name: sorted(split) for name, split in out.items()}


def load_split(root: Path | str, protocol: str, seed: int = 0) -> dict[str, list[Clip]]:
    """Clips of each split of a protocol.

    Parameters
    ----------
    root : Path or str
        Dataset root (``<root>/<genre>/<clip>.<ext>``).
    protocol : {"filtered", "random", "mini"}
        See the module docstring. ``random`` uses every clip found under ``root``.
    seed : int
        Seed of the ``random`` protocol.

    Returns
    -------
    dict of str to list of Clip
        Keys ``train``, ``valid``, ``test``. A split the protocol has no list for (``valid`` of
        ``mini``) is an empty list; list entries whose file is absent are skipped.

    Raises
    ------
    DatasetNotFoundError
        ``root`` does not exist, or a split list the protocol needs is missing.
    """
    root = _require_root(Path(root))
    clips = scan_clips(root)
    if protocol == "random":
        return stratified_split(clips, seed=seed)
    if protocol not in SPLIT_LISTS:
        raise ValueError(f"unknown protocol {protocol!r}; expected one of {PROTOCOLS}")
    available = {clip.clip_id: clip for clip in clips}
    out: dict[str, list[Clip]] = {name: [] for name in SPLITS}
    for name, filename in SPLIT_LISTS[protocol].items():
        list_path = root / "splits" / filename
        if not list_path.is_file():
            raise DatasetNotFoundError(f"protocol {protocol!r} needs the split list {list_path} (missing)")
        out[name], _missing = read_split_list(list_path, available)
    overlap = _overlap(out)
    if overlap:
        # The protocols promise disjoint splits; a list that breaks that would leak test clips.
        raise ValueError(f"split lists of {protocol!r} share clips: {sorted(overlap)[:5]}")
    return out


def _overlap(splits: dict[str, list[Clip]]) -> set[str]:
    seen: dict[str, str] = {}
    shared: set[str] = set()
    for name, clips in splits.items():
        for clip in clips:
            if seen.setdefault(clip.clip_id, name) != name:
                shared.add(clip.clip_id)
    return shared


def drop_unreadable(splits: dict[str, list[Clip]]) -> tuple[dict[str, list[Clip]], list[str]]:
    """Remove clips whose file libsndfile cannot open (a header check, no decoding).

    Known case: ``jazz.00054.wav`` of the popular Kaggle re-upload of GTZAN is not a valid file;
    one such clip should cost a warning, not a one-hour training run.

    Returns
    -------
    splits : dict of str to list of Clip
        The same splits without the unreadable clips.
    dropped : list of str
        ``clip_id`` of each removed clip.
    """
    dropped: list[str] = []
    kept: dict[str, list[Clip]] = {}
    for name, clips in splits.items():
        kept[name] = []
        for clip in clips:
            try:
                sf.info(str(clip.path))
            except sf.LibsndfileError:
                dropped.append(clip.clip_id)
            else:
                kept[name].append(clip)
    return kept, dropped


def labels_of(splits: dict[str, list[Clip]] | Iterable[Clip]) -> list[str]:
    """Class labels (index = class): GTZAN's order when all ten genres occur, else sorted."""
    clips = [c for split in splits.values() for c in split] if isinstance(splits, dict) else list(splits)
    genres = {clip.genre for clip in clips}
    return list(GTZAN_GENRES) if genres == set(GTZAN_GENRES) else sorted(genres)


def read_audio(path: Path | str, sample_rate: int) -> np.ndarray:
    """Float32 mono at ``sample_rate``: :func:`streamgenre.model.audio.load_audio` without the duration."""
    return load_audio(path, sample_rate)[0]


def recipe_key(recipe: FeatureRecipe) -> dict[str, object]:
    """The parts of a recipe that :func:`streamgenre.model.features.log_mel` depends on.

    ``mean``/``std`` and the level normalisation (applied per window) and ``n_frames`` are left out, so that the cached
    frames stay valid when the normalisation is re-estimated or the window length changes.
    """
    per_window = ("mean", "std", "n_frames", "level_ref_db", "level_max_gain_db")
    return {k: v for k, v in recipe.to_dict().items() if k not in per_window}


def cached_log_mel(
    path: Path,
    recipe: FeatureRecipe,
    cache_dir: Path | None = DEFAULT_CACHE,
    transform: Callable[[np.ndarray, int], np.ndarray] | None = None,
    transform_key: str = "",
) -> np.ndarray:
    """Compressed log-mel frames of a whole audio file, cached on disk.

    Parameters
    ----------
    path : Path
        Audio file.
    recipe : FeatureRecipe
        Front end; frames are :func:`streamgenre.model.features.log_mel` of the decoded audio.
    cache_dir : Path or None
        Cache folder; ``None`` disables caching. The file name hashes the recipe, the file's
        resolved path, size and modification time, and ``transform_key``, so a changed file or
        recipe never reuses stale frames.
    transform : callable ``(y, sample_rate) -> y``, optional
        Waveform transform (an augmentation) applied before the front end.
    transform_key : str
        Identifies ``transform`` and its parameters in the cache key; required with ``transform``.

    Returns
    -------
    np.ndarray, shape (n_mels, n_total_frames), float32
        Not yet cut into windows nor normalised: see :func:`windows_from_frames`.
    """
    if transform is not None and not transform_key:
        raise ValueError("a transform needs a transform_key, or cached frames would be ambiguous")
    cache_path = None
    if cache_dir is not None:
        stat = Path(path).stat()
        ident = json.dumps(
            [recipe_key(recipe), str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns, transform_key],
            sort_keys=True,
        )
        cache_path = Path(cache_dir) / f"{hashlib.sha1(ident.encode()).hexdigest()}.npy"
        if cache_path.is_file():
            return np.load(cache_path)
    y = read_audio(path, recipe.sample_rate)
    if transform is not None:
        y = transform(y, recipe.sample_rate)
    frames = log_mel(y, recipe)
    if cache_path is not None:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        # Write then rename so that an interrupted run never leaves a truncated cache entry.
        tmp = cache_path.with_suffix(f".{np.random.default_rng().integers(1 << 30)}.tmp.npy")
        np.save(tmp, frames)
        tmp.replace(cache_path)
    return frames
