"""musicnn's tag vocabularies and the documented zero-shot tag → genre mapping.

The shipped model (``model/genre_cnn.onnx``, built by :mod:`training.convert_musicnn`) carries
the raw outputs of musicnn's two taggers, ``msd_tags`` (50 Million Song Dataset last.fm tags)
and ``mtt_tags`` (50 MagnaTagATune tags), beside the genre ``probs`` of the trained head. The
tag lists are copied here from ``musicnn.configuration`` (the conversion asserts they are
still identical) so that code running without TensorFlow or musicnn, such as the zero-shot
baseline and the tests, can name the columns.

Zero-shot mapping (:data:`ZERO_SHOT_MAP`): one tag per genre, chosen from the tag names alone,
never tuned on data. MTT is used for ``classical`` because the MSD tagger has no classical tag
and leans towards ``jazz`` for orchestral music; every other genre uses an MSD tag, since MTT
has few genre tags. Two genres have no direct tag:

- ``disco`` uses MSD ``dance`` as a proxy (MSD has no disco tag, and MTT's ``dance`` is no better);
- ``reggae`` has no tag in either vocabulary. Its zero-shot score is 0, so the zero-shot
  baselines never predict reggae; only the trained head can.
"""

from __future__ import annotations

import numpy as np

from training.data import GTZAN_GENRES

MSD_TAGS: tuple[str, ...] = (
    "rock",
    "pop",
    "alternative",
    "indie",
    "electronic",
    "female vocalists",
    "dance",
    "00s",
    "alternative rock",
    "jazz",
    "beautiful",
    "metal",
    "chillout",
    "male vocalists",
    "classic rock",
    "soul",
    "indie rock",
    "Mellow",
    "electronica",
    "80s",
    "folk",
    "90s",
    "chill",
    "instrumental",
    "punk",
    "oldies",
    "blues",
    "hard rock",
    "ambient",
    "acoustic",
    "experimental",
    "female vocalist",
    "guitar",
    "Hip-Hop",
    "70s",
    "party",
    "country",
    "easy listening",
    "sexy",
    "catchy",
    "funk",
    "electro",
    "heavy metal",
    "Progressive rock",
    "60s",
    "rnb",
    "indie pop",
    "sad",
    "House",
    "happy",
)
MTT_TAGS: tuple[str, ...] = (
    "guitar",
    "classical",
    "slow",
    "techno",
    "strings",
    "drums",
    "electronic",
    "rock",
    "fast",
    "piano",
    "ambient",
    "beat",
    "violin",
    "vocal",
    "synth",
    "female",
    "indian",
    "opera",
    "male",
    "singing",
    "vocals",
    "no vocals",
    "harpsichord",
    "loud",
    "quiet",
    "flute",
    "woman",
    "male vocal",
    "no vocal",
    "pop",
    "soft",
    "sitar",
    "solo",
    "man",
    "classic",
    "choir",
    "voice",
    "new age",
    "dance",
    "male voice",
    "female vocal",
    "beats",
    "harp",
    "cello",
    "no voice",
    "weird",
    "country",
    "metal",
    "female voice",
    "choral",
)
#: Order of the 100 head input features: MSD tags then MTT tags, as concatenated in the graph.
HEAD_FEATURES: tuple[str, ...] = tuple(f"msd:{t}" for t in MSD_TAGS) + tuple(f"mtt:{t}" for t in MTT_TAGS)
#: genre → (tagger, tag), or None for a genre with no tag (reggae). See the module docstring.
ZERO_SHOT_MAP: dict[str, tuple[str, str] | None] = {
    "blues": ("msd", "blues"),
    "classical": ("mtt", "classical"),
    "country": ("msd", "country"),
    "disco": ("msd", "dance"),
    "hiphop": ("msd", "Hip-Hop"),
    "jazz": ("msd", "jazz"),
    "metal": ("msd", "metal"),
    "pop": ("msd", "pop"),
    "reggae": None,
    "rock": ("msd", "rock"),
}


def zero_shot_scores(msd: np.ndarray, mtt: np.ndarray) -> np.ndarray:
    """Genre scores ``(N, 10)`` in :data:`GTZAN_GENRES` order from tag probabilities.

    Parameters
    ----------
    msd, mtt : np.ndarray, shape (N, 50)
        Sigmoid outputs of the MSD and MTT taggers (windows or clip means).

    Returns
    -------
    np.ndarray, shape (N, 10)
        The mapped tag's probability per genre; 0 for a genre without a tag (reggae).
    """
    tables = {"msd": (msd, MSD_TAGS), "mtt": (mtt, MTT_TAGS)}
    scores = np.zeros((msd.shape[0], len(GTZAN_GENRES)), np.float64)
    for g, genre in enumerate(GTZAN_GENRES):
        source = ZERO_SHOT_MAP[genre]
        if source is not None:
            values, names = tables[source[0]]
            scores[:, g] = values[:, names.index(source[1])]
    return scores


def normalised_scores(scores: np.ndarray, genre_means: np.ndarray) -> np.ndarray:
    """Divide each genre's score by its mean over a reference set of clips.

    The raw tag probabilities have very different base rates (``rock`` fires far more often
    than ``blues``), so argmax over raw scores favours frequent tags; dividing by each genre's
    mean puts them on one scale. A genre whose mean is 0 (no tag) keeps a score of 0.
    """
    safe = np.where(genre_means > 0, genre_means, 1.0)
    return np.where(genre_means > 0, scores / safe, 0.0)
