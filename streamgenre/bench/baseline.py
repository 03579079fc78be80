"""The paper-style baseline: per window, librosa's mel spectrogram of the whole window + batch-1 inference."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from streamgenre.bench.audio import INPUT_RATE, voice
from streamgenre.model.contract import time_calls


def measure_baseline(model_path: Path, seconds: float = 5.0, max_batch: int = 16) -> dict[str, Any]:
    """Per window: resample (if needed) + ``librosa.feature.melspectrogram`` + LOG + batch-1 inference.

    Also the *bound* on ours / baseline, timed in the same process right after: whatever a
    streaming pipeline saves, it still runs the model once per window (at ``max_batch``) and the
    spectral pass (FFT + mel) on the hop's new frames. ``bound_audio_s_per_cpu_s`` is what those
    two alone would allow; the gap between it and the ceiling is the rest of our per-window work.
    """
    import librosa

    from streamgenre.model.contract import GenreModel
    from streamgenre.model.features import SPECTRAL_BLOCK_ROWS, frame_signal, frames_to_mel, reference_window
    from streamgenre.stream.daemon import limit_native_threads

    limit_native_threads()  # a fair baseline: the same BLAS setting as ours
    model = GenreModel(model_path, threads=1)
    r = model.recipe
    hop_s = model.spec.hop_seconds
    in_len = int(np.ceil(r.window_samples * INPUT_RATE / r.sample_rate)) + 64
    y_in = voice(0)[:in_len]

    def window_input() -> np.ndarray:
        y = (
            y_in
            if r.sample_rate == INPUT_RATE
            else librosa.resample(y_in, orig_sr=INPUT_RATE, target_sr=r.sample_rate, res_type="soxr_hq")
        )
        return reference_window(y[: r.window_samples], r)

    def one() -> None:
        model.predict(window_input()[None, None])

    rate = time_calls(one, seconds)
    n, wall, cpu = rate.calls, rate.wall_s, rate.cpu_s
    # The bound: model per window at its batch size + the spectral pass of hop_frames new frames,
    # the latter in the daemon's block size.
    batch = np.repeat(window_input()[None, None], max_batch, axis=0)
    model_cpu_per_window = _cpu_per_call(lambda: model.predict(batch), seconds / 2) / max_batch
    frames = frame_signal(voice(1, seconds=4.0, rate=r.sample_rate), r)[:SPECTRAL_BLOCK_ROWS]
    fft_cpu_per_frame = _cpu_per_call(lambda: frames_to_mel([frames], r), seconds / 2) / len(frames)
    bound_cpu_per_window = model_cpu_per_window + model.spec.hop_frames * fft_cpu_per_frame
    # A live stream needs one window per hop of audio: windows/s x hop_s = audio-seconds/s.
    return {
        "windows": n,
        "windows_per_s": round(n / wall, 1),
        "windows_per_cpu_s": round(n / cpu, 1),
        "hop_s": round(hop_s, 4),
        "audio_s_per_s_per_core": round(n / cpu * hop_s, 1),
        "bound_model_cpu_ms_per_window": round(1000 * model_cpu_per_window, 3),
        "bound_new_frames_fft_cpu_ms_per_window": round(1000 * model.spec.hop_frames * fft_cpu_per_frame, 3),
        "bound_audio_s_per_cpu_s": round(hop_s / bound_cpu_per_window, 1),
    }


def _cpu_per_call(call: Callable[[], object], seconds: float) -> float:
    """CPU-seconds per call of ``call``, repeated for at least ``seconds`` of wall time (after one untimed call)."""
    rate = time_calls(call, seconds)
    return rate.cpu_s / rate.calls
