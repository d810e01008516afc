"""Batched image preparation on tensors: the standard CIFAR augmentation and normalisation.

Augmentation is one tensor operation per batch (no Python loop per sample), with its random
parameters drawn from an explicit generator, so a run is reproducible and resumable.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def crop_flip_params(n: int, pad: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Offsets dx, dy in [0, 2*pad] and a flip bit per sample, each (n,) int64 on the CPU."""
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    flip = torch.randint(0, 2, (n,), generator=generator)
    return dx, dy, flip


def crop_flip(x: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor, flip: torch.Tensor, pad: int) -> torch.Tensor:
    """Random crop with zero padding `pad`, then horizontal flip, with the given parameters.

    x: (B, C, H, W); dx, dy: (B,) offsets into the padded image; flip: (B,) 0/1. -> (B, C, H, W).
    """
    b, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))  # (B, C, H+2p, W+2p)
    dev = x.device
    rows = dy.to(dev)[:, None] + torch.arange(h, device=dev)  # (B, H)
    cols = dx.to(dev)[:, None] + torch.arange(w, device=dev)  # (B, W)
    cols = torch.where(flip.to(dev)[:, None].bool(), cols.flip(1), cols)  # a flip reverses the columns
    bidx = torch.arange(b, device=dev)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[bidx, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous()


def normalize(x_uint8_nhwc: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float32, (x/255 - mean) / std; mean, std: (3,)."""
    x = x_uint8_nhwc.permute(0, 3, 1, 2).float().div_(255.0)
    return (x - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize of (B, C, H, W) to (B, C, size, size); a no-op at the same size."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=x.shape[-1] > size)
