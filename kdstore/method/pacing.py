"""Curriculum pacing: how much of an ordered training set each batch may be drawn from.

A pacing function g maps the global training step t (0 <= t < T) to the fraction of the order
(its easiest part, or the hardest for the inverse curriculum) that batch t is drawn from,
uniformly at random. Wu, Dyer & Neyshabur ("When do curricula work?", ICLR 2021) parametrise
them by `a`, the fraction of training after which all data is used, and `b`, the starting
fraction:

    linear  b + (1 - b) * x                     x = t / (a T)
    quad    b + (1 - b) * x^2
    root    b + (1 - b) * sqrt(x)
    step    b, then 1 from t = a T on
    exp     b + (1 - b) * (exp(10 x) - 1) / (exp(10) - 1)
    log     b + (1 - b) * (1 + 0.1 log(x + exp(-10)))

each clipped to [b, 1]. Hacohen & Weinshall (ICML 2019) use fixed exponential pacing:

    fixed-exp   b * growth ^ floor(t / step_length)        clipped to 1

with `step_length` in steps; by default the one that reaches all data at t = a T.
`none` visits the order straight through, batch after batch (the paper's setting)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class PacingParams:
    a: float = 0.8  # fraction of training after which the whole order is used
    b: float = 0.2  # fraction of the order used at the first step
    growth: float = 2.0  # fixed-exp: factor per stair
    step_length: int | None = None  # fixed-exp: steps per stair; None: reach 1 at t = a T

    def problems(self) -> list[str]:
        out = []
        if not 0.0 < self.a <= 1.0:
            out.append(f"--pacing-a must be in (0, 1], got {self.a}")
        if not 0.0 < self.b <= 1.0:
            out.append(f"--pacing-b must be in (0, 1], got {self.b}")
        if not 1.0 < self.growth < float("inf"):
            out.append(f"--pacing-growth must be > 1, got {self.growth}")
        if self.step_length is not None and self.step_length < 1:
            out.append(f"--pacing-step-length must be >= 1, got {self.step_length}")
        return out


# (steps t (M,), total steps T, params) -> fraction of the order usable at each step (M,)
PacingFn = Callable[[np.ndarray, int, PacingParams], np.ndarray]


def _progress(t: np.ndarray, total: int, p: PacingParams) -> np.ndarray:
    """x = t / (a T): 0 at the start, 1 where the whole order becomes available."""
    return np.asarray(t, dtype=np.float64) / (p.a * total)


def _wu(shape: Callable[[np.ndarray], np.ndarray]) -> PacingFn:
    """A Wu et al. pacing function from its shape s(x) on [0, 1] (s(0) = 0, s(1) = 1)."""

    def g(t: np.ndarray, total: int, p: PacingParams) -> np.ndarray:
        x = _progress(t, total, p)
        return np.clip(p.b + (1.0 - p.b) * shape(np.minimum(x, 1.0)), p.b, 1.0)

    return g


def _step(t: np.ndarray, total: int, p: PacingParams) -> np.ndarray:
    return np.where(_progress(t, total, p) >= 1.0, 1.0, p.b)


def fixed_exp_step_length(total: int, p: PacingParams) -> int:
    """Hacohen & Weinshall's step length; by default the one that reaches 1 at t = a T."""
    if p.step_length is not None:
        return p.step_length
    stairs = max(1, math.ceil(math.log(1.0 / p.b) / math.log(p.growth))) if p.b < 1 else 1
    return max(1, math.floor(p.a * total / stairs))


def _fixed_exp(t: np.ndarray, total: int, p: PacingParams) -> np.ndarray:
    stairs = np.floor(np.asarray(t, dtype=np.float64) / fixed_exp_step_length(total, p))
    return np.minimum(p.b * np.power(p.growth, stairs), 1.0)


PACINGS: dict[str, PacingFn | None] = {
    "none": None,
    "linear": _wu(lambda x: x),
    "quad": _wu(lambda x: x**2),
    "root": _wu(np.sqrt),
    "step": _step,
    "exp": _wu(lambda x: np.expm1(10.0 * x) / np.expm1(10.0)),
    "log": _wu(lambda x: 1.0 + 0.1 * np.log(x + math.exp(-10.0))),
    "fixed-exp": _fixed_exp,
}


def fractions(name: str, steps: np.ndarray, total: int, params: PacingParams) -> np.ndarray | None:
    """g at each of `steps` (global step indices), or None for `none`."""
    fn = PACINGS[name]
    return None if fn is None else fn(np.asarray(steps), total, params)


def prefix_lengths(frac: np.ndarray, n: int, batch_size: int) -> np.ndarray:
    """How many leading positions of an order of length n each batch may be drawn from:
    ceil(g n), at least one batch and at most n."""
    return np.clip(np.ceil(np.asarray(frac) * n - 1e-9).astype(np.int64), min(batch_size, n), n)


def paced_sequence(
    order: np.ndarray, frac: np.ndarray, batch_size: int, length: int, rng: np.random.Generator
) -> np.ndarray:
    """The positions an epoch visits under pacing: batch k holds `batch_size` distinct positions
    drawn uniformly from order[:prefix k]. frac: (ceil(length / batch_size),); -> (length,)."""
    n = len(order)
    limits = prefix_lengths(frac, n, batch_size)
    out = np.empty(length, dtype=np.int64)
    for k, limit in enumerate(limits):
        lo = k * batch_size
        size = min(batch_size, length - lo)
        if size <= 0:
            break
        out[lo : lo + size] = order[rng.choice(int(limit), size=size, replace=False)]
    return out
