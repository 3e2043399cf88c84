"""Process-level settings that make CPU training and scoring fast and lean: threads and memory.

Threads: one torch thread per usable core, split between the processes of a run. The usable cores are
the process's CPU affinity (what a container or `taskset` grants), not the host's core count.

Memory: glibc keeps freed memory in its heap and returns little of it to the system. Loading an
base frees the full-precision copies it converted or quantised; `release_memory()` after loading
(gc + malloc_trim) hands that heap back (SmolLM2-135M: 43 MiB at fp32, 96 at 8-bit, 149 at 4-bit in
experiments/bench_memory.py), so the loaded model's RSS is close to its weights' size. It cannot lower
a later training peak, which would have reused that heap anyway.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os


def usable_cores() -> int:
    """Cores this process may run on (CPU affinity), or os.cpu_count() where affinity is unknown."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_threads(num_processes: int = 1) -> int:
    """Torch threads per process: usable cores divided between the processes, at least 1."""
    return max(1, usable_cores() // max(1, num_processes))


def _libc():
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name) if name else None
    except OSError:
        return None


def release_memory() -> bool:
    """Collect garbage and hand freed heap memory back to the OS (glibc malloc_trim). True if trimmed."""
    gc.collect()
    libc = _libc()
    if libc is None or not hasattr(libc, "malloc_trim"):
        return False  # not glibc (e.g. macOS, musl): nothing to trim
    return bool(libc.malloc_trim(0))
