"""What a training step sees: the images augmented (randomly, or replaying a stored view) and
the teacher's logits for them (from the store's table, a stored view, or a live teacher).

Two small function types keep the loop free of branches on these choices:

    Prepare(epoch, positions (B,), images (B, 3, H, W)) -> (augmented images, view index (B,) or None)
    TeacherFn(positions (B,), augmented images, view index or None) -> logits (B, C)

positions are .beton positions on the device; images are normalised float tensors.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from .augment import AUGMENTATIONS
from .views import Views, choose, topk_expand

Prepare = Callable[[int, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]]
TeacherFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]


def no_augment() -> Prepare:
    return lambda epoch, pos, x: (x, None)


def random_augment(augmentation: str, image_size: int, generator: torch.Generator) -> Prepare:
    """Fresh parameters per batch from `generator` (saved in checkpoints, so a resumed run goes on
    with the same draws)."""
    aug = AUGMENTATIONS[augmentation]
    return lambda epoch, pos, x: (aug.apply(x, aug.draw(len(x), image_size, generator)), None)


def replay_views(views: Views, seed: int, device: torch.device) -> Prepare:
    """Each sample uses one of its stored views (views.choose: seeded, new every epoch) and is
    augmented with exactly that view's parameters."""
    aug = AUGMENTATIONS[views.augmentation]
    params = torch.from_numpy(views.params).long().to(device)  # (N, K, P)
    n, k = views.params.shape[:2]
    chosen: dict[int, torch.Tensor] = {}

    def prepare(epoch: int, pos: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if epoch not in chosen:
            chosen.clear()
            chosen[epoch] = torch.from_numpy(choose(seed, epoch, n, k)).to(device)
        view = chosen[epoch][pos]
        return aug.apply(x, params[pos, view]), view

    return prepare


def cached_teacher(logits: np.ndarray, device: torch.device) -> TeacherFn:
    """The store's logits of the clean images, looked up by position. logits: (N, C)."""
    table = torch.from_numpy(logits).float().to(device)
    return lambda pos, images, view: table[pos]


def view_teacher(views: Views, num_classes: int, device: torch.device) -> TeacherFn:
    """The store's logits of the view each sample was augmented with (top-k views expanded)."""
    if views.logits is not None:
        table = torch.from_numpy(views.logits).to(device)  # (N, K, C), kept in the stored dtype
        return lambda pos, images, view: table[pos, view].float()
    values = torch.from_numpy(views.topk_values).to(device)
    indices = torch.from_numpy(views.topk_indices).to(device)
    fill = torch.from_numpy(views.fill).to(device)
    return lambda pos, images, view: topk_expand(values[pos, view], indices[pos, view], fill[pos, view], num_classes)
