"""Augmentation-consistent stores: K augmented views per training sample, replayed exactly.

`kdstore cache --views K` draws K augmentation parameter sets per training sample from a seeded
generator (augment.AUGMENTATIONS) and stores them with the teacher's logits on each view;
`kdstore train` then augments each image with one of its stored views, so the student sees the
very pixels the teacher scored (Beyer et al. 2022; FKD, Shen & Xing 2022).

With `--topk k` only the k largest logits of a view are kept (values and class ids) plus one
`fill` logit for every other class, chosen so that at tau = 1 the kept classes have exactly
their true probabilities and the rest of the mass is spread evenly over the other classes (as
FKD does with its soft labels). That target is biased (Anshumann et al., ACL 2025).

With `--sample k` a view keeps k class ids drawn with replacement from the teacher's softmax at
the KD temperature, softmax(z_T / tau) (random-sampling KD): their empirical distribution q has
E[q] = p_T, so the KD term replayed from it, tau^2 * KL(q || p_S), has the gradient of the full
tau^2 * KL(p_T || p_S) in expectation (unbiased). The draws are a pure function of the views
seed, the sample's position, the view and the draw index, so a resumed or extended cache draws
the same ids.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from .arrays import release_pages, row_blocks, upload
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
    sample_ids: np.ndarray | None = None  # (N, K, k) int16 (int32 above 32,767 classes): k class ids drawn per view, sorted
    sample_tau: float = 0.0  # the temperature of those draws (0 without them)
    mix: str = ""  # "", "mixup" or "cutmix": each view mixes its image with a partner's (MIXES)
    mix_alpha: float = 0.0  # the Beta(alpha, alpha) the mixing weights were drawn from
    mix_partner: np.ndarray | None = None  # (N, K) int32 the partner's .beton position
    mix_lam: np.ndarray | None = None  # (N, K) float32 the weight of the sample's own image (for cutmix: its area share)
    mix_box: np.ndarray | None = None  # (N, K, 4) int32 cutmix: the box (x0, y0, x1, y1) pasted from the partner

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


_MASK = np.uint64(0xFFFFFFFFFFFFFFFF)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser, elementwise on uint64 (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        x = (x + np.uint64(0x9E3779B97F4A7C15)) & _MASK
        x = ((x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _MASK
        x = ((x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _MASK
        return x ^ (x >> np.uint64(31))


def draw_uniforms(seed: int, positions: np.ndarray, views: np.ndarray, k: int) -> np.ndarray:
    """(B, V, k) float64 in [0, 1), one per (sample position, view, draw): a hash of the four, so
    a draw does not depend on the batch it is computed in."""
    with np.errstate(over="ignore"):
        key = _splitmix64(np.uint64(seed) + np.uint64(0x5A3D))
        key = _splitmix64(key ^ np.asarray(positions, dtype=np.uint64)[:, None, None])
        key = _splitmix64(key ^ np.asarray(views, dtype=np.uint64)[None, :, None])
        key = _splitmix64(key ^ np.arange(k, dtype=np.uint64)[None, None, :])
    return (key >> np.uint64(11)).astype(np.float64) * 2.0 ** -53


def sample_classes(logits: torch.Tensor, uniforms: np.ndarray, tau: float) -> torch.Tensor:
    """Inverse-CDF draws from softmax(logits / tau): (B, V, C) logits, (B, V, k) uniforms ->
    (B, V, k) class ids, sorted within each view (int16, or int32 above 32,767 classes), computed
    on the logits' device in float64 (the uniforms are uploaded without waiting)."""
    p = torch.softmax(logits.double() / tau, dim=-1)
    cdf = p.cumsum(-1)
    ids = torch.searchsorted(cdf, upload(torch.from_numpy(uniforms), logits.device), right=True).clamp_(max=logits.shape[-1] - 1)
    dtype = torch.int16 if logits.shape[-1] <= 32767 else torch.int32
    return ids.sort(-1).values.to(dtype)


FLOOR = -1.0e4  # log-probability of a class no draw hit: exp() is exactly 0 in float32


