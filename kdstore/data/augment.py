"""Batched image preparation on tensors: augmentation and normalisation.

Augmentation is one tensor operation per batch (no Python loop per sample). It is split into
drawing parameters (from an explicit generator, so a run is reproducible and resumable) and
applying given parameters, so that a store can record the parameters of the views its teacher
scored and a student can replay exactly those views (`cache --views K`).
AUGMENTATIONS (chosen by image size, `augmentation_for`):

    crop-flip           images up to 64 px: zero-pad 4 px, crop back at offsets dx, dy in
                        [0, 8], flip. Parameters per view: (dx, dy, flip).
    resized-crop-flip   larger images: a RandomResizedCrop box (scale 0.08-1, aspect 3/4-4/3,
                        as torchvision draws it) resized back to the image size, flip.
                        Parameters per view: (x0, y0, w, h, flip) in pixels."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

PAD = 4  # crop-flip padding in pixels (the standard CIFAR augmentation)
SMALL_MAX = 64  # images up to this size use crop-flip
RRC_SCALE = (0.08, 1.0)
RRC_RATIO = (3.0 / 4.0, 4.0 / 3.0)
RRC_ATTEMPTS = 10


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
    # (B, H, W, C) in memory: channels_last, the layout the model takes (precision.device_layout), no copy
    return padded.permute(0, 2, 3, 1)[bidx, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def resized_crop_params(n: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """RandomResizedCrop boxes as torchvision defines them, drawn for n samples at once:
    up to 10 tries of (area fraction in RRC_SCALE, log-uniform aspect in RRC_RATIO), the first
    box that fits; the whole image when none does. -> (n, 4) int64 (x0, y0, w, h)."""
    area = float(size * size)
    scale = torch.empty(n, RRC_ATTEMPTS).uniform_(*RRC_SCALE, generator=generator) * area
    log_ratio = torch.empty(n, RRC_ATTEMPTS).uniform_(
        math.log(RRC_RATIO[0]), math.log(RRC_RATIO[1]), generator=generator
    )
    ratio = torch.exp(log_ratio)
    w = torch.sqrt(scale * ratio).round().long()
    h = torch.sqrt(scale / ratio).round().long()
    ok = (w > 0) & (h > 0) & (w <= size) & (h <= size)
    first = torch.where(ok.any(1), ok.float().argmax(1), torch.full((n,), -1))
    rows = torch.arange(n)
    pick = first.clamp(min=0)
    w = torch.where(first >= 0, w[rows, pick], torch.full((n,), size))
    h = torch.where(first >= 0, h[rows, pick], torch.full((n,), size))
    u = torch.rand(n, 2, generator=generator)
    x0 = (u[:, 0] * (size - w + 1)).floor().long().clamp(max=size - 1)
    y0 = (u[:, 1] * (size - h + 1)).floor().long().clamp(max=size - 1)
    return torch.stack([x0, y0, w, h], 1)


def resized_crop_flip(x: torch.Tensor, boxes: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Crop each box (x0, y0, w, h) and resize it back to (H, W) with torchvision's roi_align
    (bilinear, one sample per output pixel centre: a box never exceeds the image, so this only
    enlarges), then flip. x: (B, C, H, W) -> (B, C, H, W)."""
    from torchvision.ops import roi_align

    b, c, h, w = x.shape
    boxes = boxes.to(x.device, torch.float32)
    rois = torch.cat(
        [torch.arange(b, device=x.device, dtype=torch.float32)[:, None], boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], 1
    )
    out = roi_align(x, rois, output_size=(h, w), spatial_scale=1.0, sampling_ratio=1, aligned=True)
    return torch.where(flip.to(x.device).bool()[:, None, None, None], out.flip(3), out)


@dataclass(frozen=True)
class Augmentation:
    """A batched augmentation as parameters: draw(n, size, generator) -> (n, P) int64, and
    apply(x (B, C, H, W), params (B, P)) -> (B, C, H, W)."""

    n_params: int
    draw: Callable[[int, int, torch.Generator], torch.Tensor]
    apply: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    valid: Callable[[np.ndarray, int], bool]  # (params (..., P), image size) -> all inside the image


AUGMENTATIONS: dict[str, Augmentation] = {
    "crop-flip": Augmentation(
        3,
        lambda n, size, g: torch.stack(crop_flip_params(n, PAD, g), 1),
        lambda x, p: crop_flip(x, p[:, 0], p[:, 1], p[:, 2], PAD),
        lambda p, size: bool(
            (p[..., :2] >= 0).all() and (p[..., :2] <= 2 * PAD).all() and np.isin(p[..., 2], (0, 1)).all()
        ),
    ),
    "resized-crop-flip": Augmentation(
        5,
        lambda n, size, g: torch.cat([resized_crop_params(n, size, g), torch.randint(0, 2, (n, 1), generator=g)], 1),
        lambda x, p: resized_crop_flip(x, p[:, :4], p[:, 4]),
        lambda p, size: bool(
            (p[..., :2] >= 0).all()
            and (p[..., 2:4] >= 1).all()
            and (p[..., :2] + p[..., 2:4] <= size).all()
            and np.isin(p[..., 4], (0, 1)).all()
        ),
    ),
}


def augmentation_for(image_size: int) -> str:
    """The augmentation a student trains with on images of this size."""
    return "crop-flip" if image_size <= SMALL_MAX else "resized-crop-flip"


def normalize(x_uint8_nhwc: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float32, (x/255 - mean) / std; mean, std: (3,)."""
    x = x_uint8_nhwc.permute(0, 3, 1, 2).float().div_(255.0)
    return (x - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize of (B, C, H, W) to (B, C, size, size); a no-op at the same size."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=x.shape[-1] > size)
