"""One training step: the one `train`, `teacher`, the online-KD baseline and `bench` all run.

A Step is built once per run from the model, its optimiser and schedule. Calling it on a Batch
of the public loader (kdstore.loader: images prepared, targets and lambda attached) runs the
student (mixed precision on CUDA; a second forward pass on the batch's second view for a loss
that reads two), takes the public loss (kd_loss, docs/method.md), and steps the optimiser (the
student's parameters and the loss's learnt ones) and the schedule. `bench` times exactly this
call (with the batch's assembly)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from kdstore.data.augment import resize
from kdstore.loader.batch import Batch, kd_loss
from kdstore.method.distill_losses import DistillTerm
from kdstore.runtime.precision import autocast, device_layout, grad_scaler


def sgd(groups: list[dict[str, Any]], momentum: float, weight_decay: float) -> torch.optim.Optimizer:
    """The optimiser of every run: SGD with Nesterov momentum over the given parameter groups
    (fused into one kernel when every parameter is on CUDA)."""
    groups = [g for g in groups if g["params"]]
    on_cuda = all(p.is_cuda for g in groups for p in g["params"])
    return torch.optim.SGD(
        groups, lr=groups[0]["lr"], momentum=momentum, weight_decay=weight_decay, nesterov=True, fused=on_cuda or None
    )


def cosine(optimizer: torch.optim.Optimizer, total_steps: int):
    """The learning-rate schedule of every run: cosine from the peak to 0, stepped per batch."""
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total_steps))


@dataclass(kw_only=True)
class Step:
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any  # stepped once per call
    device: torch.device
    tau: float
    loss: DistillTerm | None = None  # the distillation loss (None: Hinton's KD); its parameters in `optimizer`
    label_smoothing: float = 0.0
    input_size: int | None = None  # resize the student's input to this size after augmentation
    amp: bool = False
    scaler: torch.amp.GradScaler = field(default=None)  # type: ignore[assignment]

    @property
    def amp_on(self) -> bool:
        """Whether the student really runs in mixed precision (CUDA only)."""
        return self.amp and self.device.type == "cuda"

    def __post_init__(self) -> None:
        if self.scaler is None:
            self.scaler = grad_scaler(self.device, self.amp)

    def _input(self, images: torch.Tensor) -> torch.Tensor:
        return device_layout(resize(images, self.input_size)) if self.input_size else images

    def __call__(self, batch: Batch) -> dict[str, torch.Tensor]:
        """One optimiser step on a batch. Returns the loss and its CE and KD terms (detached) and
        the number right."""
        self.optimizer.zero_grad(set_to_none=True)
        out = self.compute(batch)
        self.scheduler.step()
        return out

    def compute(self, batch: Batch) -> dict[str, torch.Tensor]:
        """The step's work on the device, from the forward pass to the optimiser's update (not
        the learning-rate schedule's, which runs on the host): what a CUDA graph captures
        (graph_step.py). The gradients must be unset before (zero_grad(set_to_none=True))."""
        with autocast(self.device, self.amp):
            logits = self.model(self._input(batch.images))
            # a two-view loss (mlkd): the second view in its own forward pass (its own BatchNorm statistics)
            pair = None if batch.pair is None else self.model(self._input(batch.pair.images))
        loss, out = self.terms(logits, batch, pair)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return out

    def terms(
        self, logits: torch.Tensor, batch: Batch, pair: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The run's loss of the student's logits on `batch` (and on its second view's, `pair`),
        and what a step returns of it: the loss and its CE and KD terms (detached), the number right."""
        terms = kd_loss(
            logits.float(),
            batch,
            tau=self.tau,
            label_smoothing=self.label_smoothing,
            loss=self.loss,
            pair_logits=None if pair is None else pair.float(),
        )
        correct = (logits.argmax(1) == batch.labels).sum()
        return terms.loss, {"loss": terms.loss.detach(), "ce": terms.ce, "kd": terms.kd, "correct": correct}