def empirical(ids: torch.Tensor, num_classes: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The empirical distribution (B, C) of k class ids per row (B, k)."""
    ones = torch.ones(ids.shape, dtype=dtype, device=ids.device)
    return torch.zeros(len(ids), num_classes, dtype=dtype, device=ids.device).scatter_add_(1, ids.long(), ones) / ids.shape[1]


def sampled_target(ids: torch.Tensor, num_classes: int, tau: float) -> torch.Tensor:
    """Teacher logits for the KD term from k sampled class ids (B, k): tau * log q, where q is the
    ids' empirical distribution, so that softmax(target / tau) = q exactly (unhit classes: 0)."""
    q = empirical(ids, num_classes)
    return tau * torch.where(q > 0, q.clamp_min(1e-30).log(), torch.full_like(q, FLOOR))


def bytes_per_view(storage: str, k: int, num_classes: int, logits_bytes: int = 2) -> int:
    """What one view costs in teacher.h5: full logits, top-k (values, int32 ids, a float32 fill), or k int16 ids."""
    return {"logits": num_classes * logits_bytes, "topk": k * (logits_bytes + 4) + 4, "sample": k * (2 if num_classes <= 32767 else 4)}[storage]


def at_bytes(storage: str, nbytes: int, num_classes: int, logits_bytes: int = 2) -> int:
    """The largest k whose view costs at most `nbytes` in `storage` ("topk" or "sample"): the
    inverse of bytes_per_view."""
    per = bytes_per_view(storage, 1, num_classes, logits_bytes) - bytes_per_view(storage, 0, num_classes, logits_bytes)
    return (nbytes - bytes_per_view(storage, 0, num_classes, logits_bytes)) // per


def _kl(p: np.ndarray, log_p: np.ndarray, log_q: np.ndarray) -> np.ndarray:
    return np.where(p > 0, p * (log_p - log_q), 0.0).sum(-1)


def fidelity(logits: np.ndarray, tau: float, topk: int, sample: int, seed: int = 0) -> list[dict[str, float | str | int]]:
    """How faithfully each storage keeps the teacher's distribution p = softmax(z / tau), on rows of
    full logits (R, C): bytes per view; `kl_view`, the mean KL(stored || p) of one stored view;
    `bias`, KL(p || E[stored]): top-k's uniform fill is biased, sampled ids are not (E[q] = p)."""
    z = logits.astype(np.float64) / tau
    log_p = z - z.max(1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(1, keepdims=True))
    p = np.exp(log_p)
    c = logits.shape[1]
    t = torch.from_numpy(logits.astype(np.float64) / tau)
    top = topk_compress(t, topk)
    log_top = torch.log_softmax(topk_expand(top["topk_values"], top["topk_indices"], top["fill"], c).double(), 1).numpy()
    ids = sample_classes(torch.from_numpy(logits)[:, None], draw_uniforms(seed, np.arange(len(logits)), np.zeros(1), sample), tau)[:, 0]
    q = empirical(ids, c, torch.float64).numpy()
    log_q = np.log(np.where(q > 0, q, 1.0))
    return [
        {"storage": "full logits", "k": c, "bytes": bytes_per_view("logits", 0, c), "kl_view": 0.0, "bias": 0.0},
        {"storage": f"top-{topk} + uniform fill", "k": topk, "bytes": bytes_per_view("topk", topk, c),
         "kl_view": float(_kl(np.exp(log_top), log_top, log_p).mean()), "bias": float(_kl(p, log_p, log_top).mean())},
        {"storage": f"{sample} sampled ids", "k": sample, "bytes": bytes_per_view("sample", sample, c),
         "kl_view": float(_kl(q, log_q, log_p).mean()), "bias": 0.0},
    ]


MIXES = ("none", "mixup", "cutmix")


def draw_mix(kind: str, n: int, k: int, image_size: int, alpha: float, seed: int, first_view: int = 0) -> dict[str, np.ndarray]:
    """Mixing parameters of k views of n samples, view by view from (seed, view), so the first k'
    views of a k-view draw are the k'-view draw (and --add-views draws views first_view.. alone):
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
    out = {"mix_partner": partner, "mix_lam": lam}
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
    inside = (rows >= b[:, 1, None, None]) & (rows < b[:, 3, None, None]) & (cols >= b[:, 0, None, None]) & (cols < b[:, 2, None, None])
    return torch.where(inside[:, None], partner, x)


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
    if views.mix:
        if views.mix not in MIXES or views.mix_partner is None or views.mix_lam is None or views.mix_partner.shape != (n, k) \
                or views.mix_lam.shape != (n, k) or (views.mix == "cutmix" and (views.mix_box is None or views.mix_box.shape != (n, k, 4))):
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
        if views.topk_values.shape != (n, k, t) or views.topk_indices.shape != (n, k, t) or views.fill.shape != (n, k) or not 0 < t < num_classes:
            out.append(f"views top-k arrays have shapes {views.topk_values.shape}, {views.topk_indices.shape}, {views.fill.shape}")
    return out


def value_problems(views: Views, num_classes: int) -> list[str]:
    """Non-finite logits and class ids out of range, read block by block (arrays.row_blocks; the
    pages of each block are dropped before the next, so memory stays bounded)."""
    large = [a for a in (views.logits, views.topk_values, views.topk_indices, views.fill, views.sample_ids) if a is not None]
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
