"""timm's training tasks, offline: OfflineDistillationTask is timm.task.LogitDistillationTask
with the teacher's logits taken from a kdstore Batch instead of a teacher forward."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from timm.task import TrainingTask

from kdstore.loader.batch import Batch, check_tau, distill_loss


class OfflineDistillationTask(TrainingTask):
    """A timm TrainingTask for a kdstore store: `task(batch.images, batch)` returns timm's task
    dictionary (loss, output, task_loss, kd_loss) with the loss of kdstore.kd_loss (or `loss` with
    `loss_options`, as kdstore.distill_loss): the batch's lambda (or a fixed `lam`), the
    temperature `temperature` (default: the batch's, its loader's --tau), label smoothing of the CE term.
    No teacher is held: the batch carries its logits (full, top-k, sampled or mixed views)."""

    def __init__(
        self,
        student_model: nn.Module,
        temperature: float | None = None,
        lam: float | None = None,
        label_smoothing: float = 0.0,
        device: torch.device | None = None,
        verbose: bool = False,
        loss: str = "kd",
        loss_options: dict[str, float] | None = None,
    ) -> None:
        super().__init__(device=device, verbose=verbose)
        if temperature is not None:  # None: each batch's own (its loader's --tau)
            check_tau(temperature, "OfflineDistillationTask")
        self.trainable_module: Any = student_model
        self.temperature, self.lam, self.label_smoothing = temperature, lam, label_smoothing
        self.loss = distill_loss(loss, tau=temperature, options=loss_options)  # kd: kd_loss

    def prepare_distributed(self, device_ids: list | None = None, **ddp_kwargs: Any) -> "OfflineDistillationTask":
        """Wrap the student in DistributedDataParallel (there is no teacher to leave out)."""
        self.trainable_module = nn.parallel.DistributedDataParallel(
            self.trainable_module, device_ids=device_ids, **ddp_kwargs
        )
        return self

    def compile(self, backend: str = "inductor", mode: str | None = None, **compile_kwargs: Any) -> Any:
        self.trainable_module = torch.compile(self.trainable_module, backend=backend, mode=mode, **compile_kwargs)
        self.eval_model = self.trainable_module
        return self.trainable_module

    def forward(self, input: torch.Tensor, target: Batch) -> dict[str, torch.Tensor]:  # type: ignore[override]
        """`input`: the batch's images (batch.images); `target`: the Batch itself."""
        output = self.trainable_module(input)
        pair = None if target.pair is None else self.trainable_module(target.pair.images)  # a two-view loss (mlkd)
        terms = self.loss(output, target, lam=self.lam, label_smoothing=self.label_smoothing, pair_logits=pair)
        return {"loss": terms.loss, "output": output, "task_loss": terms.ce, "kd_loss": terms.kd}
