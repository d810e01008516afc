"""How closely a student follows its teacher (big_vision's distillation metrics): top-1 agreement
and KL(teacher || student) at tau = 1, on clean training images and on the validation split.

    agreement = mean_i [ argmax_k z_S,ik == argmax_k z_T,ik ]
    kl        = mean_i sum_k p_T,ik (log p_T,ik - log p_S,ik),   p = softmax(z) at tau = 1

A student that agrees with its teacher on the training images but not on held-out ones has fit
a fixed teacher rather than its function (Beyer et al. 2022)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from kdstore.data.beton import epoch_of, make_loader
from kdstore.passes.inference import ModelInput, clean_forward
from kdstore.runtime import distributed
from kdstore.runtime.distributed import Context, all_reduce_sum
from kdstore.runtime.transfer import upload

# batches(positions) -> (uint8 images (B, H, W, 3), their positions (B,)) covering `positions` in order
Batches = Callable[[np.ndarray], Iterable[tuple[torch.Tensor, np.ndarray]]]


def agreement_terms(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample: whether the top-1 classes agree (B,) bool, and KL(p_T || p_S) at tau = 1 (B,)."""
    s, t = student_logits.float(), teacher_logits.float()
    kl = F.kl_div(F.log_softmax(s, 1), F.log_softmax(t, 1), reduction="none", log_target=True).sum(1)
    return s.argmax(1) == t.argmax(1), kl


def fixed_subset(n: int, size: int, seed: int) -> np.ndarray:
    """A fixed, seeded subset of `size` of the positions 0..n-1 (all when size >= n), ascending."""
    if size >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng([seed, 0xA6EE]).choice(n, size, replace=False))


def beton_batches(beton: Path, workers: int, batch_size: int = 512) -> Batches:
    """Batches read from a .beton by FFCV. The loader (and its compiled pipeline) is built once
    per set of positions and reused: a run asks for the same subset every epoch."""
    loaders: dict[bytes, Any] = {}

    def batches(positions: np.ndarray) -> Iterator[tuple[torch.Tensor, np.ndarray]]:
        key = np.asarray(positions, dtype=np.int64).tobytes()
        if key not in loaders:
            loaders.clear()
            loaders[key] = make_loader(beton, batch_size, workers, indices=positions)
        done = 0
        with epoch_of(loaders[key]) as batches:
            for images, _, _ in batches:
                yield images, positions[done : done + len(images)]
                done += len(images)

    return batches


def resident_batches(images: torch.Tensor, batch_size: int = 512) -> Batches:
    """Batches gathered from a split held in memory (resident.ResidentSplit.images)."""

    def batches(positions: np.ndarray) -> Iterator[tuple[torch.Tensor, np.ndarray]]:
        for lo in range(0, len(positions), batch_size):
            pos = positions[lo : lo + batch_size]
            yield images[upload(torch.from_numpy(pos), images.device)], pos

    return batches


class Sums:
    """Running sums of agreeing samples, KL and samples, reduced over ranks at the end."""

    def __init__(self, device: torch.device) -> None:
        self.sums = torch.zeros(3, dtype=torch.float64, device=device)

    def add(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> None:
        agree, kl = agreement_terms(student_logits, teacher_logits)
        # the count is filled on the device: no host-to-device copy, so the host never waits here
        self.sums += torch.stack(
            [agree.double().sum(), kl.double().sum(), kl.new_full((), len(agree), dtype=torch.float64)]
        )

    def result(self, ctx: Context) -> tuple[float, float]:
        agree, kl, n = all_reduce_sum(self.sums, ctx).tolist()
        return agree / max(n, 1.0), kl / max(n, 1.0)


@torch.inference_mode()
def measure(
    inp: ModelInput,
    batches: Batches,
    positions: np.ndarray,
    teacher_rows: Callable[[np.ndarray], torch.Tensor],
    ctx: Context = Context(),
    batch_size: int = 512,
) -> dict[str, float]:
    """Agreement and KL of inp.model against the teacher rows of `positions` (each rank takes a
    shard of whole batches; the sums are reduced over ranks). The model is put in eval mode and
    run as `inp` says (bf16 on CUDA with amp, like validation)."""
    lo, hi = distributed.shard(len(positions), batch_size, ctx.rank, ctx.world)
    forward = clean_forward(inp)
    sums = Sums(inp.device)
    if hi > lo:
        for images, pos in batches(positions[lo:hi]):
            sums.add(forward(images, pos)["logits"], teacher_rows(pos))
    agree, kl = sums.result(ctx)
    return {"agree": agree, "kl": kl}
