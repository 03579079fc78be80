"""The paper's CNN (conv/BN/ReLU/max-pool blocks, dropout, dense, softmax) and its ONNX export.

The model sees one window of normalised log-mel frames, ``[N, 1, n_mels, n_frames]``, and
returns class logits plus the penultimate dense layer (the *embedding*). The exported ONNX
graph follows the model contract of ``streamgenre.model.contract``:

- input ``logmel`` float32 ``[N, 1, n_mels, n_frames]`` (dynamic ``N``);
- outputs ``probs`` ``[N, n_classes]`` (softmax) and ``embedding`` ``[N, D]``;
- opset :data:`OPSET`; a JSON sidecar next to it (``<name>.json``) with the labels, window and
  hop durations and the :class:`~streamgenre.model.features.FeatureRecipe`.

Size is chosen for serving cost and for training on two CPU cores: four 3x3 conv blocks of
16/32/64/128 channels, the first with stride 2, each with 2x2 pooling (~15 M multiply-adds per
128x128 window, ~0.13 M parameters), measured by :func:`benchmark_onnx` above the 1000
windows/s required on one core at batch 64. Widths are multiples of 8 on purpose: onnxruntime's
blocked conv kernels are about 2x slower otherwise.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import onnx
import torch
from onnx import numpy_helper
from torch import nn

from streamgenre.model.contract import build_sidecar
from streamgenre.model.features import FeatureRecipe

#: ONNX opset of exported models (the contract requires >= 17).
OPSET = 18
#: Default channel widths of the conv blocks.
WIDTHS: tuple[int, ...] = (16, 32, 64, 128)


class PaperCNN(nn.Module):
    """Conv/BN/ReLU/max-pool blocks, global pooling, dropout and two dense layers.

    Parameters
    ----------
    n_mels, n_frames : int
        Input height (mel bands) and width (frames) of one window.
    n_classes : int
        Number of genres.
    widths : tuple of int
        Output channels of the 3x3 conv blocks, each followed by batch norm, ReLU and a 2x2
        max-pool. The first conv has stride 2, so the input must be at least
        ``2 ** (len(widths) + 1)`` in both dimensions.
    embedding_dim : int
        Size of the penultimate dense layer, exported as ``embedding``.
    dropout : float
        Dropout before each dense layer (training only).
    center_input : bool
        Subtract each window's mean over all mel bins and frames first. With a scalar
        normaliser, a gain is a constant offset of a ``power_to_db`` input (above the ``amin``
        floor), so this makes the model level-invariant by construction.
    """

    def __init__(
        self,
        n_mels: int,
        n_frames: int,
        n_classes: int,
        widths: tuple[int, ...] = WIDTHS,
        embedding_dim: int = 128,
        dropout: float = 0.3,
        center_input: bool = False,
    ) -> None:
        super().__init__()
        self.center_input = center_input
        if min(n_mels, n_frames) < 2 ** (len(widths) + 1):
            raise ValueError(f"a {n_mels}x{n_frames} window is too small for {len(widths)} pooling blocks")
        self.input_shape = (1, n_mels, n_frames)
        blocks: list[nn.Module] = []
        channels = 1
        for i, width in enumerate(widths):
            # Stride 2 in the first conv: the full-resolution 128x128 maps dominated training time
            # on CPU (batch norm, ReLU and pooling over 16 k positions) for little accuracy.
            blocks += [
                nn.Conv2d(channels, width, kernel_size=3, stride=2 if i == 0 else 1, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
            channels = width
        self.features = nn.Sequential(*blocks)
        # Mean and max over the remaining time-frequency grid: mean summarises texture, max keeps
        # short salient events; both are independent of the window length.
        self.head = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(2 * channels, embedding_dim),
            nn.ReLU(inplace=True),
        )
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(embedding_dim, n_classes))
        self.embedding_dim = embedding_dim
        self.n_classes = n_classes
        self.description = (
            ("per-window mean subtraction, " if center_input else "")
            + f"{len(widths)} x [conv 3x3 ({'/'.join(map(str, widths))} channels, first with stride 2), "
            f"batch norm, ReLU, max-pool 2x2], global mean+max pool, dropout {dropout}, "
            f"dense {embedding_dim} + ReLU (embedding), dropout {dropout}, dense {n_classes}, softmax"
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits ``[N, n_classes]`` and embedding ``[N, embedding_dim]`` of windows ``[N, 1, M, T]``."""
        if self.center_input:
            x = x - x.mean(dim=(1, 2, 3), keepdim=True)
        h = self.features(x)
        pooled = torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1)
        embedding = self.head(pooled)
        return self.classifier(embedding), embedding


