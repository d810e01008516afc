"""Mixed views at cache time (`cache --mix`): their mixing parameters and partner images.

A mixed view mixes a sample's image with a partner's (views.draw_mix: a seeded partner position,
a weight, for cutmix a box), both augmented with the view's parameters; the teacher scores the
mixed image and `train` replays exactly it (targets.Mixing). The partners' images come from the
training split decoded once into memory (resident.ResidentSplit), so mixed views need a split
that fits."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import KdstoreError
from .resident import ResidentSplit, fits, image_bytes
from .targets import PartnerImages, resident_partners
from .views import Views, draw_mix


@dataclass
class MixedViews(Views):
    """Views being cached with their mixing parameters, and where the partner images come from."""

    partners: PartnerImages | None = None


def mixed_views(mix: str, alpha: float, seed: int, params: np.ndarray, augmentation: str, image_size: int, beton: Path,
                device: torch.device, mean: torch.Tensor, std: torch.Tensor, workers: int, first_view: int = 0) -> MixedViews:
    """The views of `params` (N, K, P) with their mixing parameters (views.draw_mix from view
    `first_view` on; none for mix "none") and their partner images: the training split in `beton`,
    decoded once when first needed."""
    if mix == "none":
        return MixedViews(augmentation, seed, params)
    n = len(params)
    if not fits(image_bytes(n, image_size), device):
        raise KdstoreError("--mix: the partner images are held in memory, and this training split does not fit")
    held: list[PartnerImages] = []

    def partners(idx: torch.Tensor) -> torch.Tensor:
        if not held:
            held.append(resident_partners(ResidentSplit(beton, device, workers).images, mean, std))
        return held[0](idx)

    drawn = draw_mix(mix, n, params.shape[1], image_size, alpha, seed, first_view)
    return MixedViews(augmentation, seed, params, mix=mix, mix_alpha=alpha, partners=partners, **drawn)
