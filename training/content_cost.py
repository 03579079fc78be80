"""What the content state costs per window, next to the genre model it rides along with.

    python -m training.content_cost [--genre-model model/genre_cnn.onnx] [--repeat 5]

Both on the same real windows (the first 60 s of the music and speech examples): the genre
model as the daemon runs it (batches of ``max_batch`` = 16, one onnxruntime thread) and
:meth:`ContentModel.classify_batch` on the same batches, as the daemon runs it (and one window
at a time, for comparison). Process CPU time, best of ``--repeat``; prints JSON.
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
from streamgenre.model.features import clip_windows, resample, to_mono

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
    for name in EXAMPLES:
        data, rate = sf.read(args.data / "examples" / name, dtype="float32", always_2d=True, frames=60 * 48000)
        windows.append(clip_windows(resample(to_mono(data), rate, genre.recipe.sample_rate), genre.recipe,
                                    genre.spec.hop_frames))
    batch = np.concatenate(windows)
    genre_s = best_cpu_s(lambda: [genre.predict(batch[i : i + 16]) for i in range(0, len(batch), 16)], args.repeat)
    content_s = best_cpu_s(lambda: [content.classify_batch(batch[i : i + 16], genre.recipe)
                                     for i in range(0, len(batch), 16)], args.repeat)
    single_s = best_cpu_s(lambda: [content.classify(w, genre.recipe) for w in batch], args.repeat)
    print(json.dumps({
        "windows": len(batch), "genre_model": genre.version, "content_model": content.version,
        "genre_ms_per_window": round(1000 * genre_s / len(batch), 3),
        "content_ms_per_window": round(1000 * content_s / len(batch), 3),
        "content_over_genre": round(content_s / genre_s, 4),
        "content_ms_per_window_one_at_a_time": round(1000 * single_s / len(batch), 3),
        "host": platform.processor() or platform.machine(),
    }, indent=1))


if __name__ == "__main__":
    main()
