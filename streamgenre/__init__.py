"""streamgenre: real-time music-genre classification of live audio streams from Kafka.

The package is three places and the benchmark beside them (``docs/ARCHITECTURE.md``):

* :mod:`streamgenre.stream` — the serving path: consume audio chunks, decode, frame, batch,
  infer, smooth, publish to Kafka and Redis, commit; the daemon's lifecycle and metrics.
* :mod:`streamgenre.model` — what a model is: the log-mel shared with training, the ONNX
  contract (model + sidecar) and the similarity catalogue; no Kafka, no Redis.
* :mod:`streamgenre.apps` — entry points: the ``streamgenre`` command line and what it runs
  (ingest, tail, demo, catalogue tools, the embedded dev broker).
* :mod:`streamgenre.bench` — the benchmark, which drives the daemon from outside.

:mod:`streamgenre.config` holds the one ``Settings``. Nothing here imports ``training/`` or torch.
"""
