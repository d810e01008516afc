"""The C allocator's settings for a long run of many same-sized tensors (glibc's malloc).

With glibc's defaults a CPU training step gives its memory back to the system and takes it again:
backward frees the step's activations (a few MB each), the free space at the top of the heap then
exceeds glibc's trim threshold (twice its dynamic mmap threshold, at most 64 MB) and is returned,
and the next step's first touch of every page is a page fault. Measured on the 2-core machine
(torch 2.14.1, 2 threads; `kdstore train --variant kd --epochs 2`, cifar_resnet8 at batch 128, 5,000
CIFAR-10 images, each run its own process; benchmarks/RESULTS.md, "The C allocator"): with glibc's
defaults 0.9-2.4 million minor page faults, 2.7-6.2 s of system time and 20.0-22.4 s of wall time;
with the settings below 0.50-0.83 million, 1.9-2.6 s and 19.3-19.6 s (medians 20.3 against 19.4 s:
1.047 times as fast), the metrics unchanged. The heap keeps at most TRIM_BYTES of free space.

`kdstore`'s commands call tune() first. It changes nothing where the user chose already (glibc's
MALLOC_*_ environment variables, or another allocator preloaded) and nothing outside glibc."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

# mallopt's parameter numbers (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

MMAP_BYTES = 32 << 20  # blocks above this are mapped on their own (glibc's largest accepted value)
TRIM_BYTES = 256 << 20  # free space kept at the heap's top before it is given back

# Where these are set, the user chose the allocator's behaviour: leave it
# (KDSTORE_SYSTEM_MALLOC=1: keep glibc's defaults, as benchmarks/allocator.py does for its comparison)
USER_CHOICES = (
    "MALLOC_TRIM_THRESHOLD_",
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TOP_PAD_",
    "GLIBC_TUNABLES",
    "KDSTORE_SYSTEM_MALLOC",
)


def tune() -> bool:
    """Set glibc malloc's mmap and trim thresholds (module docstring) for this process and the
    processes it forks. Returns whether they were set (False: not glibc, or the user chose)."""
    if not sys.platform.startswith("linux") or any(k in os.environ for k in USER_CHOICES):
        return False
    if any(name in os.environ.get("LD_PRELOAD", "") for name in ("jemalloc", "tcmalloc", "mimalloc")):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # the mmap threshold first: setting either fixes both (glibc stops adjusting them)
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_BYTES)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_BYTES))
