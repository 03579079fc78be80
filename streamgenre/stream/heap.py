"""Give the C heap's free memory back to the operating system.

Every chunk allocates numpy temporaries of 10-100 KB (the decoded samples, the STFT frames of a
step), below glibc's mmap threshold, so they come from the heap, between the long-lived buffers
of thousands of streams. Freed, they stay in the process as holes that glibc does not return by
itself: with 3,000 streams held the RSS was 403 KB per stream of which 72 KB were the streams'
buffers, and 140 KB after ``malloc_trim`` (``docs/PERFORMANCE.md``, memory at scale). The worker
calls :func:`release_free_heap` every ``HEAP_RELEASE_INTERVAL_S`` (10 s; see
:mod:`streamgenre.stream.daemon` for why not more often).
Lowering the mmap threshold instead (``MALLOC_MMAP_THRESHOLD_=65536``) gives the same RSS but
pays an mmap, page faults and an munmap for every such temporary.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None where the C library has none (musl, macOS)."""
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None


_TRIM = _malloc_trim()


def release_free_heap() -> bool:
    """Return free heap pages to the OS; False where the C library cannot."""
    return bool(_TRIM(0)) if _TRIM is not None else False