class _Serving(nn.Module):
    """The graph that is exported: softmax probabilities instead of logits."""

    def __init__(self, model: PaperCNN) -> None:
        super().__init__()
        self.model = model

    def forward(self, logmel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, embedding = self.model(logmel)
        return torch.softmax(logits, dim=1), embedding


def build_model(n_mels: int, n_frames: int, n_classes: int, seed: int = 0, **kwargs: Any) -> PaperCNN:
    """A randomly initialised :class:`PaperCNN` (deterministic for a given ``seed``)."""
    torch.manual_seed(seed)
    return PaperCNN(n_mels, n_frames, n_classes, **kwargs)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def export_onnx(
    model: PaperCNN,
    recipe: FeatureRecipe,
    labels: list[str],
    path: Path | str,
    hop_frames: int | None = None,
    version: str = "paper-cnn-untrained",
    **extra: Any,
) -> dict[str, Any]:
    """Export ``model`` to ONNX with the serving contract and write its sidecar.

    Parameters
    ----------
    model : PaperCNN
        Exported in eval mode (dropout off, batch norm uses its running statistics); each
        module's own mode is restored afterwards.
    recipe, labels, hop_frames, version, **extra :
        Written to the sidecar by :func:`sidecar`. ``hop_frames`` defaults to half a window.
    path : Path or str
        ``.onnx`` file; the sidecar is written next to it with the suffix ``.json``.

    Returns
    -------
    dict
        The sidecar that was written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if len(labels) != model.n_classes:
        raise ValueError(f"{len(labels)} labels for a model with {model.n_classes} classes")
    expected = (1, recipe.n_mels, recipe.n_frames)
    if model.input_shape != expected:
        raise ValueError(f"model expects {model.input_shape}, recipe gives {expected}")
    # Each module's own mode, not just the model's: fine-tuning may keep some (batch norm) in eval.
    modes = {module: module.training for module in model.modules()}
    model.eval()
    example = torch.zeros((2, *model.input_shape), dtype=torch.float32)
    try:
        with warnings.catch_warnings():
            # The TorchScript exporter (deprecated in favour of dynamo, hence the silenced warning)
            # is kept on purpose: torch is pinned to 2.13, where it exports the same graph (parity
            # is tested) about 10x faster than dynamo, which matters for tests and `make train`.
            # dynamic_axes marks only the batch dimension as symbolic.
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(
                _Serving(model),
                (example,),
                str(path),
                input_names=["logmel"],
                output_names=["probs", "embedding"],
                dynamic_axes={"logmel": {0: "N"}, "probs": {0: "N"}, "embedding": {0: "N"}},
                opset_version=OPSET,
                dynamo=False,
            )
    finally:
        for module, training in modes.items():
            module.train(training)
    meta = build_sidecar(
        recipe,
        labels,
        hop_frames if hop_frames is not None else recipe.n_frames // 2,
        model.embedding_dim,
        version,
        architecture=model.description,
        n_parameters=count_parameters(model),
        **extra,
    )
    path.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def load_exported_weights(model: PaperCNN, path: Path | str) -> None:
    """Load the weights of a graph written by :func:`export_onnx` back into ``model``.

    For fine-tuning a model whose torch weights were not kept (``model/`` holds only ONNX).
    The exporter folds each batch norm into the conv before it, so the file has a conv weight and
    bias per block and no batch-norm statistics. Each batch norm is set to the identity with the
    conv's bias as its shift: in eval mode ``model`` then computes exactly the exported graph. In
    train mode batch norm would normalise by batch statistics instead, a different function, so
    fine-tuning keeps the batch norms in eval mode (their scale and shift still learn).

    Raises
    ------
    ValueError
        When the graph's blocks or dense layers do not match ``model``'s architecture.
    """
    graph = onnx.load(str(path)).graph
    weights = {i.name: torch.from_numpy(numpy_helper.to_array(i).copy()) for i in graph.initializer}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    blocks = [m for m in model.features if isinstance(m, nn.Conv2d)]
    norms = [m for m in model.features if isinstance(m, nn.BatchNorm2d)]
    if len(convs) != len(blocks) or any(len(n.input) != 3 for n in convs):
        raise ValueError(f"{path}: {len(convs)} conv nodes with folded bias expected {len(blocks)}")
    with torch.no_grad():
        for node, conv, norm in zip(convs, blocks, norms, strict=True):
            weight, bias = weights[node.input[1]], weights[node.input[2]]
            if weight.shape != conv.weight.shape:
                raise ValueError(f"{path}: conv {node.input[1]} is {tuple(weight.shape)}, "
                                 f"the model's {tuple(conv.weight.shape)}")
            conv.weight.copy_(weight)
            norm.weight.fill_(1.0)
            norm.bias.copy_(bias)
            norm.running_mean.zero_()
            norm.running_var.fill_(1.0 - norm.eps)
        dense = {k.removeprefix("model."): v for k, v in weights.items() if k.startswith("model.")}
        state = model.state_dict()
        expected = {k for k in state if k.startswith(("head.", "classifier."))}
        if set(dense) != expected or any(dense[k].shape != state[k].shape for k in dense):
            raise ValueError(f"{path}: dense layers {sorted(dense)} do not match the model's {sorted(expected)}")
        model.load_state_dict(dense, strict=False)


def build_random_onnx(
    path: Path | str, recipe: FeatureRecipe | None = None, labels: list[str] | None = None, seed: int = 0
) -> dict[str, Any]:
    """A randomly initialised paper CNN exported with the contract (for cost benchmarks only).

    Its predictions are meaningless; its graph and cost are those of the trained model.
    ``recipe`` defaults to :func:`default_recipe`, ``labels`` to the 10 GTZAN genres.
    """
    from training.data import GTZAN_GENRES

    recipe = recipe or default_recipe()
    labels = list(labels or GTZAN_GENRES)
    model = build_model(recipe.n_mels, recipe.n_frames, len(labels), seed=seed)
    return export_onnx(model, recipe, labels, path, version="paper-cnn-random-init", trained_on="nothing")


def default_recipe() -> FeatureRecipe:
    """The paper CNN's front end: 22.05 kHz, 2048-point FFT, hop 512, 128 mels, dB, 128 frames.

    128 frames at hop 512 are 3.04 s of audio per window. ``mean``/``std`` are placeholders
    until :func:`training.train_windows.fit_normaliser` estimates them on a training set.
    """
    return FeatureRecipe(
        sample_rate=22050,
        n_fft=2048,
        hop_length=512,
        window="hann",
        n_mels=128,
        fmin=0.0,
        fmax=None,
        htk=False,
        norm="slaney",
        power=2.0,
        log="power_to_db",
        ref=1.0,
        amin=1e-10,
        top_db=80.0,
        n_frames=128,
    )


def benchmark_onnx(
    path: Path | str, batch: int = 64, threads: int = 1, seconds: float = 3.0
) -> dict[str, float]:
    """Windows per second of an ONNX model in onnxruntime (CPU, ``threads`` intra-op threads).

    Parameters
    ----------
    path : Path or str
        Model with input ``logmel``.
    batch : int
        Windows per call.
    threads : int
        ``intra_op_num_threads`` (inter-op is 1, sequential execution), so ``threads=1``
        measures one core.
    seconds : float
        Measuring time (wall clock) after two warm-up calls.

    Returns
    -------
    dict
        ``wall``: windows per elapsed second; ``cpu``: windows per second of this process's CPU
        time. With one thread, ``cpu`` is the one-core rate even when other processes compete
        for the cores (``wall`` then under-states it); on an idle machine they agree.
    """
    from streamgenre.model.contract import make_session, session_throughput

    return session_throughput(make_session(path, threads), batch, seconds)


def main(argv: list[str] | None = None) -> int:
    """``python -m training.cnn [MODEL.onnx]``: parameters and one-core throughput at batch 64.

    Without a model, measures a randomly initialised paper CNN with :func:`default_recipe`.
    """
    import argparse
    import tempfile

    parser = argparse.ArgumentParser(prog="python -m training.cnn", description=main.__doc__.split("\n")[0])
    parser.add_argument("model", nargs="?", type=Path, help="ONNX model (default: random-init paper CNN)")
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        path = args.model
        if path is None:
            path = Path(tmp) / "paper_cnn.onnx"
            meta = build_random_onnx(path)
            print(f"random-init paper CNN: {meta['n_parameters']} parameters")
        rate = benchmark_onnx(path, batch=64, threads=1, seconds=args.seconds)
    print(
        f"onnxruntime, 1 thread, batch 64: {rate['wall']:.0f} windows/s wall clock, "
        f"{rate['cpu']:.0f} windows per CPU-second"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
