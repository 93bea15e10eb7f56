"""Host memory: keep freed blocks in the process instead of handing them back to the kernel.

glibc serves an allocation above its mmap threshold (32 MB at most) with a fresh ``mmap`` and unmaps it on free, so
a network that runs chunk after chunk of regions on a CPU faults its activations in again, page by page and zeroed
by the kernel, for every chunk. With ``mmap`` off and the trim threshold raised, freed blocks stay in the heap and
the next chunk reuses them: on the 2-core VM of ``docs/benchmarks.md`` R-CNN and shared-feature scoring of 2,000
regions ran 1.36-1.46x faster, for a higher peak of resident memory.

Every ``gdet`` command and ``tools/`` script turns this on (:func:`gdet.cli.run_guarded`); the process keeps its
peak host memory until it exits. ``GDET_SYSTEM_MALLOC=1`` (any value but 0 or empty) keeps the C library's own
behaviour. A library user who wants the same calls :func:`keep_freed_memory` once.
"""
from __future__ import annotations

import ctypes
import os
import sys

_M_TRIM_THRESHOLD = -1   # glibc's mallopt parameters (malloc.h)
_M_MMAP_MAX = -4
_TRIM_THRESHOLD = 2**31 - 1  # free memory at the heap's top beyond 2 GB still goes back

_state: bool | None = None


def keep_freed_memory() -> bool:
    """Tell glibc's allocator to keep freed memory for reuse (no ``mmap`` for large blocks, heap trimmed only past
    2 GB). Returns whether it is in effect: False under ``GDET_SYSTEM_MALLOC=1``, off Linux, or with a C library
    that has no ``mallopt`` (musl's refuses). Idempotent; the first call decides."""
    global _state
    if _state is None:
        opted_out = os.environ.get("GDET_SYSTEM_MALLOC", "").strip() not in ("", "0")
        _state = False if opted_out or not sys.platform.startswith("linux") else _apply()
    return _state


def _apply() -> bool:
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # mallopt returns 1 on success; set the trim threshold only once mmap is off.
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))
