"""Track embeddings, an on-disk catalogue of them, and nearest-neighbour search.

One module per job, in the order a catalogue is built and used:

* :mod:`.files` — which audio files (folders searched recursively) and their known genres (the
  labels TSV, or a GTZAN-style folder name);
* :mod:`.embedding` — a file or signal → its track embedding (mean of the model's window
  embeddings, L2-normalised) and mean probabilities;
* :mod:`.storage` — the catalogue directory's files and format version, read and written atomically;
* :mod:`.index` — exact search, or the optional HNSW graph (faiss) for large catalogues;
* :mod:`.catalog` — :class:`Catalog` (load, save, query, live neighbours for the daemon) and
  :func:`build_catalog`.

The names below are the package's interface; callers import them from here.
"""

from streamgenre.model.similarity.catalog import Catalog, build_catalog
from streamgenre.model.similarity.embedding import TrackEmbedding, embed_audio, embed_file, l2_normalise, load_audio
from streamgenre.model.similarity.files import AUDIO_EXTENSIONS, find_audio, read_labels, track_label
from streamgenre.model.similarity.index import DEFAULT_ANN_THRESHOLD
from streamgenre.model.similarity.storage import FORMAT_NAME, FORMAT_VERSION, CatalogError

__all__ = [
    "AUDIO_EXTENSIONS",
    "DEFAULT_ANN_THRESHOLD",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "Catalog",
    "CatalogError",
    "TrackEmbedding",
    "build_catalog",
    "embed_audio",
    "embed_file",
    "find_audio",
    "l2_normalise",
    "load_audio",
    "read_labels",
    "track_label",
]
