"""Where the bench's processes run: all over the box (``shared``), or the daemon on a core of its own.

In a deployment the broker and the producers are other machines; on a 2-core box they take
1.0–1.55 cores before the daemon runs (docs/PERFORMANCE.md). The ``pinned`` layout gives the
daemon processes (and the ceiling and baseline, which stand for them) the last core of this
process's affinity and everything else — tansu, the simulated producer, this process and its
output consumer — the others, so that the daemon's figures are what one core of its own serves.
Pinning is by ``os.sched_setaffinity``, which children inherit: setting it on this thread
before a process or thread is started places that child.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

LAYOUTS = ("shared", "pinned")


@dataclass(frozen=True)
class Layout:
    mode: str = "shared"
    daemon_cpus: tuple[int, ...] = ()
    other_cpus: tuple[int, ...] = ()

    def describe(self) -> dict[str, Any]:
        return {"mode": self.mode, "daemon_cpus": list(self.daemon_cpus), "other_cpus": list(self.other_cpus)}


def make_layout(mode: str, daemon_cores: int = 1) -> Layout:
    """``shared`` (no pinning) or ``pinned``: the last ``daemon_cores`` CPUs for the daemon, the rest for the others."""
    if mode == "shared":
        return Layout()
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) <= daemon_cores:
        raise ValueError(f"layout pinned needs more than {daemon_cores} CPU(s); this process may use {cpus}")
    return Layout("pinned", tuple(cpus[-daemon_cores:]), tuple(cpus[:-daemon_cores]))


@contextlib.contextmanager
def pinned_to(cpus: tuple[int, ...]) -> Iterator[None]:
    """Run this thread, and what it starts meanwhile, on ``cpus`` (nothing when empty); restore after."""
    if not cpus:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def affinity(pid: int) -> list[int] | None:
    """The CPUs ``pid`` may run on (read back for the result file), or None if it is gone."""
    try:
        return sorted(os.sched_getaffinity(pid))
    except OSError:
        return None
