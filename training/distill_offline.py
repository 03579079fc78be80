"""Offline distillation: the tagger labels clean audio once, the student learns from many damaged views.

``python -m training.distill_offline --corpus DIR [DIR ...] --out build/distill-offline`` runs:

1. **Teacher pass** (one worker process per core, :func:`training.distill_views.prepare_file`).
   A served tagger (``--teacher``: ``model/genre_cnn.onnx`` by default, the accurate model;
   ``make student`` passes ``model/fast/genre_cnn.onnx``) labels every file of the corpus
   once, on the *clean* audio: raw genre probabilities and its embedding for windows every
   ``ViewConfig.teacher_hop_s`` seconds.
2. **Views** (same workers). Each file is also turned into ``--views`` versions in the
   student's front end: the clean one plus damaged ones, each a random chain over the *whole
   file* of speed change (pitch and tempo together, 0.89-1.12x), an mp3 round trip through
   ffmpeg (32-128 kbit/s), a telephone/AM/FM band, noise at 5-30 dB SNR and a gain from
   -45 to +3 dB full scale. Whole files on purpose: one ffmpeg call per view instead of one per
   crop, and the log-mel of a file is computed once for every crop later cut from it. Results
   are cached per file under ``OUT/../cache`` (views and teacher outputs apart, so another
   teacher reuses the views) and a second run (another size, another seed) starts training at once.
3. **Training** (this process, both cores). Batches are cut from the views in memory: a
   random file (each corpus folder an equal share), view and offset, a random time stretch in
   the frame domain (0.8-1.25x; with the speed change, pitch shift and tempo vary separately),
   mixup of two crops in the mel power domain, and (``--p-channel``, half the crops by default)
   a broadcast channel drawn afresh per crop, band limit and/or noise, also on mel power
   (:mod:`training.channel`): the cached views alone gave a crop a telephone line on one file in
   ten. The target is the teacher's output at the same instant of the clean recording,
   interpolated between its windows. Loss: KL divergence
   to the teacher's genre distribution at temperature ``T`` (x T^2; by default the teacher's
   calibration temperature, so the targets are the calibrated probabilities the teacher serves;
   at the optimum of the KL alone the student's logits equal the teacher's, at any T), cosine distance between
   a projection of the student's embedding and the teacher's standardised embedding (so
   similarity search keeps the teacher's notion of "sounds alike"), and a small cross-entropy
   on the GTZAN label where a crop has one. ONNX checkpoints every few minutes.
4. **Evaluation** of the final student on gtzan-mini test (never trained on).

Why offline and not "consistent" (:mod:`training.distill_scale`, where the teacher labels
each augmented crop): the tagger costs ~0.1 CPU-s a window, so consistent teaching buys a few
thousand examples an hour on two cores. Labelling clean audio once costs ~10 minutes for the
whole corpus, after which examples cost only the student's own step (~1 M an hour). And the
target is what a listener of the *clean* recording would say, so the student learns to give
the same answer through a telephone line or an mp3 stream, which the tagger itself does not.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel
from tqdm import tqdm

from streamgenre.model.contract import GenreModel
from streamgenre.model.features import FeatureRecipe, window_input
from training.channel import ChannelSimulator
from training.cnn import build_model, count_parameters, export_onnx, load_exported_weights
from training.corpus import CorpusFile, sampling_weights, scan_corpus
from training.data import REPO, load_split
from training.distill_scale import distillation_loss, student_recipe
from training.distill_views import LABELS, FileViews, ViewConfig, init_worker, prepare_file
from training.evaluate import evaluate_onnx, write_training_report

log = logging.getLogger(__name__)


class ViewSampler:
    """Cuts training batches out of the views: crop, time stretch, mixup, teacher targets."""

    def __init__(self, items: list[FileViews], recipe: FeatureRecipe, seed: int = 0,
                 p_stretch: float = 0.3, p_mixup: float = 0.25, p_channel: float = 0.0) -> None:
        self.items, self.recipe = items, recipe
        self.frame_s = recipe.hop_length / recipe.sample_rate
        seconds = [i.frames[0].shape[1] * self.frame_s for i in items]
        files = [CorpusFile(Path(i.path), i.root, s, 0) for i, s in zip(items, seconds, strict=True)]
        self.weights = sampling_weights(files)
        self.rng = np.random.default_rng(seed)
        self.p_stretch, self.p_mixup, self.p_channel = p_stretch, p_mixup, p_channel
        self.channel = ChannelSimulator(recipe, seed=seed) if p_channel > 0 else None

    def crop(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        """One ``(input (1, M, N), teacher log-probs, teacher embedding, label)`` example."""
        rng, n = self.rng, self.recipe.n_frames
        item = self.items[int(rng.choice(len(self.items), p=self.weights))]
        v = int(rng.integers(len(item.frames)))
        frames, speed = item.frames[v], item.speeds[v]
        stretch = float(rng.uniform(0.8, 1.25)) if rng.random() < self.p_stretch else 1.0
        span = min(frames.shape[1], max(2, round(n * stretch)))
        start = int(rng.integers(0, frames.shape[1] - span + 1))
        piece = frames[:, start : start + span].astype(np.float32)
        if span != n:
            # Linear interpolation along time: a tempo change without a pitch change.
            at = np.linspace(0, span - 1, n)
            lo = np.floor(at).astype(int)
            hi = np.minimum(lo + 1, span - 1)
            w = (at - lo).astype(np.float32)
            piece = piece[:, lo] * (1 - w) + piece[:, hi] * w
        centre_s = (start + span / 2) * self.frame_s * speed
        c = item.teacher_centres_s
        logprobs = np.stack([np.interp(centre_s, c, item.teacher_logprobs[:, k]) for k in range(len(LABELS))])
        logprobs -= np.log(np.exp(logprobs).sum())  # interpolated log-probabilities, renormalised
        j = int(np.clip(np.searchsorted(c, centre_s), 0, len(c) - 1))
        return window_input(piece, self.recipe), logprobs.astype(np.float32), item.teacher_embedding[j], item.label

    def batch(self, size: int) -> tuple[torch.Tensor, ...]:
        x, t_logp, t_emb, labels = zip(*(self.crop() for _ in range(size)), strict=True)
        xs = torch.from_numpy(np.stack(x))
        logp = torch.from_numpy(np.stack(t_logp))
        emb = torch.from_numpy(np.stack(t_emb).astype(np.float32))
        y = torch.tensor(labels)
        mean, std = (torch.tensor(np.array(a, np.float32)) for a in self.recipe.normaliser)
        # Mixup and channels act on mel power (recordings and noise add as power); each crop is
        # first brought to the same mean dB (the views' gains span 48 dB), so that mixup's `lam`
        # is the share of each recording in the mixture, as its target says.
        db = xs * std + mean
        power = torch.pow(10.0, (db - db.mean(dim=(1, 2, 3), keepdim=True)) / 10)
        mixed = torch.from_numpy(self.rng.random(size) < self.p_mixup)
        if bool(mixed.any()):
            other = torch.randperm(size)
            lam = torch.from_numpy(self.rng.uniform(0.55, 0.95, size).astype(np.float32))
            lam_x = lam.view(-1, 1, 1, 1)
            power = torch.where(mixed.view(-1, 1, 1, 1), lam_x * power + (1 - lam_x) * power[other], power)
            probs = lam.view(-1, 1) * logp.exp() + (1 - lam.view(-1, 1)) * logp[other].exp()
            logp = torch.where(mixed.view(-1, 1), probs.log(), logp)
            emb = torch.where(mixed.view(-1, 1), lam.view(-1, 1) * emb + (1 - lam.view(-1, 1)) * emb[other], emb)
            y = torch.where(mixed, torch.full_like(y, -1), y)
        changed = mixed.clone()
        if self.channel is not None:
            through = torch.from_numpy(self.rng.random(size) < self.p_channel)
            if bool(through.any()):
                power[through] = self.channel(power[through])
                changed |= through
        if bool(changed.any()):
            new_db = 10 * torch.log10(torch.clamp(power, min=1e-30))
            if self.recipe.top_db is not None:  # as window_input clips each window
                floor = new_db.amax(dim=(1, 2, 3), keepdim=True) - self.recipe.top_db
                new_db = torch.maximum(new_db, floor)
            xs = torch.where(changed.view(-1, 1, 1, 1), (new_db - mean) / std, xs)
        return xs, logp, emb, y


def fit_projection(model: nn.Module, sampler: ViewSampler, projection: nn.Linear, emb_mean: torch.Tensor,
                   emb_std: torch.Tensor, crops: int = 4096, ridge: float = 1e-2) -> None:
    """Set ``projection`` to the ridge regression of the teacher's embedding on the model's.

    Used when training starts from a trained student: a random projection would send large
    cosine-loss gradients into weights that already fit, undoing them in the first steps.
    """
    model.eval()
    with torch.no_grad():
        pairs = [sampler.batch(256) for _ in range(crops // 256)]
        student = torch.cat([model(x)[1] for x, _, _, _ in pairs])
        teacher = torch.cat([(emb - emb_mean) / emb_std for _, _, emb, _ in pairs])
        design = torch.cat([student, torch.ones(len(student), 1)], dim=1)
        gram = design.T @ design + ridge * len(design) * torch.eye(design.shape[1])
        solution = torch.linalg.solve(gram, design.T @ teacher)
        projection.weight.copy_(solution[:-1].T)
        projection.bias.copy_(solution[-1])


def train(sampler: ViewSampler, recipe: FeatureRecipe, out_dir: Path, minutes: float, *,
          kd_temperature: float, seed: int = 0, widths: tuple[int, ...] = (24, 48, 96, 192), batch: int = 64,
          emb_weight: float = 1.0, label_weight: float = 0.3, checkpoint_min: float = 10.0,
          lr: float = 2e-3, init: Path | None = None, average_every: int | None = None,
          **sidecar: Any) -> dict[str, Any]:
    """Train for ``minutes`` of wall clock; export ONNX checkpoints to ``out_dir`` as it goes.

    ``init``: an exported student to continue from (a warm restart: the learning rate rises to
    ``lr`` again and decays over ``minutes``), its batch norms frozen
    (:func:`training.cnn.load_exported_weights`).

    ``average_every``: stochastic weight averaging (Izmailov et al., 2018) instead: the learning
    rate stays at ``lr`` and what is exported is the running mean of the weights every
    ``average_every`` steps, starting with ``init``'s. Only from ``init``: its batch norms are
    frozen, so the averaged convolutions need no recomputed batch statistics.
    """
    if average_every is not None and init is None:
        raise ValueError("weight averaging continues from a trained student: pass init")
    torch.manual_seed(seed)
    model = build_model(recipe.n_mels, recipe.n_frames, len(LABELS), seed=seed, center_input=True, widths=widths)
    emb_dim = sampler.items[0].teacher_embedding.shape[1]
    projection = nn.Linear(model.embedding_dim, emb_dim)
    every = np.concatenate([i.teacher_embedding for i in sampler.items]).astype(np.float32)
    emb_mean, emb_std = torch.from_numpy(every.mean(0)), torch.from_numpy(every.std(0) + 1e-3)
    if init is not None:
        load_exported_weights(model, init)
        fit_projection(model, sampler, projection, emb_mean, emb_std)
    optimiser = torch.optim.AdamW([*model.parameters(), *projection.parameters()], lr=lr, weight_decay=1e-4)
    averaged = None
    if average_every is not None:
        averaged = AveragedModel(model)
        averaged.update_parameters(model)  # the mean starts with init's weights
    onnx_path = out_dir / "genre_cnn.onnx"
    history: list[dict[str, float]] = []

    def export(step: int) -> None:
        served = averaged.module if averaged is not None else model
        export_onnx(served, recipe, LABELS, onnx_path, hop_frames=recipe.n_frames // 2, steps=step,
                    examples_seen=step * batch, **sidecar)
        (out_dir / "history.json").write_text(json.dumps(history, indent=1))

    start = last = time.monotonic()
    step = 0
    model.train()
    if init is not None:  # batch norms stay frozen (export_onnx keeps each module's mode)
        for norm in model.modules():
            if isinstance(norm, nn.BatchNorm2d):
                norm.eval()
    with tqdm(desc="train student", total=round(minutes * 60), unit="s") as bar:
        while (elapsed := time.monotonic() - start) < minutes * 60:
            if averaged is None:  # cosine decay over the planned time
                for group in optimiser.param_groups:
                    group["lr"] = lr * 0.5 * (1 + np.cos(np.pi * elapsed / (minutes * 60)))
            x, t_logp, t_emb, labels = sampler.batch(batch)
            logits, embedding = model(x)
            loss, parts = distillation_loss(logits, embedding, projection, t_logp, (t_emb - emb_mean) / emb_std,
                                            labels, kd_temperature, emb_weight, label_weight)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            step += 1
            if averaged is not None and step % average_every == 0:
                averaged.update_parameters(model)
            if step % 100 == 0:
                history.append({"step": step, "s": round(elapsed, 1), "loss": round(loss.item(), 4),
                                **{k: round(v, 4) for k, v in parts.items()}})
                bar.set_postfix(loss=f"{loss.item():.3f}", step=step)
                bar.n = round(elapsed)
                bar.refresh()
            if time.monotonic() - last > checkpoint_min * 60:
                export(step)
                last = time.monotonic()
    export(step)
    return {"steps": step, "examples_seen": step * batch, "minutes": round((time.monotonic() - start) / 60, 1),
            "batch": batch, "lr": lr, "initialised_from": str(init) if init else None,
            "weights_averaged": int(averaged.n_averaged) if averaged is not None else None,
            "average_every": average_every,
            "kd_temperature": kd_temperature, "emb_weight": emb_weight, "label_weight": label_weight,
            "widths": list(widths), "n_parameters": count_parameters(model), "history": history}


def inherited_calibration(teacher: GenreModel) -> dict[str, Any]:
    """The teacher's temperature, for the student's sidecar.

    Every labelled clip we may train on is in the corpus, so no clip is left to fit a
    temperature of the student's own on (:mod:`training.calibration` needs a held-out part). The
    student is trained to reproduce the teacher's probabilities, so it inherits the map that
    calibrates them: the teacher's temperature, fitted on out-of-fold mini_train windows.
    Whether that holds is measured, not assumed: the scorecard's ECE on mini_test (raw -> served).
    A label-free fit on the corpus (the student's served probabilities against the teacher's)
    does not work here: on the windows it trained on the student matches the teacher (T ~ 1.0),
    on new audio it is less confident (model card).
    """
    return {"temperature": teacher.spec.temperature,
            "calibration": {"temperature": teacher.spec.temperature,
                            "fitted_on": f"inherited from the teacher {teacher.version}, whose probabilities "
                            "the student imitates (its own fit: out-of-fold mini_train windows)"}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.distill_offline", description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", type=Path, nargs="+", required=True, help="folders of audio (searched recursively)")
    parser.add_argument("--teacher", type=Path, default=REPO / "model" / "genre_cnn.onnx")
    parser.add_argument("--gtzan-mini", type=Path, default=Path("../shared/data/gtzan-mini"))
    parser.add_argument("--out", type=Path, default=Path("build/distill-offline/student"))
    parser.add_argument("--minutes", type=float, default=60.0, help="training time budget (wall clock)")
    parser.add_argument("--views", type=int, default=ViewConfig.views, help="versions of each file (1 clean)")
    parser.add_argument("--max-seconds", type=float, default=ViewConfig.max_seconds, help="per file")
    for damage in ("band", "mp3", "noise"):
        parser.add_argument(f"--p-{damage}", type=float, default=getattr(ViewConfig, f"p_{damage}"),
                            help=f"share of the damaged views with a {damage} step")
    parser.add_argument("--p-channel", type=float, default=0.5,
                        help="share of the training crops sent through a simulated channel on the fly "
                        "(band limit and/or noise in the mel power domain, training.channel)")
    parser.add_argument("--widths", type=int, nargs="+", default=[24, 48, 96, 192],
                        help="conv channels (the paper CNN's are 16 32 64 128; these cost ~2x its CPU per window)")
    parser.add_argument("--kd-temperature", type=float, default=None,
                        help="distillation temperature (default: the teacher's calibration temperature)")
    parser.add_argument("--workers", type=int, default=max(1, (mp.cpu_count() or 1)))
    parser.add_argument("--threads", type=int, default=max(1, (mp.cpu_count() or 1)), help="torch threads")
    parser.add_argument("--hours", type=float, default=None, help="use only this many hours of the corpus "
                        "(a seeded random subset of files, for the learning curve)")
    parser.add_argument("--init", type=Path, default=None,
                        help="an exported student (ONNX) to continue training from, same recipe and widths")
    parser.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (cosine decay over --minutes)")
    parser.add_argument("--average-every", type=int, default=None, metavar="STEPS",
                        help="with --init: stochastic weight averaging, a constant --lr and the mean of the "
                        "weights every STEPS steps exported")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--version", help="the student's version in its sidecar "
                        "(default: distilled-offline-2 with simulated channels, distilled-offline without)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    torch.set_num_threads(args.threads)
    recipe = student_recipe(args.gtzan_mini)
    if args.average_every is not None and args.init is None:
        parser.error("--average-every continues from a trained student: pass --init")
    if args.init is not None and GenreModel(args.init).recipe != recipe:
        parser.error(f"--init {args.init}: its feature recipe differs from the student's ({recipe})")
    config = ViewConfig(views=args.views, max_seconds=args.max_seconds, p_band=args.p_band, p_mp3=args.p_mp3,
                        p_noise=args.p_noise, seed=args.seed)
    corpus = scan_corpus(args.corpus)  # warns about each file that does not decode
    if args.hours is not None:
        corpus = corpus.subset_hours(args.hours, args.seed)
    cache_dir = args.out.parent / "cache"
    cache_dir.mkdir(parents=True, exist_ok=True)
    jobs = [(f, recipe, config, str(args.teacher), cache_dir) for f in corpus.files]
    items: list[FileViews] = []
    failed: dict[str, str] = dict(corpus.undecodable)
    with mp.get_context("spawn").Pool(args.workers, init_worker, (str(args.teacher),)) as pool:
        done = pool.imap_unordered(prepare_file, jobs)
        for result in tqdm(done, total=len(jobs), desc="teacher + views", unit="file"):
            if isinstance(result, str):
                log.warning("skipping %s", result)
                failed[result.split(":")[0]] = result
            else:
                items.append(result)
    items.sort(key=lambda i: i.path)
    teacher = GenreModel(args.teacher)
    sampler = ViewSampler(items, recipe, seed=args.seed, p_channel=args.p_channel)
    args.out.mkdir(parents=True, exist_ok=True)
    kd_temperature = args.kd_temperature or teacher.spec.temperature
    summary = train(sampler, recipe, args.out, args.minutes, seed=args.seed, widths=tuple(args.widths),
                    kd_temperature=kd_temperature, lr=args.lr, init=args.init, average_every=args.average_every,
                    version=args.version or ("distilled-offline-2" if args.p_channel > 0 else "distilled-offline"),
                    teacher=f"{teacher.version} ({args.teacher.name}), raw probabilities on clean audio",
                    trained_on=corpus.summary(), **inherited_calibration(teacher))
    result = evaluate_onnx(args.out / "genre_cnn.onnx", load_split(args.gtzan_mini, "mini")["test"], cache_dir=None)
    report = {
        "corpus": {**corpus.summary(), "undecodable": failed},
        "views": asdict(config),
        "p_channel": args.p_channel,
        "teacher_windows": int(sum(len(i.teacher_centres_s) for i in items)),
        "training": summary,
    }
    write_training_report(args.out, report, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
