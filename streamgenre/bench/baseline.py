"""The paper-style baseline: per window, librosa's mel spectrogram of the whole window + batch-1 inference."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from streamgenre.bench.audio import INPUT_RATE, voice


def measure_baseline(model_path: Path, seconds: float = 5.0) -> dict[str, Any]:
    """Per window: resample (if needed) + ``librosa.feature.melspectrogram`` + LOG + batch-1 inference."""
    import librosa

    from streamgenre.model.contract import GenreModel
    from streamgenre.model.features import reference_window
    from streamgenre.stream.daemon import limit_native_threads

    limit_native_threads()  # a fair baseline: the same BLAS setting as ours
    model = GenreModel(model_path, threads=1)
    r = model.recipe
    hop_s = model.spec.hop_frames * r.hop_length / r.sample_rate
    in_len = int(np.ceil(r.window_samples * INPUT_RATE / r.sample_rate)) + 64
    y_in = voice(0)[:in_len]

    def one() -> None:
        y = (
            y_in
            if r.sample_rate == INPUT_RATE
            else librosa.resample(y_in, orig_sr=INPUT_RATE, target_sr=r.sample_rate, res_type="soxr_hq")
        )
        y = y[: r.window_samples]
        model.predict(reference_window(y, r)[None, None])

    one()
    n, started, cpu0 = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - started < seconds:
        one()
        n += 1
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu0
    # A live stream needs one window per hop of audio: windows/s x hop_s = audio-seconds/s.
    return {
        "windows": n,
        "windows_per_s": round(n / wall, 1),
        "windows_per_cpu_s": round(n / cpu, 1),
        "hop_s": round(hop_s, 4),
        "audio_s_per_s_per_core": round(n / cpu * hop_s, 1),
    }
