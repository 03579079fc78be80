"""What the content state costs per window, next to the genre model it rides along with.

    python -m training.content_cost [--genre-model model/genre_cnn.onnx] [--repeat 5]

Both on the same real windows (the first 60 s of the music and speech examples): the genre
model as the daemon runs it (batches of ``max_batch`` = 16, one onnxruntime thread) and the
content model on the same batches as the daemon runs it (:meth:`ContentModel.classify_bands` on
the band power its framer keeps), and from the model inputs as training and the offline tools do
(:meth:`ContentModel.classify_batch`, which first undoes the log of every bin). Process CPU time,
best of ``--repeat``; prints JSON.
The ratio, not the absolute figure, is what transfers to another host.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from streamgenre.config import SHIPPED_CONTENT_MODEL
from streamgenre.model.content import ContentModel
from streamgenre.model.contract import GenreModel
from streamgenre.model.features import resample, to_mono
from streamgenre.stream.framing import Framer

EXAMPLES = ("macleod_vibe_ace.ogg", "librispeech_3436-172162-0000.ogg", "hobbs_lets_go_fishin.ogg")


def best_cpu_s(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.process_time()
        fn()
        times.append(time.process_time() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--genre-model", type=Path, default=Path("model/genre_cnn.onnx"))
    parser.add_argument("--content-model", type=Path, default=SHIPPED_CONTENT_MODEL)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)  # as the daemon runs (one BLAS thread per worker)
    genre = GenreModel(args.genre_model, threads=1)
    content = ContentModel(args.content_model, silence_dbfs=-55.0)
    content.check_recipe(genre.recipe)
    windows = []
    rate = genre.recipe.sample_rate
    for name in EXAMPLES:
        data, file_rate = sf.read(args.data / "examples" / name, dtype="float32", always_2d=True, frames=60 * 48000)
        windows += Framer(genre.recipe, genre.spec.hop_frames).frame_clip(resample(to_mono(data), file_rate, rate),
                                                                           rate, name)
    batch = np.stack([w.logmel for w in windows])
    bands = np.stack([w.band_power for w in windows])
    gains = np.array([w.level_gain_db for w in windows])
    starts = range(0, len(batch), 16)
    genre_s = best_cpu_s(lambda: [genre.predict(batch[i : i + 16]) for i in starts], args.repeat)
    content_s = best_cpu_s(lambda: [content.classify_bands(bands[i : i + 16], genre.recipe) for i in starts],
                           args.repeat)
    inputs_s = best_cpu_s(lambda: [content.classify_batch(batch[i : i + 16], genre.recipe, gains[i : i + 16])
                                   for i in starts], args.repeat)
    print(json.dumps({
        "windows": len(batch), "genre_model": genre.version, "content_model": content.version,
        "genre_ms_per_window": round(1000 * genre_s / len(batch), 3),
        "content_ms_per_window": round(1000 * content_s / len(batch), 3),
        "content_over_genre": round(content_s / genre_s, 4),
        "content_ms_per_window_from_model_inputs": round(1000 * inputs_s / len(batch), 3),
        "host": platform.processor() or platform.machine(),
    }, indent=1))


if __name__ == "__main__":
    main()
