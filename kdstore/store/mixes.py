"""Mixed views at cache time (`cache --mix`): their mixing parameters and partner images.

A mixed view mixes a sample's image with a partner's (draw_mix: a seeded partner position,
a weight, for cutmix a box), both augmented with the view's parameters; the teacher scores the
mixed image and `train` replays exactly it (targets.Mixing). The partners' images come from the
training split decoded once into memory (resident.ResidentSplit), so mixed views need a split
that fits."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from kdstore.data.augment import normalize
from kdstore.data.in_memory import ResidentSplit, fits, image_bytes
from kdstore.errors import KdstoreError
from kdstore.store.rows import Rows
from kdstore.store.views import Views


def draw_mix(
    kind: str, n: int, k: int, image_size: int, alpha: float, seed: int, first_view: int = 0
) -> dict[str, np.ndarray]:
    """Mixing parameters of k views of n samples, view by view from (seed, view), so the first k'
    views of a k-view draw are the k'-view draw (and --extend draws views first_view.. alone):
    a partner position, the weight lambda ~ Beta(alpha, alpha) of the sample's own image, and for
    cutmix a box with area share 1 - lambda (clipped to the image; lambda is then its true share)."""
    partner, lam, box = np.empty((n, k), np.int32), np.empty((n, k), np.float32), np.zeros((n, k, 4), np.int32)
    for v in range(k):
        rng = np.random.default_rng([seed, first_view + v, 0x313])
        partner[:, v] = rng.integers(0, n, n)
        weight = rng.beta(alpha, alpha, n)
        if kind == "cutmix":
            side = np.sqrt(1.0 - weight)
            w, h = np.round(image_size * side).astype(np.int64), np.round(image_size * side).astype(np.int64)
            cx, cy = rng.integers(0, image_size, n), rng.integers(0, image_size, n)
            x0, y0 = np.clip(cx - w // 2, 0, image_size), np.clip(cy - h // 2, 0, image_size)
            x1, y1 = np.clip(cx + (w - w // 2), 0, image_size), np.clip(cy + (h - h // 2), 0, image_size)
            box[:, v] = np.stack([x0, y0, x1, y1], 1)
            weight = 1.0 - (x1 - x0) * (y1 - y0) / float(image_size * image_size)
        lam[:, v] = weight
    out: dict[str, np.ndarray] = {"mix_partner": partner, "mix_lam": lam}
    if kind == "cutmix":
        out["mix_box"] = box
    return out


def mix_images(x: torch.Tensor, partner: torch.Tensor, lam: torch.Tensor, box: torch.Tensor | None) -> torch.Tensor:
    """Mix each image (B, C, H, W) with its partner's: lam * x + (1 - lam) * partner (mixup), or
    the partner's pixels inside box = (x0, y0, x1, y1) (cutmix)."""
    if box is None:
        w = lam.to(x.dtype).view(-1, 1, 1, 1)
        return w * x + (1.0 - w) * partner
    h, wd = x.shape[-2:]
    rows = torch.arange(h, device=x.device).view(1, h, 1)
    cols = torch.arange(wd, device=x.device).view(1, 1, wd)
    b = box.to(x.device).long()
    inside = (
        (rows >= b[:, 1, None, None])
        & (rows < b[:, 3, None, None])
        & (cols >= b[:, 0, None, None])
        & (cols < b[:, 2, None, None])
    )
    return torch.where(inside[:, None], partner, x)


# LabelMix(positions, view index) -> (partner labels (B,), weight of the own label (B,)) for mixed views
LabelMix = Callable[[np.ndarray, np.ndarray], tuple[torch.Tensor, torch.Tensor]]


# PartnerImages(positions (B,) int64 tensor) -> the normalised images (B, 3, H, W) at those .beton positions
PartnerImages = Callable[[torch.Tensor], torch.Tensor]


def resident_partners(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> PartnerImages:
    """Partner images gathered from a split held in memory (resident.ResidentSplit.images)."""
    return lambda idx: normalize(images[idx.to(images.device)], mean, std)


class Mixing:
    """The stored mix of each (position, view): its partner's image and the weight or box."""

    def __init__(self, views: Views, device: torch.device, placement: str, partners: PartnerImages | None) -> None:
        if partners is None:
            raise ValueError("mixed views need the partner images (a resident training split)")
        self.partners = partners
        self.partner, self.lam = Rows(views.mix_partner, device, placement), Rows(views.mix_lam, device, placement)
        self.box = Rows(views.mix_box, device, placement) if views.mix_box is not None else None

    def __call__(
        self, x: torch.Tensor, pos: np.ndarray, view: np.ndarray, augment: Callable[[torch.Tensor], torch.Tensor]
    ) -> torch.Tensor:
        box = self.box(pos, view) if self.box is not None else None
        return mix_images(x, augment(self.partners(self.partner(pos, view).long())), self.lam(pos, view), box)


def view_label_mix(views: Views, labels: torch.Tensor, device: torch.device, placement: str = "auto") -> LabelMix:
    """The CE term's labels of a mixed view: the partner's label, weighted by 1 - lambda."""
    partner, lam = Rows(views.mix_partner, device, placement), Rows(views.mix_lam, device, placement)
    return lambda pos, view: (labels[partner(pos, view).long()], lam(pos, view).float())


@dataclass(kw_only=True)
class MixedViews(Views):
    """Views being cached with their mixing parameters, and where the partner images come from."""

    partners: PartnerImages | None = None


@dataclass(frozen=True, kw_only=True)
class PartnerSource:
    """Where mixed views' partner images come from: the training split in `beton`, decoded into
    memory on `device` (data.in_memory.ResidentSplit) once, when first needed, and normalised."""

    beton: Path
    device: torch.device
    mean: torch.Tensor
    std: torch.Tensor
    workers: int

    def lazy(self) -> PartnerImages:
        held: list[PartnerImages] = []

        def partners(idx: torch.Tensor) -> torch.Tensor:
            if not held:
                held.append(
                    resident_partners(ResidentSplit(self.beton, self.device, self.workers).images, self.mean, self.std)
                )
            return held[0](idx)

        return partners


def mixed_views(
    mix: str,
    alpha: float,
    seed: int,
    params: np.ndarray,
    augmentation: str,
    image_size: int,
    source: PartnerSource,
    first_view: int = 0,
) -> MixedViews:
    """The views of `params` (N, K, P) with their mixing parameters (draw_mix from view
    `first_view` on; none for mix "none") and their partner images, from `source`."""
    if mix == "none":
        return MixedViews(augmentation=augmentation, seed=seed, params=params)
    n = len(params)
    if not fits(image_bytes(n, image_size), source.device):
        raise KdstoreError("--mix: the partner images are held in memory, and this training split does not fit")
    drawn: dict[str, Any] = draw_mix(mix, n, params.shape[1], image_size, alpha, seed, first_view)
    return MixedViews(
        augmentation=augmentation, seed=seed, params=params, mix=mix, mix_alpha=alpha, partners=source.lazy(), **drawn
    )
