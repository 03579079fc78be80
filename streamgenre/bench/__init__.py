"""``streamgenre bench``: how many live streams one box serves, and how close the daemon gets to its ceiling.

Three measurements per model, in one run, so that they share the machine's state:

* **ceiling** — features + inference in-process on in-memory audio: S streams of 22.05 kHz
  chunks pushed through the daemon's own :class:`~streamgenre.stream.framing.Framer` (resampling,
  incremental STFT/mel, windows) and micro-batched ``GenreModel.predict``; no broker, no
  decode, no publishing. Run in ``workers`` processes at once (the daemon's process count),
  so it is the box's compute ceiling for that process layout. Measured again after the
  end-to-end and backlog runs: their ratios to the ceiling use the mean of both, and
  ``ceiling_drift`` records how far the machine's speed moved in between.
* **end to end** — the real thing: an embedded broker (tansu), S streams produced in real time
  by a separate producer process (s16le chunks, ``chunk_s`` each, sent when their audio would
  have been captured, i.e. at ``ts + chunk_s``), ``workers`` daemon processes in one consumer
  group (``streamgenre run``), Redis when one answers, and a consumer of the output topic.
  Reports sustained audio-seconds per wall-second, p50/p99 of *window complete → published*
  (the ``latency_ms`` field of every prediction) and of *chunk ts → published* (the output
  record's timestamp minus ``ts`` of the chunk that holds the window's last sample), RSS and
  bytes per stream; window → publish and the CPU of the daemons, broker and producer also for
  every second of the run, which tells a steady tail from an episode of falling behind.
* **baseline** — the paper-style pipeline: per window, ``librosa.feature.melspectrogram`` of
  the whole window and a batch-1 inference with the same model.

Models: see :mod:`streamgenre.bench.models` (the paper CNN is a committed ONNX file, so
nothing here imports ``training/`` or torch).

``--sweep`` searches the largest S that the end-to-end run sustains in real time with p99
window → publish ≤ 100 ms. Results go to ``benchmarks/results/<timestamp>.json``.

Modules, one job each: ``audio`` (synthetic voices), ``models`` (which ONNX files),
``ceiling``, ``baseline`` (+ its bound), ``layout`` (pinning), ``memory`` (RSS at scale),
``producer`` (the simulated live sources), ``daemons`` (settings, daemon processes, output
consumer shared by the broker runs), ``e2e``, ``backlog`` (+ the transport floor), ``procfs``
(CPU and RSS of other processes), ``sweep``, ``report`` (machine, ratios, table), ``suite``
(one run of everything), ``command`` (argparse, the result file).
"""

from streamgenre.bench.audio import INPUT_RATE, N_VOICES, voice
from streamgenre.bench.backlog import measure_backlog, measure_transport
from streamgenre.bench.baseline import measure_baseline
from streamgenre.bench.ceiling import ceiling_worker, measure_ceiling
from streamgenre.bench.daemons import E2EConfig
from streamgenre.bench.e2e import cpu_by_second, latency_by_second, measure_e2e
from streamgenre.bench.memory import measure_memory
from streamgenre.bench.models import PAPER_CNN, STUDENT_MODEL, model_paths, served_model
from streamgenre.bench.report import over_ceiling
from streamgenre.bench.sweep import sweep

__all__ = [
    "INPUT_RATE",
    "N_VOICES",
    "PAPER_CNN",
    "STUDENT_MODEL",
    "E2EConfig",
    "ceiling_worker",
    "cpu_by_second",
    "latency_by_second",
    "measure_backlog",
    "measure_baseline",
    "measure_ceiling",
    "measure_e2e",
    "measure_memory",
    "measure_transport",
    "model_paths",
    "over_ceiling",
    "served_model",
    "sweep",
    "voice",
]
