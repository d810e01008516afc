"""Large arrays read in bounded memory: row blocks of about a given size, and dropping the
pages a memory-mapped array has touched (they stay in the shared page cache); host tensors
moved between host and device without making the host wait."""
from __future__ import annotations

import mmap
from typing import Any, Callable, Iterator

import numpy as np
import torch

BLOCK_BYTES = 64 << 20  # large arrays are written, merged and checked in row blocks of about this size


def upload(host: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`host` on `device`: on CUDA through pinned memory (a host copy first, so the caller may
    reuse its buffer at once), so the copy is queued and the host does not wait for it; a tensor
    already there, or any tensor elsewhere, as it is."""
    if host.device.type != "cpu" or device.type != "cuda":
        return host.to(device)
    return host.pin_memory().to(device, non_blocking=True)


def download(tensors: dict[str, torch.Tensor]) -> Callable[[], dict[str, np.ndarray]]:
    """Start copying `tensors` to the host (on CUDA into pinned memory, without waiting); the
    function returned waits for the copies, once, and gives them as numpy arrays."""
    host = {k: v.to("cpu", non_blocking=True) for k, v in tensors.items()}
    on_cuda = any(v.is_cuda for v in tensors.values())
    done = torch.cuda.Event() if on_cuda else None
    if done is not None:
        done.record()

    def wait() -> dict[str, np.ndarray]:
        if done is not None:
            done.synchronize()
        return {k: v.numpy() for k, v in host.items()}

    return wait


def row_blocks(array: np.ndarray, block_bytes: int = BLOCK_BYTES) -> Iterator[tuple[int, int]]:
    """(start, stop) row ranges of about `block_bytes` each, covering `array`."""
    n = len(array)
    row = max(1, int(np.prod(array.shape[1:], dtype=np.int64)) * np.dtype(array.dtype).itemsize)
    step = max(1, block_bytes // row)
    for lo in range(0, n, step):
        yield lo, min(n, lo + step)


def release_pages(array: np.ndarray) -> None:
    """Drop this process's mapping of a memory-mapped array's pages (they stay in the page cache,
    shared with every other reader). Bounds the resident memory of a reader that walks a large
    table; a no-op for arrays in memory."""
    base: Any = array
    while base is not None and not isinstance(base, mmap.mmap):
        base = base.obj if isinstance(base, memoryview) else getattr(base, "base", None)
    if base is not None and hasattr(mmap, "MADV_DONTNEED"):
        base.madvise(mmap.MADV_DONTNEED)
