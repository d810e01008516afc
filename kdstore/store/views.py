"""The stored views of a split (`cache --views K`): their arrays, how they are stored (full logits,
top-k, sampled ids; mixed or not), their augmentation parameters drawn from a seed, and the
checks an open runs on them.

`kdstore cache --views K` draws K augmentation parameter sets per training sample from a seeded
generator (augment.AUGMENTATIONS) and stores them with the teacher's logits on each view;
`kdstore train` then augments each image with one of its stored views, so the student sees the
very pixels the teacher scored (Beyer et al. 2022; FKD, Shen & Xing 2022)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from kdstore.data.augment import AUGMENTATIONS
from kdstore.runtime.blocks import LargeArray, release_pages, row_blocks
from kdstore.store.quantized import problems as quantized_problems


@dataclass(kw_only=True)
class Views:
    """The stored views of a split (rows in .beton order)."""

    augmentation: str  # key of augment.AUGMENTATIONS
    seed: int
    params: LargeArray  # (N, K, P) int32
    # The arrays below are read-only memory maps in an opened store, and may be store.Blocks
    # (written block by block) in one being built.
    logits: LargeArray | None = None  # (N, K, C) full logits (float16, float32 or quantized.Quantized); None with top-k
    topk_values: LargeArray | None = None  # (N, K, k) the k largest logits
    topk_indices: LargeArray | None = None  # (N, K, k) int32 their class ids
    fill: LargeArray | None = None  # (N, K) float32 logit of every class outside the top k
    # (N, K, k) int16 (int32 above 32,767 classes): k class ids drawn per view, sorted
    sample_ids: LargeArray | None = None
    sample_tau: float = 0.0  # the temperature of those draws (0 without them)
    mix: str = ""  # "", "mixup" or "cutmix": each view mixes its image with a partner's (MIXES)
    mix_alpha: float = 0.0  # the Beta(alpha, alpha) the mixing weights were drawn from
    mix_partner: LargeArray | None = None  # (N, K) int32 the partner's .beton position
    mix_lam: LargeArray | None = None  # (N, K) float32 the weight of the own image (cutmix: its area share)
    mix_box: LargeArray | None = None  # (N, K, 4) int32 cutmix: the box (x0, y0, x1, y1) from the partner

    @property
    def count(self) -> int:
        return int(self.params.shape[1])

    @property
    def topk(self) -> int:
        """k, or 0 when the full logits are stored."""
        return 0 if self.topk_values is None else int(self.topk_values.shape[2])

    @property
    def sample(self) -> int:
        """k of the sampled class ids, or 0."""
        return 0 if self.sample_ids is None else int(self.sample_ids.shape[2])

    @property
    def storage(self) -> str:
        return storage_of(self.topk, self.sample)


# What each storage keeps of a view (the arrays of `Views`), and the arrays of mixed views.
STORED = {"logits": ("logits",), "topk": ("topk_values", "topk_indices", "fill"), "sample": ("sample_ids",)}
MIX_ARRAYS = ("mix_partner", "mix_lam", "mix_box")


def storage_of(topk: int, sample: int) -> str:
    """The storage of views kept as `--topk k` or `--sample k` (neither: full logits)."""
    return "sample" if sample else "topk" if topk else "logits"


def draw_params(augmentation: str, n: int, k: int, image_size: int, seed: int) -> np.ndarray:
    """(n, k, P) int32 parameters, drawn view by view: the first k' views of a k-view draw are the
    k'-view draw of the same seed."""
    aug = AUGMENTATIONS[augmentation]
    g = torch.Generator().manual_seed(seed)
    return torch.stack([aug.draw(n, image_size, g) for _ in range(k)], 1).numpy().astype(np.int32)


MIXES = ("none", "mixup", "cutmix")


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
    if views.mix:
        if (
            views.mix not in MIXES
            or views.mix_partner is None
            or views.mix_lam is None
            or views.mix_partner.shape != (n, k)
            or views.mix_lam.shape != (n, k)
            or (views.mix == "cutmix" and (views.mix_box is None or views.mix_box.shape != (n, k, 4)))
        ):
            out.append(f"views are mixed ({views.mix!r}) but their mix arrays are missing or misshapen")
        elif len(views.mix_partner) and (views.mix_partner.min() < 0 or views.mix_partner.max() >= n):
            out.append(f"views/mix_partner falls outside 0..{n - 1}")
    if views.logits is not None:
        if views.logits.shape != (n, k, num_classes):
            out.append(f"views/logits has shape {views.logits.shape}, expected ({n}, {k}, {num_classes})")
    elif views.sample_ids is not None:
        if views.sample_ids.ndim != 3 or views.sample_ids.shape[:2] != (n, k) or not views.sample_tau > 0:
            out.append(f"views/sample_ids has shape {views.sample_ids.shape} (expected ({n}, {k}, s)) or no sample_tau")
    elif views.topk_values is None or views.topk_indices is None or views.fill is None:
        out.append("views hold neither logits, sample_ids nor topk_values, topk_indices and fill")
    else:
        t = views.topk
        if (
            views.topk_values.shape != (n, k, t)
            or views.topk_indices.shape != (n, k, t)
            or views.fill.shape != (n, k)
            or not 0 < t < num_classes
        ):
            out.append(
                f"views top-k arrays have shapes {views.topk_values.shape}, {views.topk_indices.shape}, "
                f"{views.fill.shape}"
            )
    for name in ("logits", "topk_values"):
        out += quantized_problems(getattr(views, name), f"views/{name}")
    return out


def value_problems(views: Views, num_classes: int) -> list[str]:
    """Non-finite logits and class ids out of range, read block by block (runtime.blocks.row_blocks; the
    pages of each block are dropped before the next, so memory stays bounded). The int8 parts'
    scales are `problems`'s, which runs first."""
    large = [
        a for a in (views.logits, views.topk_values, views.topk_indices, views.fill, views.sample_ids) if a is not None
    ]
    try:
        for lo, hi in row_blocks(large[0]):
            if views.sample_ids is not None:
                ids = views.sample_ids[lo:hi]
                if ids.size and (ids.min() < 0 or ids.max() >= num_classes):
                    return [f"views/sample_ids fall outside 0..{num_classes - 1}"]
                release_pages(views.sample_ids)
                continue
            if views.logits is not None:
                if not np.isfinite(views.logits[lo:hi]).all():
                    return ["views/logits contain NaN or inf values"]
                continue
            assert views.topk_indices is not None and views.topk_values is not None and views.fill is not None
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
