"""int8 logits in a store: a Quantized array (codes, scales and offsets, method/int8.py) that
reads as float32 logits, the datasets it is written as, and the checks `verify` runs on it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from kdstore.method.int8 import dequantize
from kdstore.runtime.blocks import LargeArray, nbytes, release_pages, row_blocks

SUFFIXES = ("", "_scale", "_offset")  # teacher.h5 datasets of one quantised array: NAME, NAME_scale, NAME_offset
QUANTIZED_DTYPES = ("int8", "float32", "float32")  # their dtypes
FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclass(frozen=True)
class Quantized:
    """A large array of int8 logits in a store: reads as float32 logits (`q[rows]` dequantises
    the rows it reads), written and gathered part by part (rows.Rows dequantises on the device
    after the gather). Its parts are memory maps in an opened store, Blocks in one being written."""

    codes: LargeArray  # (..., C) int8
    scale: LargeArray  # (...) float32
    offset: LargeArray  # (...) float32

    stored_dtype = "int8"
    dtype = np.dtype(np.float32)  # what a read returns

    @property
    def parts(self) -> tuple[LargeArray, LargeArray, LargeArray]:
        return self.codes, self.scale, self.offset

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.codes.shape)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def nbytes(self) -> int:
        """Bytes stored (codes, scales and offsets)."""
        return sum(nbytes(p) for p in self.parts)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: Any) -> np.ndarray:
        return dequantize(*(np.asarray(p[index]) for p in self.parts))

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        parts = [np.asarray(p) for p in self.parts]
        return dequantize(*parts).astype(dtype or np.float32, copy=False)


def stored_dtype(array: LargeArray) -> str:
    """How a store keeps a logits array: int8, float16 or float32."""
    return str(getattr(array, "stored_dtype", None) or np.dtype(array.dtype).name)


def problems(array: LargeArray, name: str) -> list[str]:
    """What is wrong with a quantised array's scales and offsets (none for other arrays): their
    shapes, and their values (finite, scales >= 0, and codes * scale + offset within float32's
    range), read block by block. They are a few bytes per row, so every open checks them: a NaN
    or negative scale would train on NaN losses or on nonsense."""
    if not isinstance(array, Quantized):
        return []
    rows = array.shape[:-1]
    if array.scale.shape != rows or array.offset.shape != rows:
        return [
            f"{name}_scale and {name}_offset have shapes {array.scale.shape}, {array.offset.shape}, expected {rows}"
        ]
    for lo, hi in row_blocks(array.scale):
        scale = np.asarray(array.scale[lo:hi], dtype=np.float64)
        offset = np.asarray(array.offset[lo:hi], dtype=np.float64)
        release_pages(array.scale)
        release_pages(array.offset)
        with np.errstate(invalid="ignore", over="ignore"):
            reach = np.abs(offset) + 128 * scale  # the largest |logit| a row's codes can read as
            fine = np.isfinite(reach) & (scale >= 0) & (reach <= FLOAT32_MAX)
        if not fine.all():
            return [f"{name}_scale or {name}_offset hold NaN, inf or negative scales (int8 logits cannot be read)"]
    return []
