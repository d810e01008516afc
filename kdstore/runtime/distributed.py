"""torchrun support: the process group from torchrun's environment, global batches split across
ranks, and reductions. A plain (non-torchrun) process is rank 0 of a world of 1 and calls nothing
in torch.distributed."""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass

import numpy as np
import torch

from kdstore.errors import KdstoreError


@dataclass(frozen=True)
class Context:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        """Only the main rank writes files and draws progress bars."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def init(device: torch.device) -> tuple[Context, torch.device]:
    """Join torchrun's process group (gloo on CPU, nccl on CUDA); returns the context and the
    device this rank uses (cuda:LOCAL_RANK on CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Context(), device
    import torch.distributed as dist

    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        atexit.register(_leave)  # before interpreter teardown, so gloo's threads end cleanly
    return Context(dist.get_rank(), dist.get_world_size()), device


def _leave() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def usable_length(n: int, batch_size: int, world: int) -> int:
    """Samples visited per epoch: all of them on one process; under torchrun the last global
    batch is cut to a multiple of the world size (every rank must take the same number of steps)."""
    if world == 1:
        return n
    tail = n % batch_size
    return n - tail % world


def rank_positions(order: np.ndarray, batch_size: int, rank: int, world: int) -> np.ndarray:
    """What `rank` visits: global batch b is order[b*B:(b+1)*B] and the rank takes its
    positions rank, rank + world, ... (so per-rank batches are B / world)."""
    if world == 1:
        return order
    return np.concatenate([order[i : i + batch_size][rank::world] for i in range(0, len(order), batch_size)])


def all_reduce_sum(t: torch.Tensor, ctx: Context) -> torch.Tensor:
    if ctx.active:
        import torch.distributed as dist

        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def barrier(ctx: Context) -> None:
    if ctx.active:
        import torch.distributed as dist

        dist.barrier()


def agree(ctx: Context, what: str, value: str) -> None:
    """Fail fast, on every rank, when the ranks hold different `value`s (e.g. different stores)."""
    if not ctx.active:
        return
    import torch.distributed as dist

    values: list[str] = [""] * ctx.world
    dist.all_gather_object(values, value)
    if len(set(values)) > 1:
        raise KdstoreError(f"ranks disagree on {what}: " + "; ".join(f"rank {r}: {v}" for r, v in enumerate(values)))


def shard(n: int, batch_size: int, rank: int, world: int) -> tuple[int, int]:
    """A contiguous range [lo, hi) of whole batches for `rank`, so that every batch is the same
    as in a single-process pass over 0..n-1."""
    batches = -(-n // batch_size)
    per_rank = -(-batches // world)
    lo = min(n, rank * per_rank * batch_size)
    return lo, min(n, lo + per_rank * batch_size)
