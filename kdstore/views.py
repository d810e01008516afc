"""Augmentation-consistent stores: K augmented views per training sample, replayed exactly.

`kdstore cache --views K` draws K augmentation parameter sets per training sample from a seeded
generator (augment.AUGMENTATIONS) and stores them with the teacher's logits on each view;
`kdstore train` then augments each image with one of its stored views, so the student sees the
very pixels the teacher scored (Beyer et al. 2022; FKD, Shen & Xing 2022).

With `--topk k` only the k largest logits of a view are kept (values and class ids) plus one
`fill` logit for every other class, chosen so that at tau = 1 the kept classes have exactly
their true probabilities and the rest of the mass is spread evenly over the other classes (as
FKD does with its soft labels).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from .arrays import release_pages, row_blocks
from .augment import AUGMENTATIONS


@dataclass
class Views:
    """The stored views of a split (rows in .beton order)."""

    augmentation: str  # key of augment.AUGMENTATIONS
    seed: int
    params: np.ndarray  # (N, K, P) int32
    # The arrays below are read-only memory maps in an opened store, and may be store.Blocks
    # (written block by block) in one being built.
    logits: np.ndarray | None = None  # (N, K, C) full logits (float16 or float32); None with top-k
    topk_values: np.ndarray | None = None  # (N, K, k) the k largest logits
    topk_indices: np.ndarray | None = None  # (N, K, k) int32 their class ids
    fill: np.ndarray | None = None  # (N, K) float32 logit of every class outside the top k

    @property
    def count(self) -> int:
        return int(self.params.shape[1])

    @property
    def topk(self) -> int:
        """k, or 0 when the full logits are stored."""
        return 0 if self.topk_values is None else int(self.topk_values.shape[2])


@dataclass(frozen=True)
class ViewMode:
    """What `train --views MODE` does with a store's views."""

    replay: Callable[[bool, bool], bool]  # (the store has views, augmentation on) -> replay them?
    needs_views: bool  # refuse a store without views
    needs_augment: bool  # refuse --no-augment


VIEW_MODES: dict[str, ViewMode] = {
    "auto": ViewMode(lambda has_views, augment: has_views and augment, needs_views=False, needs_augment=False),
    "replay": ViewMode(lambda has_views, augment: True, needs_views=True, needs_augment=True),
    "clean": ViewMode(lambda has_views, augment: False, needs_views=False, needs_augment=False),
}


def draw_params(augmentation: str, n: int, k: int, image_size: int, seed: int) -> np.ndarray:
    """(n, k, P) int32 parameters, drawn view by view: the first k' views of a k-view draw are the
    k'-view draw of the same seed."""
    aug = AUGMENTATIONS[augmentation]
    g = torch.Generator().manual_seed(seed)
    return torch.stack([aug.draw(n, image_size, g) for _ in range(k)], 1).numpy().astype(np.int32)


def topk_compress(logits: torch.Tensor, k: int) -> dict[str, torch.Tensor]:
    """(..., C) logits -> top-k values (..., k), their class ids (..., k) and the fill logit (...)
    with sum over the other classes of exp(fill - lse) = their true probability mass."""
    c = logits.shape[-1]
    values, indices = torch.topk(logits.float(), k, dim=-1)
    lse = torch.logsumexp(logits.float(), dim=-1)
    kept = torch.exp(values - lse[..., None]).sum(-1)
    rest = (1.0 - kept).clamp(min=1e-30)
    fill = lse + torch.log(rest / (c - k))
    return {"topk_values": values, "topk_indices": indices.to(torch.int32), "fill": fill}


def topk_expand(values: torch.Tensor, indices: torch.Tensor, fill: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Back to (B, C) logits: `fill` everywhere, the stored values at their classes."""
    out = fill.float()[:, None].expand(len(fill), num_classes).clone()
    return out.scatter_(1, indices.long(), values.float())


def choose(seed: int, epoch: int, n: int, k: int) -> np.ndarray:
    """Which stored view each of n samples uses in `epoch`: seeded, new every epoch. (n,) int64."""
    return np.random.default_rng([seed, epoch, 0x71E5]).integers(0, k, size=n)


def problems(views: Views, n: int, num_classes: int, image_size: int) -> list[str]:
    """What is wrong with a split's views: augmentation, shapes and parameters (empty when they
    are consistent). The values of the large arrays are `value_problems`'s."""
    if views.augmentation not in AUGMENTATIONS:
        return [f"views use an unknown augmentation {views.augmentation!r}"]
    aug = AUGMENTATIONS[views.augmentation]
    k = views.count
    out = []
    if views.params.ndim != 3 or views.params.shape[0] != n or views.params.shape[2] != aug.n_params or k < 1:
        return [f"views/params has shape {views.params.shape}, expected ({n}, K, {aug.n_params})"]
    if not all(aug.valid(views.params[lo:hi], image_size) for lo, hi in row_blocks(views.params)):
        out.append(f"views/params hold {views.augmentation} parameters outside a {image_size}-px image")
    if views.logits is not None:
        if views.logits.shape != (n, k, num_classes):
            out.append(f"views/logits has shape {views.logits.shape}, expected ({n}, {k}, {num_classes})")
    elif views.topk_values is None or views.topk_indices is None or views.fill is None:
        out.append("views hold neither logits nor topk_values, topk_indices and fill")
    else:
        t = views.topk
        if views.topk_values.shape != (n, k, t) or views.topk_indices.shape != (n, k, t) or views.fill.shape != (n, k) or not 0 < t < num_classes:
            out.append(f"views top-k arrays have shapes {views.topk_values.shape}, {views.topk_indices.shape}, {views.fill.shape}")
    return out


def value_problems(views: Views, num_classes: int) -> list[str]:
    """Non-finite logits and class ids out of range, read block by block (arrays.row_blocks; the
    pages of each block are dropped before the next, so memory stays bounded)."""
    large = [a for a in (views.logits, views.topk_values, views.topk_indices, views.fill) if a is not None]
    try:
        for lo, hi in row_blocks(large[0]):
            if views.logits is not None:
                if not np.isfinite(views.logits[lo:hi]).all():
                    return ["views/logits contain NaN or inf values"]
                continue
            idx = views.topk_indices[lo:hi]
            if idx.size and (idx.min() < 0 or idx.max() >= num_classes):
                return [f"views/topk_indices fall outside 0..{num_classes - 1}"]
            if not (np.isfinite(views.topk_values[lo:hi]).all() and np.isfinite(views.fill[lo:hi]).all()):
                return ["views top-k values contain NaN or inf values"]
            for array in large:
                release_pages(array)
    finally:
        for array in large:
            release_pages(array)
    return []
