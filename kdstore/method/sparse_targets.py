"""What a stored view keeps of the teacher's distribution, and the KD target rebuilt from it.

With `--topk k` only the k largest logits of a view are kept (values and class ids) plus one
`fill` logit for every other class, chosen so that at tau = 1 the kept classes have exactly
their true probabilities and the rest of the mass is spread evenly over the other classes (as
FKD does with its soft labels). That target is biased (Anshumann et al., ACL 2025).

With `--sample k` a view keeps k class ids drawn with replacement from the teacher's softmax at
the KD temperature, softmax(z_T / tau) (random-sampling KD): their empirical distribution q has
E[q] = p_T, so the KD term replayed from it, tau^2 * KL(q || p_S), has the gradient of the full
tau^2 * KL(p_T || p_S) in expectation (unbiased). The draws are a pure function of the views
seed, the sample's position, the view and the draw index, so a resumed or extended cache draws
the same ids."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from kdstore.method.int8 import dequantize, quantize
from kdstore.runtime.transfer import upload


def topk_compress(logits: torch.Tensor, k: int) -> dict[str, torch.Tensor]:
    """(..., C) logits -> top-k values (..., k), their class ids (..., k) and the fill logit (...)
    with sum over the other classes of exp(fill - lse) = their true probability mass."""
    c = logits.shape[-1]
    z = logits.float()
    values, indices = torch.topk(z, k, dim=-1)
    lse = torch.logsumexp(z, dim=-1)
    # the other classes' mass summed directly (1 - kept cancels in float32: a confident teacher's
    # tail came out ~1e-7 instead of e^-40, and at tau = 4 the fill then took a large share), floored at 1e-30
    log_rest = torch.logsumexp(z.scatter(-1, indices, float("-inf")), dim=-1) - lse
    fill = lse + log_rest.clamp(min=math.log(1e-30)) - math.log(c - k)
    return {"topk_values": values, "topk_indices": indices.to(torch.int32), "fill": fill}


def topk_expand(values: torch.Tensor, indices: torch.Tensor, fill: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Back to (B, C) logits: `fill` everywhere, the stored values at their classes."""
    out = fill.float()[:, None].expand(len(fill), num_classes).clone()
    return out.scatter_(1, indices.long(), values.float())


_MASK = np.uint64(0xFFFFFFFFFFFFFFFF)


def _splitmix64(x: Any) -> Any:
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
    return (key >> np.uint64(11)).astype(np.float64) * 2.0**-53


def sample_classes(logits: torch.Tensor, uniforms: np.ndarray, tau: float) -> torch.Tensor:
    """Inverse-CDF draws from softmax(logits / tau): (B, V, C) logits, (B, V, k) uniforms ->
    (B, V, k) class ids, sorted within each view (int16, or int32 above 32,767 classes), computed
    on the logits' device in float64 (the uniforms are uploaded without waiting)."""
    p = torch.softmax(logits.double() / tau, dim=-1)
    cdf = p.cumsum(-1)
    ids = torch.searchsorted(cdf, upload(torch.from_numpy(uniforms), logits.device), right=True).clamp_(
        max=logits.shape[-1] - 1
    )
    dtype = torch.int16 if logits.shape[-1] <= 32767 else torch.int32
    return ids.sort(-1).values.to(dtype)


FLOOR = -1.0e4  # log-probability of a class no draw hit: exp() is exactly 0 in float32


