"""One training step: the one `train`, `teacher`, the online-KD baseline and `bench` all run.

A Step is built once per run from the model, its optimiser and schedule, how a batch is
prepared (targets.Prepare) and where its teacher targets come from (targets.TeacherFn, or none).
Calling it on a batch (positions, images, labels, lambda) normalises, augments, looks up the
targets, runs the student (mixed precision on CUDA), takes the loss of docs/method.md, and steps the
optimiser and the schedule. `bench` times exactly this call."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from kdstore.data.augment import normalize, resize
from kdstore.method.losses import student_loss
from kdstore.runtime.precision import autocast, device_layout, grad_scaler
from kdstore.runtime.transfer import upload
from kdstore.store.mixes import LabelMix
from kdstore.train.prepare import Prepare
from kdstore.train.teacher_targets import TeacherFn


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
    prepare: Prepare
    teacher: TeacherFn | None  # None: no KD term (lambda is ignored)
    mean: torch.Tensor  # (3,) on the device
    std: torch.Tensor
    device: torch.device
    tau: float
    label_smoothing: float = 0.0
    input_size: int | None = None  # resize the student's input to this size after augmentation
    amp: bool = False
    scaler: torch.amp.GradScaler = field(default=None)  # type: ignore[assignment]
    label_mix: LabelMix | None = None  # mixed views: the partner's label in the CE term

    @property
    def amp_on(self) -> bool:
        """Whether the student really runs in mixed precision (CUDA only)."""
        return self.amp and self.device.type == "cuda"

    def __post_init__(self) -> None:
        if self.scaler is None:
            self.scaler = grad_scaler(self.device, self.amp)

    def __call__(
        self, epoch: int, pos: np.ndarray, images: torch.Tensor, labels: torch.Tensor, lam: float
    ) -> dict[str, torch.Tensor]:
        """One optimiser step on a batch; pos: (B,) .beton positions, images (B, H, W, 3) uint8,
        labels (B,). Returns the loss and its CE and KD terms (detached) and the number right."""
        x, view = self.prepare(epoch, pos, normalize(upload(images, self.device), self.mean, self.std))
        y = upload(labels, self.device)
        target = None if self.teacher is None else self.teacher(pos, x, view)
        mixed = None if self.label_mix is None or view is None else self.label_mix(pos, view)
        with autocast(self.device, self.amp):
            logits = self.model(device_layout(resize(x, self.input_size) if self.input_size else x))
        terms = student_loss(
            logits.float(), y, target, lam if target is not None else 0.0, self.tau, self.label_smoothing, mixed
        )
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(terms["loss"]).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return {
            "loss": terms["loss"].detach(),
            "ce": terms["ce"],
            "kd": terms["kd"],
            "correct": (logits.argmax(1) == y).sum(),
        }
