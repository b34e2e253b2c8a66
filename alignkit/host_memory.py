"""Keep memory freed on the host for reuse, instead of handing it back to the kernel.

A training step on the CPU frees and allocates the same buffers every step (gradients,
activations, the KV cache of sampling). glibc trims the free top of its heap back to the
kernel once more than a few MiB are free there, so every step page-faults the same memory
back in, and the kernel zeroes each page again: on the machines we measured, that was a
fifth of a GRPO step (benchmarks/README.md). Fixing glibc's mmap threshold at its maximum
(32 MiB on 64-bit) and never trimming the heap lets the next step reuse the previous step's
pages. Buffers above 32 MiB still get their own mapping and are returned when freed, as
before: serving those from the heap too would save more faults, but same-size aligned
buffers then fragment it, and the heap grows far past what the step holds at a time.

The process keeps the high-water mark of its heap until it exits, which a training process
reaches in its first steps anyway. The setting is process-wide and is applied once.
"""

from __future__ import annotations

import ctypes
import platform

# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_MAX = 32 * 2**20  # glibc's upper bound on 64-bit systems
TRIM_THRESHOLD_NEVER = 2**31 - 1  # INT_MAX: more than a step ever frees at the heap's top

_applied = False


def glibc_mallopt_available() -> bool:
    """True on Linux with glibc, whose `mallopt` these settings are for."""
    return platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def keep_freed_host_memory() -> bool:
    """Serve host allocations up to 32 MiB from glibc's heap and never trim it (`mallopt`).

    `M_MMAP_THRESHOLD = 32 MiB`: smaller allocations come from the heap (glibc's dynamic
    threshold would get there too, one freed buffer at a time); `M_TRIM_THRESHOLD =
    INT_MAX`: the heap's free top is kept. Returns whether the settings are in force: False
    where the C library is not glibc, or where glibc refused one.
    """
    global _applied
    if _applied:
        return True
    if not glibc_mallopt_available():
        return False
    libc = ctypes.CDLL(None)
    mallopt = libc.mallopt
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # mallopt returns 1 on success, 0 on error
    _applied = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_NEVER)
    )
    return _applied


__all__ = [
    "MMAP_THRESHOLD_MAX",
    "TRIM_THRESHOLD_NEVER",
    "glibc_mallopt_available",
    "keep_freed_host_memory",
]
