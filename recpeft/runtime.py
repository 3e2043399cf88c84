"""Process-level settings that make CPU training and scoring fast and lean: threads and memory.

Threads: one torch thread per usable core, split between the processes of a run. The usable cores are
the process's CPU affinity (what a container or `taskset` grants), not the host's core count.

Machine: `describe_machine()` names the CPU model (platform.processor() says only "x86_64" on Linux) and its
vector extensions, so a timing recorded on one host is never compared with one from another: these hosts
change between sessions (a 2-core AMD EPYC one day, an Intel Xeon at ~1.8x its speed the next), and one
model name covers both kinds: "AMD EPYC" with AVX-512 took ~330 s a DP step of ml100k_dp_large, "AMD EPYC"
with AVX2 only 545 s.

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
import platform


def usable_cores() -> int:
    """Cores this process may run on (CPU affinity), or os.cpu_count() where affinity is unknown."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_threads(num_processes: int = 1) -> int:
    """Torch threads per process: usable cores divided between the processes, at least 1."""
    return max(1, usable_cores() // max(1, num_processes))


# The extensions that decide which matmul kernels torch/oneDNN pick on x86, and so the speed
SPEED_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")


def cpu_model(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The CPU's model name and its SPEED_FLAGS (Linux: /proc/cpuinfo), e.g. "AMD EPYC [avx2]"; else what
    platform knows (e.g. "arm", "x86_64")."""
    fields: dict[str, str] = {}
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if value.strip():  # an empty "model name" does not hide a later one
                    fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    name = fields.get("model name") or platform.processor() or platform.machine() or "unknown"
    flags = [f for f in SPEED_FLAGS if f in fields.get("flags", "").split()]
    return f"{name} [{' '.join(flags)}]" if flags else name


def describe_machine() -> dict[str, object]:
    """What a results file records about the host: OS, CPU model and the cores this process may use."""
    return {"platform": platform.platform(), "processor": cpu_model(), "cpus": usable_cores()}


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
