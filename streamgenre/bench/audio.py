"""Synthetic audio of the simulated streams: a few distinct signals shared round-robin.

The content does not change the cost of decoding, framing or inference, so tones + noise stand
in for music; each voice is seeded, so every run feeds the same samples.
"""

from __future__ import annotations

import numpy as np

INPUT_RATE = 22050
N_VOICES = 8  # distinct signals shared round-robin by the simulated streams
VOICE_S = 12.0

def voice(index: int, seconds: float = VOICE_S, rate: int = INPUT_RATE) -> np.ndarray:
    """A few seconds of tones + noise (mono float32); content does not change the cost."""
    rng = np.random.default_rng(index)
    t = np.arange(int(seconds * rate)) / rate
    y = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 1000) * t) + 0.1 * rng.normal(size=t.size)
    y += 0.1 * np.sin(2 * np.pi * rng.uniform(1000, 4000) * t)
    return np.clip(y, -1, 1).astype(np.float32)
