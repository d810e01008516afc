"""A model's scores of the clean training images (`--scorer student`): one inference pass, each
torchrun rank scoring a shard of whole batches, then the curriculum rules of docs/method.md."""

from __future__ import annotations

import numpy as np
import torch

from kdstore.loader.source import TrainData
from kdstore.method.orderings import Scores
from kdstore.passes.inference import ModelInput, ScorePass, clean_forward, score_beton
from kdstore.runtime import distributed
from kdstore.runtime.distributed import Context, all_reduce_sum

SCORE_BATCH = 512


def score_train_set(
    inp: ModelInput, data: TrainData, labels: np.ndarray, workers: int, ctx: Context, source: str, progress: bool
) -> Scores:
    """Confidence and correctness of inp.model on every clean training image (the shards of all
    ranks summed into the full table), turned into Scores named `source`."""
    n = len(labels)
    lo, hi = distributed.shard(n, SCORE_BATCH, ctx.rank, ctx.world)
    job = ScorePass(
        beton=data.train_beton,
        batch_size=SCORE_BATCH,
        workers=workers,
        label=f"scoring ({source})",
        progress=progress and ctx.main,
        positions=np.arange(lo, hi),
    )
    scored = score_beton(clean_forward(inp), job)
    # confidence, correct: (N,) each, not the (N, C) logits
    table = torch.zeros(2, n, dtype=torch.float64, device=inp.device)
    if hi > lo:
        table[0, lo:hi] = torch.from_numpy(scored["confidence"].astype(np.float64)).to(inp.device)
        table[1, lo:hi] = torch.from_numpy(scored["correct"].astype(np.float64)).to(inp.device)
    confidence, correct = all_reduce_sum(table, ctx).cpu().numpy()
    return Scores.from_predictions(confidence.astype(np.float32), correct > 0.5, labels, source)
