"""int8 logits (`cache --logits-dtype int8`): each row of C logits (a sample's, or a view's) is
kept as C int8 codes and a float32 scale and offset per row, z ~ code * scale + offset.

The codes span the row from its max down to max(min, max - CLIP_RANGE) in 255 equal steps: the
max is kept (to float32 rounding), every logit within CLIP_RANGE of it is off by at most half a
step, scale / 2 <= CLIP_RANGE / 510 = 0.125, and a logit further below is raised to max -
CLIP_RANGE, where its softmax weight is below e^-64 of the max's at tau = 1 and e^-16 (1e-7)
at tau = 4. So softmax(z / tau) at any tau >= 1 is kept as closely as 8 uniform steps allow: the
error shrinks with tau (KL ~ scale^2 / (24 tau^2)); benchmarks/RESULTS.md measures it. Rows are
quantised one by one (a row's codes depend on that row only), so a store extended with
--extend quantises its new views as a fresh cache would.

A constant row has scale 0 and every code -128 (offset = the value); ties stay ties. A row with
NaN or +inf gets a NaN scale, which `verify` (and every writer's final check) refuses."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

CLIP_RANGE = 64.0  # logits more than this below their row's max are stored as max - CLIP_RANGE
STEPS = 255  # int8 codes -128..127


def quantize(z: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows (..., C) of logits -> int8 codes (..., C), float32 scale (...) and offset (...)."""
    z = np.asarray(z, dtype=np.float32)
    with np.errstate(invalid="ignore"):
        hi = z.max(-1)
        lo = np.maximum(z.min(-1), hi - np.float32(CLIP_RANGE))
        scale = ((hi - lo) / np.float32(STEPS)).astype(np.float32)
        step = np.where(scale > 0, scale, np.float32(1.0))
        codes = np.rint((np.clip(z, lo[..., None], hi[..., None]) - lo[..., None]) / step[..., None])
        codes = np.nan_to_num(codes, nan=0.0) - 128
    offset = (lo + np.float32(128) * scale).astype(np.float32)
    return codes.astype(np.int8), scale, offset


def dequantize(codes: Any, scale: Any, offset: Any) -> Any:
    """float32 logits (..., C) from codes (..., C), scale (...) and offset (...): numpy arrays or
    torch tensors (one multiply, then one add, in float32: the same bits on either, on any device)."""
    if isinstance(codes, torch.Tensor):
        return codes.float() * scale.float().unsqueeze(-1) + offset.float().unsqueeze(-1)
    return (
        codes.astype(np.float32) * np.asarray(scale, np.float32)[..., None] + np.asarray(offset, np.float32)[..., None]
    )
