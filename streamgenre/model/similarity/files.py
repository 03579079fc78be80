"""Which files a catalogue is built from, and their known genres (the labels TSV, or the folder name)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

#: File extensions that :func:`find_audio` picks up inside folders (case-insensitive).
AUDIO_EXTENSIONS: tuple[str, ...] = (".wav", ".flac", ".ogg", ".mp3", ".au", ".aiff", ".aif")


def find_audio(paths: Iterable[Path | str]) -> list[Path]:
    """Audio files named directly or found recursively in folders.

    Parameters
    ----------
    paths : iterable of Path or str
        Files (taken as they are, whatever their extension) or folders (searched recursively,
        following symlinks, for files with an extension of :data:`AUDIO_EXTENSIONS`).

    Returns
    -------
    list of Path
        Absolute paths (symlinks kept as named, not resolved), each once, in the order given,
        folders' contents sorted.

    Raises
    ------
    FileNotFoundError
        A path does not exist.
    """
    found: dict[str, Path] = {}
    for given in paths:
        path = Path(os.path.abspath(given))
        if path.is_file():
            found.setdefault(str(path), path)
        elif path.is_dir():
            for file in _walk(path):
                found.setdefault(str(file), file)
        else:
            raise FileNotFoundError(f"no such file or folder: {given}")
    return list(found.values())


def _walk(root: Path) -> list[Path]:
    out: list[Path] = []
    # Real paths of folders already entered: a symlink pointing to an ancestor would otherwise loop.
    seen: set[str] = set()
    for folder, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs.sort()
        out.extend(Path(folder) / name for name in sorted(files)
                   if Path(name).suffix.lower() in AUDIO_EXTENSIONS and (Path(folder) / name).is_file())
    return out


def read_labels(tsv: Path | str) -> dict[str, str]:
    """Read a label mapping from a tab-separated file.

    Two layouts are accepted: headerless ``path<TAB>label`` lines, or a header row naming a
    ``path`` (or ``file``) column and a ``label`` (or ``genre``) column among others, as in
    ``../shared/data/examples/labels.tsv``. Blank lines and lines starting with ``#`` are
    skipped; rows with an empty label give no label. A path is absolute, relative to the TSV's
    folder, or a bare file name (then it matches a track of that name in any folder).

    Returns
    -------
    dict of str to str
        Keys are absolute paths, or bare file names as written.

    Raises
    ------
    ValueError
        A row has no path or too few columns.
    """
    tsv = Path(tsv)
    rows = [(number, line.split("\t")) for number, line in enumerate(tsv.read_text().splitlines(), 1)
            if line.strip() and not line.startswith("#")]
    path_col, label_col = 0, 1
    if rows:
        header = [cell.strip().lower() for cell in rows[0][1]]
        path_names = [i for i, name in enumerate(header) if name in ("path", "file")]
        label_names = [i for i, name in enumerate(header) if name in ("label", "genre")]
        if path_names and label_names:
            path_col, label_col = path_names[0], label_names[0]
            rows = rows[1:]
    mapping: dict[str, str] = {}
    for number, cells in rows:
        if len(cells) <= max(path_col, label_col) or not cells[path_col].strip():
            row = "\t".join(cells)
            raise ValueError(f"{tsv}:{number}: expected 'path<TAB>label' (or a header naming path and "
                             f"label columns), got {row!r}")
        path, label = cells[path_col].strip(), cells[label_col].strip()
        if label:
            key = path if os.sep not in path else os.path.abspath(tsv.parent / path)
            mapping[key] = label
    return mapping


def track_label(path: Path, known_labels: Sequence[str],
                mapping: Mapping[str, str] | None = None) -> str | None:
    """Ground-truth label of a track, if any.

    An entry of ``mapping`` (from :func:`read_labels`, by absolute path then file name) wins;
    otherwise the parent folder's name when it is one of ``known_labels`` (the GTZAN layout
    ``<genre>/<clip>``); otherwise None.
    """
    if mapping:
        label = mapping.get(str(path), mapping.get(path.name))
        if label is not None:
            return label
    return path.parent.name if path.parent.name in known_labels else None
