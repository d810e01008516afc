"""Rows of a store's large arrays gathered by position (and view) and returned on the device.

On CUDA a table that fits `DEVICE_TABLE_FRACTION` of the free device memory is uploaded once (in
the stored dtype) and gathered there; otherwise rows are read from the store file with pread
(file_rows.FileRows), so a process holds only the rows it gathers and every process on a machine
shares one copy of the file through the page cache."""

from __future__ import annotations

import numpy as np
import psutil
import torch

from kdstore.method.int8 import dequantize
from kdstore.runtime.blocks import LargeArray, nbytes, release_pages, row_blocks
from kdstore.runtime.transfer import upload
from kdstore.store.file_rows import file_rows
from kdstore.store.quantized import Quantized

DEVICE_TABLE_FRACTION = 0.25  # of free CUDA memory: a teacher table up to this size lives on the device
PLACEMENTS = ("auto", "device", "mapped")
PREFETCH_FRACTION = 0.5  # of available memory: a table up to this size is read into the page cache ahead
SCALES_IN_MEMORY = 256 * 2**20  # int8 logits: scales and offsets up to this size (each) are read into memory


class Rows:
    """Rows of a large (N, ...) or (N, K, ...) store array, gathered by position (and view) and
    returned on `device`.

    placement `auto`: on the device when the table fits (CUDA only), else `mapped`: read on the
    host from the store file with pread (file_rows.FileRows; measured faster than gathering from the
    memory map, and the process's resident memory does not grow with the rows read), then pinned
    and copied asynchronously on CUDA. Both give the same values in the stored dtype (int8
    logits: their float32 values, dequantised on the device after the gather)."""

    def __init__(self, array: LargeArray, device: torch.device, placement: str = "auto") -> None:
        if placement not in PLACEMENTS:
            raise ValueError(f"placement must be one of {PLACEMENTS}, got {placement!r}")
        self.array, self.device = array, device
        # int8 logits: codes, scales and offsets gathered alike, dequantised on the device (C + 8 bytes a row)
        self.parts: list[Rows] | None = (
            [Rows(p, device, placement) for p in _held(array.parts)] if isinstance(array, Quantized) else None
        )
        if self.parts is not None:
            placement = str(self.parts[0].placement)
        elif placement == "auto":
            placement = (
                "device"
                if device.type == "cuda" and array.nbytes <= DEVICE_TABLE_FRACTION * torch.cuda.mem_get_info(device)[0]
                else "mapped"
            )
        self.placement: str = placement
        self.table = _upload(array, device) if placement == "device" and self.parts is None else None
        self.file = file_rows(array) if self.table is None else None
        if self.file is not None and array.nbytes < PREFETCH_FRACTION * psutil.virtual_memory().available:
            self.file.prefetch(array.nbytes)  # the epoch reads every row: have the kernel load them ahead

    def __call__(self, *index: np.ndarray | None) -> torch.Tensor:
        if self.parts is not None:
            return dequantize(*(part(*index) for part in self.parts))
        if self.table is not None:
            return self.table[
                tuple(upload(torch.from_numpy(np.asarray(i, dtype=np.int64)), self.device) for i in index)
            ]
        if self.file is not None:
            flat = np.asarray(index[0], dtype=np.int64)
            for i, axis in zip(index[1:], self.array.shape[1:]):
                flat = flat * axis + np.asarray(i, dtype=np.int64)
            rows = torch.from_numpy(self.file.read(flat, self.array.shape[len(index) :]))
        else:
            rows = torch.from_numpy(self.array[tuple(index)])  # an array in memory: a gather copies
        return upload(rows, self.device)


def _held(parts: tuple[LargeArray, ...]) -> list[LargeArray]:
    """int8 logits' codes, scales and offsets, the scales and offsets read into memory when they
    are small (4 bytes a row each: 5 MB for ImageNet's 1.28M rows), so that a row is one pread
    of its codes, not three preads."""
    codes, *small = parts
    return [codes, *(_in_memory(p) if nbytes(p) <= SCALES_IN_MEMORY else p for p in small)]


def _in_memory(array: LargeArray) -> np.ndarray:
    """A copy in this process's memory (the mapped pages it read are dropped: they stay in the page cache)."""
    copy = np.array(array)
    release_pages(array)
    return copy


def _upload(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """The whole array on the device in its stored dtype, copied block by block (runtime.blocks.row_blocks;
    bounded host memory)."""
    table = torch.empty(array.shape, dtype=torch.from_numpy(np.empty(0, array.dtype)).dtype, device=device)
    for lo, hi in row_blocks(array):
        table[lo:hi] = torch.from_numpy(np.array(array[lo:hi])).to(device)
        release_pages(array)
    return table
