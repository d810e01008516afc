"""Per-batch KD weights lambda (docs/method.md, "Selective reliance").

A policy maps the teacher confidences of one epoch, in visiting order, to one lambda per batch."""

from __future__ import annotations

from typing import Callable

import numpy as np

# (confidence in epoch order (N,), batch size, fixed lambda, max confidence over the train set)
#   -> lambda per batch (ceil(N / batch size),)
LambdaPolicy = Callable[[np.ndarray, int, float, float], np.ndarray]


def batch_means(values: np.ndarray, batch_size: int) -> np.ndarray:
    """Mean of consecutive batches of `values`; the last batch may be short. (N,) -> (nb,)."""
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    starts = np.arange(0, len(values), batch_size)
    sums = np.add.reduceat(values.astype(np.float64), starts)
    counts = np.diff(np.append(starts, len(values)))
    return sums / counts


def sr_lambda(batch_mean_conf: np.ndarray, first_batch_mean_conf: float, max_conf: float) -> np.ndarray:
    """lambda_b = clip((1 - Cbar_b) / max(C_g) - s, 0, 1) with s = (1 - Cbar_first) / max(C_g)."""
    if max_conf <= 0:
        raise ValueError(f"max confidence must be > 0, got {max_conf}")
    s = (1.0 - first_batch_mean_conf) / max_conf
    return np.clip((1.0 - np.asarray(batch_mean_conf, dtype=np.float64)) / max_conf - s, 0.0, 1.0)


def zero_policy(conf: np.ndarray, batch_size: int, lam: float, max_conf: float) -> np.ndarray:
    """Unguided: lambda = 0 for every batch."""
    return np.zeros(len(batch_means(conf, batch_size)))


def fixed_policy(conf: np.ndarray, batch_size: int, lam: float, max_conf: float) -> np.ndarray:
    """Classic KD: the same lambda for every batch."""
    return np.full(len(batch_means(conf, batch_size)), float(lam))


def sr_policy(conf: np.ndarray, batch_size: int, lam: float, max_conf: float) -> np.ndarray:
    """Selective reliance: lambda from each batch's mean confidence, 0 on the epoch's first batch."""
    means = batch_means(conf, batch_size)
    return sr_lambda(means, float(means[0]), max_conf)


POLICIES: dict[str, LambdaPolicy] = {"zero": zero_policy, "fixed": fixed_policy, "sr": sr_policy}
