"""Large arrays read in bounded memory: row blocks of about a given size, and dropping the pages
a memory-mapped array has touched (they stay in the shared page cache)."""

from __future__ import annotations

import mmap
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, TypeAlias

import numpy as np

BLOCK_BYTES = 64 << 20  # large arrays are written, merged and checked in row blocks of about this size


def row_blocks(array: LargeArray, block_bytes: int = BLOCK_BYTES) -> Iterator[tuple[int, int]]:
    """(start, stop) row ranges of about `block_bytes` each, covering `array`."""
    n = len(array)
    row = max(1, int(np.prod(array.shape[1:], dtype=np.int64)) * np.dtype(array.dtype).itemsize)
    step = max(1, block_bytes // row)
    for lo in range(0, n, step):
        yield lo, min(n, lo + step)


def nbytes(array: LargeArray) -> int:
    """Bytes of an array, a map or Blocks, from its shape and dtype."""
    return int(np.prod(array.shape, dtype=np.int64)) * np.dtype(array.dtype).itemsize


def release_pages(array: LargeArray) -> None:
    """Drop this process's mapping of a memory-mapped array's pages (they stay in the page cache,
    shared with every other reader). Bounds the resident memory of a reader that walks a large
    table; a no-op for arrays in memory. (A store's int8 logits map their parts from one file.)"""
    base: Any = array.parts[0] if hasattr(array, "parts") else array
    while base is not None and not isinstance(base, mmap.mmap):
        base = base.obj if isinstance(base, memoryview) else getattr(base, "base", None)
    if base is not None and hasattr(mmap, "MADV_DONTNEED"):
        base.madvise(mmap.MADV_DONTNEED)


@dataclass
class Blocks:
    """An (N, ...) array too large to hold, given as consecutive row blocks (written to teacher.h5
    one block at a time). `read()` starts a fresh pass."""

    shape: tuple[int, ...]
    dtype: np.dtype
    read: Callable[[], Iterable[np.ndarray]]

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        """All blocks in memory: for small arrays (tests, printing) only."""
        return np.concatenate(list(self.read())).astype(dtype or self.dtype, copy=False)


# A large (N, ...) array of a store: an np.ndarray (a read-only map, in an opened store) or Blocks
# (while a store is being written). Left to the reader's knowledge of which, not to mypy.
LargeArray: TypeAlias = Any
