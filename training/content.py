"""Fit the speech / music / mixed regression of :mod:`streamgenre.model.content` and evaluate it
on held-out real audio.

    python -m training.content --data ../shared/data --out model/content.json \
        --report model/report/content.json

Data (all real recordings; nothing synthetic except the mixes of real speech over real music):

- speech: ``speech/`` (Debian packages, 14 languages); held out by *package*: Dutch and
  Czech Fish Fillets dialogue, Russian Asterisk prompts, the Italian Menardi prompts and every
  ktuberling word list, plus the three LibriSpeech clips of ``examples/`` (never trained on);
- music: ``free-music/`` held out by *package* (every 4th package in name order), and
  ``music-corpus/`` + gtzan-mini ``mini_train`` for training — GTZAN clips only when their
  number ends 0-4 (project rule); gtzan-mini ``mini_test`` and the music of ``examples/`` are
  evaluation only;
- mixed: a training speech file over a training music file 6-15 dB down (and the same from
  held-out files for the held-out figure).

Every file is cut into the daemon's windows (same front end and hop, via
:func:`streamgenre.model.features.clip_windows`) at a random gain of -30..0 dB, so the level
does not become a cue; the speech set's digital-zero pauses get -75 dBFS noise for the same
reason (see its README).

Half the training files of every class (``--broadcast-share``) also give a second copy that
went through what a station does to them (:func:`broadcast`): half of those copies over a
recording room's background noise, a 16 kHz source's empty top band (LibriSpeech, most talk
archives) and an mp3 round trip through ffmpeg at 64-128 kbit/s. Without it the speech set's
clean studio prompts were the only speech the model knew, and LibriSpeech read in a room (its
pauses ~20 dB under the voice) came out ``mixed`` as often as ``speech``, through the radio
relay too (issue 18). The held-out sets are evaluated twice: as recorded, and through the
relay's own chain (mp3 96 kbit/s, decoded to the model's rate).
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import time
from pathlib import Path

import numpy as np
import soundfile as sf
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier
from sklearn.preprocessing import StandardScaler

from streamgenre.model.content import FEATURE_NAMES, MODEL_CLASSES, content_features
from streamgenre.model.contract import load_spec
from streamgenre.model.features import FeatureRecipe, clip_windows, resample, to_mono
from training.augment import add_noise
from training.corpus import mp3_round_trip

HELD_OUT_SPEECH_PACKAGES = {"fillets-ng-data-nl", "fillets-ng-data-cs", "asterisk-core-sounds-ru-g722",
                            "asterisk-prompt-it-menardi-wav", "ktuberling-data"}
MAX_SECONDS = 45.0
GTZAN_NUMBER = re.compile(r"\.(\d{5})\.")
# Source rates a station's programme comes at: the rate itself when already at or below it.
BROADCAST_SOURCE_RATES = (16000, 22050, 44100)
BROADCAST_KBPS = (64, 96, 128)
# A recording room's or a tape's background, relative to the file's mean power (LibriSpeech
# 198-209's pauses sit ~20 dB under its speech); pink to brown, as room noise and hum are.
BACKGROUND_SNR_DB = (15.0, 40.0)
BACKGROUND_COLOURS = (1.0, 2.0)
RELAY_KBPS = 96  # tests/radio.py's station


def read_audio(path: Path, rate: int, max_s: float = MAX_SECONDS) -> np.ndarray:
    with sf.SoundFile(path) as f:
        audio = f.read(frames=int(max_s * f.samplerate), dtype="float32", always_2d=True)
        return resample(to_mono(audio), f.samplerate, rate)


def gtzan_trainable(path: str) -> bool:
    match = GTZAN_NUMBER.search(path)
    return match is None or int(match.group(1)[-1]) <= 4


def manifest(root: Path) -> list[dict[str, str]]:
    with (root / "MANIFEST.tsv").open() as f:
        return list(csv.DictReader(f, delimiter="\t"))


def file_lists(data: Path) -> dict[str, list[Path]]:
    """Files per (role, class): train_speech, test_speech, ... (lists of paths)."""
    lists: dict[str, list[Path]] = {k: [] for k in ("train_speech", "test_speech", "train_music", "test_music")}
    for row in manifest(data / "speech"):
        role = "test" if row["package_or_repo"] in HELD_OUT_SPEECH_PACKAGES else "train"
        lists[f"{role}_speech"].append(data / "speech" / row["path"])
    lists["test_speech"] += sorted((data / "examples").glob("librispeech_*.ogg"))
    packages = sorted({row["package_or_repo"] for row in manifest(data / "free-music")})
    held_out = set(packages[::4])
    for row in manifest(data / "free-music"):
        role = "test" if row["package_or_repo"] in held_out else "train"
        lists[f"{role}_music"].append(data / "free-music" / row["path"])
    lists["train_music"] += [data / "music-corpus" / row["path"] for row in manifest(data / "music-corpus")
                             if gtzan_trainable(row["path"])]
    gtzan = data / "gtzan-mini"
    lists["train_music"] += [gtzan / line.strip() for line in (gtzan / "splits" / "mini_train.txt").read_text().split()
                             if gtzan_trainable(line)]
    lists["test_music"] += [p for p in sorted((data / "examples").glob("*.ogg"))
                            if not p.name.startswith(("librispeech", "dog", "humpback", "robin"))]
    return lists


def package_of(path: Path, data: Path) -> str:
    """``speech/fillets-ng/fillets_nl_003.ogg`` -> ``speech/fillets_nl``: the source package and language."""
    relative = path.relative_to(data)
    stem = "_".join(relative.stem.split("_")[:-1]) or relative.stem
    return f"{relative.parts[0]}/{stem if relative.parts[0] in ('speech', 'examples') else relative.parts[1]}"


def broadcast(y: np.ndarray, rate: int, rng: np.random.Generator | None) -> np.ndarray:
    """``y`` as a listener of the relay gets it: half the time over a recording's background
    noise, band-limited to a random source rate (a 16 kHz recording has nothing above 8 kHz),
    then an mp3 round trip at a random bitrate; with no ``rng``, the test station's chain (no
    extra noise or band limit, mp3 at :data:`RELAY_KBPS`).

    The order is a station's: the room noise is in the recording, the band limit is the
    recording's rate, and the encoder sees both."""
    if rng is None:
        return mp3_round_trip(y, rate, RELAY_KBPS)
    if rng.uniform() < 0.5:
        y = add_noise(y, rng.uniform(*BACKGROUND_SNR_DB), rng, colour=float(rng.choice(BACKGROUND_COLOURS)))
    source_rate = int(rng.choice(BROADCAST_SOURCE_RATES))
    if source_rate < rate:
        y = resample(resample(y, rate, source_rate), source_rate, rate)[: len(y)]
    return mp3_round_trip(y, rate, int(rng.choice(BROADCAST_KBPS)))


