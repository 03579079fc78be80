"""Micro-batching of windows across streams, with a deadline (pure).

onnxruntime's cost per window falls steeply with batch size (fixed per-call overhead, better
use of SIMD), but a live window must not wait long for company. A batch is therefore run when
it is full (``max_batch``) or when its oldest window has waited ``max_wait_ms``, whichever
comes first.
"""

from __future__ import annotations

from streamgenre.stream.streamstate import Window


class MicroBatcher:
    """Collects complete windows of all streams until a batch is full or due."""

    def __init__(self, max_batch: int, max_wait_ms: float) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000.0
        self._pending: list[Window] = []
        self._added_at: list[float] = []

    def add(self, window: Window, now: float) -> None:
        self._pending.append(window)
        self._added_at.append(now)

    def __len__(self) -> int:
        return len(self._pending)

    def due(self, now: float) -> bool:
        return len(self._pending) >= self.max_batch or (
            bool(self._pending) and now - self._added_at[0] >= self.max_wait_s
        )

    def seconds_until_due(self, now: float) -> float | None:
        """How long the caller may block waiting for input; None when nothing is pending."""
        if not self._pending:
            return None
        if len(self._pending) >= self.max_batch:
            return 0.0
        return max(0.0, self._added_at[0] + self.max_wait_s - now)

    def take(self) -> list[Window]:
        """Remove and return up to ``max_batch`` windows, oldest first.

        Windows left behind keep the time they were added: their deadline does not move
        because an earlier batch ran.
        """
        batch = self._pending[: self.max_batch]
        del self._pending[: self.max_batch], self._added_at[: self.max_batch]
        return batch