def empirical(ids: torch.Tensor, num_classes: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The empirical distribution (B, C) of k class ids per row (B, k)."""
    ones = torch.ones(ids.shape, dtype=dtype, device=ids.device)
    return (
        torch.zeros(len(ids), num_classes, dtype=dtype, device=ids.device).scatter_add_(1, ids.long(), ones)
        / ids.shape[1]
    )


def sampled_target(ids: torch.Tensor, num_classes: int, tau: float) -> torch.Tensor:
    """Teacher logits for the KD term from k sampled class ids (B, k): tau * log q, where q is the
    ids' empirical distribution, so that softmax(target / tau) = q exactly (unhit classes: 0)."""
    q = empirical(ids, num_classes)
    return tau * torch.where(q > 0, q.clamp_min(1e-30).log(), torch.full_like(q, FLOOR))


DEFAULT_LOGITS_DTYPE = "float16"  # what a store keeps its logits in unless told (--logits-dtype, --budget)
LOGIT_BYTES = {"float32": 4, "float16": 2, "int8": 1}  # bytes of one stored logit, by --logits-dtype
ROW_BYTES = {"float32": 0, "float16": 0, "int8": 8}  # and of each row of them (int8: a float32 scale and offset)


def bytes_per_view(storage: str, k: int, num_classes: int, logits_dtype: str = DEFAULT_LOGITS_DTYPE) -> int:
    """What one view (or one sample's clean row, storage "logits") costs in teacher.h5: full
    logits, top-k (values, int32 ids, a float32 fill), or k int16 ids."""
    b, row = LOGIT_BYTES[logits_dtype], ROW_BYTES[logits_dtype]
    return {
        "logits": num_classes * b + row,
        "topk": k * (b + 4) + 4 + row,
        "sample": k * (2 if num_classes <= 32767 else 4),
    }[storage]


def at_bytes(storage: str, nbytes: int, num_classes: int, logits_dtype: str = DEFAULT_LOGITS_DTYPE) -> int:
    """The largest k whose view costs at most `nbytes` in `storage` ("topk" or "sample"): the
    inverse of bytes_per_view."""
    base = bytes_per_view(storage, 0, num_classes, logits_dtype)
    return (nbytes - base) // (bytes_per_view(storage, 1, num_classes, logits_dtype) - base)


def _kl(p: np.ndarray, log_p: np.ndarray, log_q: np.ndarray) -> np.ndarray:
    return np.where(p > 0, p * (log_p - log_q), 0.0).sum(-1)


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(1, keepdims=True)
    return z - np.log(np.exp(z).sum(1, keepdims=True))


FULL_DTYPES = ("float32", "float16", "int8")


def stored_as(logits: np.ndarray, dtype: str) -> np.ndarray:
    """Rows of logits as a store of `dtype` gives them back (float32)."""
    if dtype == "int8":
        return dequantize(*quantize(logits))
    return logits.astype(dtype).astype(np.float32)


def fidelity(
    logits: np.ndarray, tau: float, topk: int, sample: int, seed: int = 0
) -> list[dict[str, float | str | int]]:
    """How faithfully each storage keeps the teacher's distribution p = softmax(z / tau), on rows of
    full logits (R, C), each measured as a store keeps it (stored_log_probs): bytes per view;
    `kl_view`, the mean KL(stored || p) of one stored view; `bias`, KL(p || E[stored]): top-k's
    uniform fill is biased, sampled ids are not (E[q] = p). Full logits in each of FULL_DTYPES,
    top-k values in float16."""
    log_p = _log_softmax(logits.astype(np.float64) / tau)
    p = np.exp(log_p)
    c = logits.shape[1]
    kinds = [("logits", c, d, f"full logits, {d}") for d in FULL_DTYPES]
    kinds += [
        ("topk", topk, DEFAULT_LOGITS_DTYPE, f"top-{topk} + uniform fill"),
        ("sample", sample, DEFAULT_LOGITS_DTYPE, f"{sample} sampled ids"),
    ]
    rows: list[dict[str, float | str | int]] = []
    for storage, k, dtype, name in kinds:
        q, log_q = stored_log_probs(logits, tau, storage, k, dtype, seed)
        rows.append(
            {
                "storage": name,
                "k": k,
                "bytes": bytes_per_view(storage, k, c, dtype),
                "kl_view": float(_kl(q, log_q, log_p).mean()),
                "bias": 0.0 if storage == "sample" else float(_kl(p, log_p, log_q).mean()),
            }
        )
    return rows


def stored_log_probs(
    logits: np.ndarray, tau: float, storage: str, k: int, dtype: str, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(q, log q) at `tau` of one view of rows of full logits (R, C) kept as `storage` (full
    logits in `dtype`, top-k with `dtype` values and a float32 fill, or k sampled ids drawn at
    `tau`), exactly as a store keeps them: top-k is taken of the logits and its fill set at
    tau = 1, then the expanded row is divided by tau, as `train` replays it (log q of a class no
    sampled id hit is 0; its q is 0)."""
    c = logits.shape[1]
    if storage == "sample":
        uniforms = draw_uniforms(seed, np.arange(len(logits)), np.zeros(1), k)
        q = empirical(sample_classes(torch.from_numpy(logits)[:, None], uniforms, tau)[:, 0], c, torch.float64).numpy()
        return q, np.log(np.where(q > 0, q, 1.0))
    if storage == "topk":
        top = topk_compress(torch.from_numpy(logits.astype(np.float32)), k)
        values = torch.from_numpy(stored_as(top["topk_values"].numpy(), dtype))
        stored = topk_expand(values, top["topk_indices"], top["fill"], c).double().numpy()
    else:
        stored = stored_as(logits, dtype).astype(np.float64)
    log_s = _log_softmax(stored / tau)
    return np.exp(log_s), log_s


def view_kl(logits: np.ndarray, tau: float, storage: str, k: int, dtype: str, seed: int = 0) -> float:
    """Mean KL(stored || full) at `tau` of one view kept as `storage` (stored_log_probs), on rows
    of full logits (R, C)."""
    q, log_q = stored_log_probs(logits, tau, storage, k, dtype, seed)
    return float(_kl(q, log_q, _log_softmax(logits.astype(np.float64) / tau)).mean())