def windows_of(y: np.ndarray, recipe: FeatureRecipe, hop_frames: int, rng: np.random.Generator,
               broadcast_share: float = 0.0, relay: bool = False) -> np.ndarray:
    """Features of every window of ``y`` at a random gain, or of it through the relay's chain
    (``relay``); with probability ``broadcast_share`` (training) also those of a
    :func:`broadcast` copy: a second version of the file, not a replacement, so the clean
    recordings keep their weight and the augmentation only adds conditions."""
    if relay:
        return level_windows(broadcast(y, recipe.sample_rate, None), recipe, hop_frames, rng)
    clean = level_windows(y, recipe, hop_frames, rng)
    if broadcast_share and rng.uniform() < broadcast_share:
        return np.concatenate([clean, level_windows(broadcast(y, recipe.sample_rate, rng), recipe, hop_frames, rng)])
    return clean


def level_windows(y: np.ndarray, recipe: FeatureRecipe, hop_frames: int, rng: np.random.Generator) -> np.ndarray:
    gain = np.float32(10 ** (rng.uniform(-30, 0) / 20))
    noisy = y * gain + rng.normal(0, 10 ** (-75 / 20), y.shape[0]).astype(np.float32)
    return np.array([content_features(w, recipe) for w in clip_windows(noisy, recipe, hop_frames)]).reshape(
        -1, len(FEATURE_NAMES))


