"""The model contract: one ONNX file plus a JSON sidecar holding its exact feature recipe.

The daemon serves whatever ``model/`` holds. The sidecar says how to turn audio into the
``logmel`` input (see :mod:`streamgenre.model.features`), which labels the ``probs`` columns carry
and how long a window is, so swapping the pretrained tagger for a GTZAN-trained CNN is a file
copy, not a code change.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from pydantic import BaseModel, ConfigDict, Field, field_validator

from streamgenre.model.features import FeatureRecipe


class ModelError(RuntimeError):
    """The model file or its sidecar is missing or breaks the contract."""


class ModelSpec(BaseModel):
    """The JSON sidecar (``<model>.json``)."""

    model_config = ConfigDict(extra="allow")

    version: str
    labels: list[str] = Field(min_length=2)
    window_s: float = Field(gt=0)
    hop_s: float = Field(gt=0)
    features: dict
    embedding_dim: int | None = Field(default=None, gt=0)
    #: Temperature of the served probabilities (:func:`calibrate`); 1 = as the graph outputs them.
    temperature: float = Field(default=1.0, gt=0)

    @field_validator("features")
    @classmethod
    def _recipe_is_valid(cls, value: dict) -> dict:
        FeatureRecipe.from_dict(value)
        return value

    @property
    def recipe(self) -> FeatureRecipe:
        return FeatureRecipe.from_dict(self.features)

    @property
    def hop_frames(self) -> int:
        """Window hop in mel frames; windows start on frame boundaries so they are slices."""
        return self.recipe.seconds_to_frames(self.hop_s)

    @property
    def hop_seconds(self) -> float:
        """The hop the windows really advance by (``hop_s`` rounded to whole frames)."""
        return self.recipe.frames_to_seconds(self.hop_frames)


def sidecar_path(model_path: Path) -> Path:
    return Path(model_path).with_suffix(".json")


def build_sidecar(
    recipe: FeatureRecipe,
    labels: list[str],
    hop_frames: int,
    embedding_dim: int,
    version: str,
    **extra: Any,
) -> dict[str, Any]:
    """The JSON sidecar of a model, as training and conversion write it (:func:`load_spec` reads it).

    Parameters
    ----------
    recipe : FeatureRecipe
        Front end, including the normalisation estimated on the training set.
    labels : list of str
        Class names, index = class.
    hop_frames : int
        Hop between consecutive windows, in mel frames (``hop_s = hop_frames * hop_length / sr``).
    embedding_dim : int
        Width of the ``embedding`` output.
    version : str
        Model version recorded in outputs.
    **extra
        Further keys (architecture, training data, metrics, ...), stored as given.
    """
    return {
        "version": version,
        "labels": list(labels),
        "window_s": recipe.window_samples / recipe.sample_rate,
        "hop_s": recipe.frames_to_seconds(hop_frames),
        "features": recipe.to_dict(),
        "embedding_dim": embedding_dim,
        **extra,
    }


def load_spec(model_path: Path) -> ModelSpec:
    path = sidecar_path(model_path)
    if not path.is_file():
        raise ModelError(f"model sidecar not found: {path} (expected next to {model_path})")
    try:
        return ModelSpec.model_validate(json.loads(path.read_text()))
    except ValueError as exc:
        raise ModelError(f"invalid model sidecar {path}: {exc}") from exc


class GenreModel:
    """An onnxruntime session over a contract model: ``logmel`` → ``probs``, ``embedding``.

    The one loader of the project: the daemon, the catalogue, evaluation, distillation,
    quantisation and the benchmark all load models here, so a model that breaks its contract
    is refused in the same words everywhere, at load rather than at its first window.

    Parameters
    ----------
    model_path : Path
        The ``.onnx`` file; the sidecar is the same path with ``.json``.
    threads : int
        ``intra_op_num_threads`` (0: onnxruntime's choice). One thread per worker process
        scales better than one process with many threads for the small batches a live daemon sees.
    """

    def __init__(self, model_path: Path, threads: int = 1) -> None:
        model_path = Path(model_path)
        if not model_path.is_file():
            raise ModelError(f"model not found: {model_path}")
        self.path = model_path
        self.spec = load_spec(model_path)
        self.recipe = self.spec.recipe
        self.session = make_session(model_path, threads)
        self._check_graph()

    def _check_graph(self) -> None:
        """Refuse a graph that does not match its sidecar: input shape, label count, embedding width.

        Output widths are checked on one probe window because tf2onnx graphs often declare
        symbolic output shapes; the probe costs one window's inference at load.
        """
        name = self.path
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = {o.name for o in self.session.get_outputs()}
        if "logmel" not in inputs or not {"probs", "embedding"} <= outputs:
            raise ModelError(f"{name} breaks the contract: needs input logmel, outputs probs + embedding")
        expected = [1, self.recipe.n_mels, self.recipe.n_frames]
        shape = inputs["logmel"].shape
        if len(shape) != 4 or list(shape[1:]) != expected:
            dims = ", ".join(map(str, expected))
            raise ModelError(f"{name}: logmel shape {shape} does not match the sidecar's [N, {dims}]")
        probs, embedding = self.session.run(["probs", "embedding"], {"logmel": np.zeros([1, *expected], np.float32)})
        if probs.shape != (1, len(self.labels)):
            raise ModelError(
                f"{name}: probs has {probs.shape[-1]} columns, the sidecar names {len(self.labels)} labels")
        declared = self.spec.embedding_dim
        if embedding.ndim != 2 or (declared is not None and embedding.shape[1] != declared):
            raise ModelError(f"{name}: embedding shape {list(embedding.shape)} does not match the sidecar's "
                             f"embedding_dim {declared}")
        self.embedding_dim = int(embedding.shape[1])

    @property
    def labels(self) -> list[str]:
        return self.spec.labels

    @property
    def version(self) -> str:
        return self.spec.version

    @property
    def hop_frames(self) -> int:
        return self.spec.hop_frames

    def predict(self, logmel: np.ndarray, batch_size: int | None = None, calibrated: bool = True
                ) -> tuple[np.ndarray, np.ndarray]:
        """``(probs (N, C), embedding (N, D))`` of inputs ``(N, 1, n_mels, n_frames)``.

        ``probs`` are the served ones: calibrated with the sidecar's temperature unless
        ``calibrated`` is False (the graph's own softmax, for fitting the temperature).
        ``batch_size`` bounds the windows per onnxruntime call (memory of offline runs over
        whole files); ``None`` runs the batch as given, as the daemon's micro-batcher sizes it.
        """
        outputs = self.outputs(logmel, ("probs", "embedding"), batch_size)
        probs = calibrate(outputs["probs"], self.spec.temperature) if calibrated else outputs["probs"]
        return probs, outputs["embedding"]

    def outputs(self, logmel: np.ndarray, names: Sequence[str], batch_size: int | None = None
                ) -> dict[str, np.ndarray]:
        """Any of the graph's outputs (e.g. a tagger's ``msd_tags``) for a batch, in batches of ``batch_size``."""
        if len(logmel) == 0:
            widths = {"probs": len(self.labels), "embedding": self.embedding_dim}
            return {n: np.zeros((0, widths.get(n, 0)), np.float32) for n in names}
        return run_batched(self.session, logmel, names, batch_size)


def calibrate(probs: np.ndarray, temperature: float) -> np.ndarray:
    """Temperature-scaled probabilities: ``softmax(log(probs) / T)``, row-wise.

    Equal to ``softmax(logits / T)`` because ``log softmax(z) = z - logsumexp(z)`` and the shift
    cancels, so any contract model can be calibrated after its graph, without editing it.
    ``T > 1`` softens over-confident outputs; the argmax never changes.
    """
    if temperature == 1.0:
        return probs
    scaled = np.log(np.maximum(probs, np.float32(1e-30))) / np.float32(temperature)
    scaled -= scaled.max(axis=1, keepdims=True)
    np.exp(scaled, out=scaled)
    scaled /= scaled.sum(axis=1, keepdims=True)
    return scaled.astype(probs.dtype, copy=False)


def run_batched(session: ort.InferenceSession, logmel: np.ndarray, names: Sequence[str],
                batch_size: int | None = None) -> dict[str, np.ndarray]:
    """Outputs ``names`` of a contract session over ``logmel``, ``batch_size`` windows per call
    (all at once when None); for sessions without a sidecar yet (conversion, head fitting)."""
    logmel = np.ascontiguousarray(logmel, dtype=np.float32)
    step = batch_size or max(1, len(logmel))
    parts = [session.run(list(names), {"logmel": logmel[i : i + step]}) for i in range(0, len(logmel), step)]
    return {n: np.concatenate([p[k] for p in parts]) for k, n in enumerate(names)}


def make_session(model: Path | str | bytes, threads: int = 1,
                 level: ort.GraphOptimizationLevel = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
                 ) -> ort.InferenceSession:
    """onnxruntime CPU session: ``threads`` intra-op threads, one inter-op thread, sequential."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = level
    source = model if isinstance(model, bytes) else str(model)
    try:
        return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises several unrelated exception types
        shown = "<in-memory graph>" if isinstance(model, bytes) else model
        raise ModelError(f"cannot load ONNX model {shown}: {exc}") from exc


@dataclass(frozen=True)
class Rate:
    """Calls of a timed function: ``calls`` in ``wall_s`` elapsed and ``cpu_s`` of this process's CPU."""

    calls: int
    wall_s: float
    cpu_s: float

    def per_s(self, items_per_call: int = 1) -> float:
        return self.calls * items_per_call / self.wall_s

    def per_cpu_s(self, items_per_call: int = 1) -> float:
        """Items per CPU-second: the one-core rate of a one-thread run even on a shared box."""
        return self.calls * items_per_call / max(self.cpu_s, 1e-9)


def time_calls(fn: Callable[[], object], seconds: float, warmup: int = 1) -> Rate:
    """The one throughput timer: call ``fn`` for ``seconds`` of wall clock after ``warmup`` calls.

    CPU time (``time.process_time``) is measured beside wall time because the boxes are shared:
    with one onnxruntime thread, items per CPU-second is what one core does, whatever else runs.
    """
    for _ in range(warmup):
        fn()
    calls, started, cpu0 = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - started < seconds or calls == 0:
        fn()
        calls += 1
    return Rate(calls, time.perf_counter() - started, time.process_time() - cpu0)


def session_throughput(session: ort.InferenceSession, batch: int = 64, seconds: float = 3.0,
                       outputs: Sequence[str] | None = None) -> dict[str, float]:
    """Windows per second (``wall``) and per CPU-second (``cpu``) of a session on random inputs of ``batch``."""
    spec = session.get_inputs()[0]
    x = np.random.default_rng(0).standard_normal((batch, *spec.shape[1:])).astype(np.float32)
    names = list(outputs) if outputs else None
    rate = time_calls(lambda: session.run(names, {spec.name: x}), seconds, warmup=2)
    return {"wall": rate.per_s(batch), "cpu": rate.per_cpu_s(batch)}
