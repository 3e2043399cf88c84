"""Process-level settings that make CPU training and scoring fast and lean: threads and memory.

Threads: one torch thread per usable core, split between the processes of a run. The usable cores are
the process's CPU affinity (what a container or `taskset` grants), not the host's core count.

Memory: glibc keeps freed memory in its heap and returns little of it to the system. Loading an
8-bit base frees full-precision copies of every quantised weight; `release_memory()` after loading
(gc + malloc_trim) hands about 260 MiB of them back, so a loaded 8-bit SmolLM2-135M sits at its
weights' size above the import floor instead of twice that. It cannot lower a later training peak,
which reuses that heap anyway (experiments/bench_memory.py measures both).
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