def featurise(paths: list[Path], recipe: FeatureRecipe, hop_frames: int, rng: np.random.Generator,
              broadcast_share: float = 0.0, relay: bool = False) -> list[np.ndarray]:
    """Statistics of every window of each file (an empty array for a file libsndfile cannot
    read: music-corpus holds a few Theora-in-Ogg files)."""
    out = []
    for path in paths:
        try:
            audio = read_audio(path, recipe.sample_rate)
        except sf.LibsndfileError as exc:
            print(f"skipped {path}: {exc}")
            out.append(np.zeros((0, len(FEATURE_NAMES)), np.float32))
            continue
        out.append(windows_of(audio, recipe, hop_frames, rng, broadcast_share, relay))
    return out


def mixes(speech: list[Path], music: list[Path], recipe: FeatureRecipe, hop_frames: int,
          rng: np.random.Generator, count: int, broadcast_share: float = 0.0,
          relay: bool = False) -> list[np.ndarray]:
    """Real speech over a real music bed 6-15 dB down (by RMS), ``count`` pairs."""
    out = []
    while len(out) < count:
        try:
            talk = read_audio(speech[rng.integers(len(speech))], recipe.sample_rate)
            bed = read_audio(music[rng.integers(len(music))], recipe.sample_rate)
        except sf.LibsndfileError:
            continue
        n = min(len(talk), len(bed))
        talk, bed = talk[:n], bed[:n]
        bed_gain = np.sqrt(np.mean(talk**2) / max(np.mean(bed**2), 1e-12)) * 10 ** (-rng.uniform(6, 15) / 20)
        out.append(windows_of(talk + bed * np.float32(bed_gain), recipe, hop_frames, rng, broadcast_share, relay))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--genre-model", type=Path, default=Path("model/genre_cnn.onnx"))
    parser.add_argument("--out", type=Path, default=Path("model/content.json"))
    parser.add_argument("--report", type=Path, default=Path("model/report/content.json"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hidden", type=int, default=64,
                        help="units of the MLP's hidden layer; 0 = multinomial logistic regression")
    parser.add_argument("--broadcast-share", type=float, default=0.5,
                        help="share of training files first band-limited and mp3 round-tripped (see broadcast())")
    args = parser.parse_args()
    started = time.time()
    spec = load_spec(args.genre_model)
    recipe, hop_frames = spec.recipe, spec.hop_frames
    rng = np.random.default_rng(args.seed)
    lists = file_lists(args.data)
    feats = {name: featurise(paths, recipe, hop_frames, rng, args.broadcast_share if name.startswith("train") else 0.0)
             for name, paths in lists.items()}
    feats["train_mixed"] = mixes(lists["train_speech"], lists["train_music"], recipe, hop_frames, rng, 150,
                                 args.broadcast_share)
    feats["test_mixed"] = mixes(lists["test_speech"], lists["test_music"], recipe, hop_frames, rng, 40)
    # The same held-out files and pairs through the relay's chain, from their own generator so the
    # clean figures above stay comparable with earlier runs.
    relay_rng = np.random.default_rng(args.seed + 1)
    for kind in ("speech", "music"):
        feats[f"relay_{kind}"] = featurise(lists[f"test_{kind}"], recipe, hop_frames, relay_rng, relay=True)
    feats["relay_mixed"] = mixes(lists["test_speech"], lists["test_music"], recipe, hop_frames, relay_rng, 40,
                                 relay=True)
    gtzan_test = args.data / "gtzan-mini"
    mini_test = [gtzan_test / line for line in (gtzan_test / "splits" / "mini_test.txt").read_text().split()]
    feats["mini_test"] = featurise(mini_test, recipe, hop_frames, rng)

    x = np.concatenate([np.concatenate(feats[f"train_{c}"]) for c in MODEL_CLASSES])
    y = np.concatenate([np.full(sum(len(f) for f in feats[f"train_{c}"]), i) for i, c in enumerate(MODEL_CLASSES)])
    # Balanced: music windows outnumber speech several times, and a missed talk segment costs
    # as much as a false one.
    scaler = StandardScaler().fit(x)
    if args.hidden:
        # MLPClassifier has no class weights: repeat the rarer classes' windows instead.
        counts = np.bincount(y)
        repeat = np.round(counts.max() / counts[y]).astype(int)
        clf = MLPClassifier((args.hidden,), alpha=1e-2, max_iter=500, random_state=args.seed).fit(
            np.repeat(scaler.transform(x), repeat, axis=0), np.repeat(y, repeat))
        layers = [{"weights": w.tolist(), "bias": b.tolist()} for w, b in zip(clf.coefs_, clf.intercepts_, strict=True)]
    else:
        clf = LogisticRegression(C=1.0, max_iter=2000, class_weight="balanced").fit(scaler.transform(x), y)
        layers = [{"weights": clf.coef_.T.tolist(), "bias": clf.intercept_.tolist()}]

    def predict(parts: list[np.ndarray]) -> np.ndarray:
        return clf.predict(scaler.transform(np.concatenate(parts))) if parts else np.zeros(0, int)

    report: dict[str, object] = {"train_windows": {c: int((y == i).sum()) for i, c in enumerate(MODEL_CLASSES)},
                                 "train_files": {k: len(v) for k, v in lists.items() if k.startswith("train")},
                                 "test_files": {k: len(v) for k, v in lists.items() if k.startswith("test")}}
    for prefix, name in (("test", "held_out"), ("relay", "held_out_relay")):
        for i, c in enumerate(MODEL_CLASSES):
            predicted = predict(feats[f"{prefix}_{c}"])
            report[f"{name}_{c}"] = {"windows": len(predicted), "accuracy": round(float(np.mean(predicted == i)), 4),
                                     "as": {k: int((predicted == j).sum()) for j, k in enumerate(MODEL_CLASSES)}}
    # Held out by package (and so by language for speech): accuracy of each, so one easy package
    # cannot hide a hard one.
    for kind, index in (("speech", 1), ("music", 0)):
        by_package: dict[str, list[int]] = {}
        for path, part in zip(lists[f"test_{kind}"], feats[f"test_{kind}"], strict=True):
            if len(part):
                by_package.setdefault(package_of(path, args.data), []).extend(predict([part]).tolist())
        report[f"held_out_{kind}_by_package"] = {
            name: {"windows": len(v), "accuracy": round(v.count(index) / len(v), 4)}
            for name, v in sorted(by_package.items())}
    for prefix, name in (("test", "librispeech_examples"), ("relay", "librispeech_examples_relay")):
        libri = predict(feats[f"{prefix}_speech"][-3:])
        report[name] = {"windows": len(libri), "speech": int((libri == 1).sum()), "mixed": int((libri == 2).sum())}
    genres = [p.parent.name for p in mini_test]
    per_genre: dict[str, list[int]] = {}
    for genre, part in zip(genres, feats["mini_test"], strict=True):
        if len(part):
            per_genre.setdefault(genre, []).extend(predict([part]).tolist())
    report["gtzan_mini_test_false_speech"] = {
        g: {"windows": len(v), "speech": v.count(1), "mixed": v.count(2)} for g, v in sorted(per_genre.items())}
    report["seconds"] = round(time.time() - started, 1)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "version": f"content-{'mlp' if args.hidden else 'logreg'}-{time.strftime('%Y%m%d')}",
        "classes": list(MODEL_CLASSES), "feature_names": list(FEATURE_NAMES),
        "mean": scaler.mean_.tolist(), "scale": scaler.scale_.tolist(),
        "layers": layers, "architecture": f"MLP 42-{args.hidden}-3" if args.hidden else "logistic regression",
        "features": recipe.to_dict(),
        "trained_on": "speech/ (held-out packages excluded), free-music/ (every 4th package held out), "
                      "music-corpus/ and gtzan-mini mini_train (GTZAN numbers ending 0-4 only), mixes of those; "
                      f"{args.broadcast_share:.0%} of files band-limited and mp3 round-tripped; "
                      "see training/content.py",
    }, indent=1) + "\n")
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
