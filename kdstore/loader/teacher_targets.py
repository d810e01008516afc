"""Where a training step's teacher targets come from (LogitSource): the store's clean logits, the
logits of the stored view each sample was augmented with (full, top-k expanded, or sampled ids
as their empirical distribution), or a live teacher (the online-KD baseline).

    LogitSource(positions (B,), augmented images, view index or None) -> logits (B, C) float32"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from kdstore.data.augment import resize
from kdstore.method.sparse_targets import sampled_target, topk_expand
from kdstore.runtime.precision import autocast, device_layout
from kdstore.store.rows import Rows
from kdstore.store.views import Views

LogitSource = Callable[[np.ndarray, torch.Tensor, np.ndarray | None], torch.Tensor]


def cached_teacher(logits: np.ndarray, device: torch.device, placement: str = "auto") -> LogitSource:
    """The store's logits of the clean images, looked up by position. logits: (N, C)."""
    rows = Rows(logits, device, placement)
    return lambda pos, images, view: rows(pos).float()


def view_teacher(views: Views, num_classes: int, device: torch.device, placement: str = "auto") -> LogitSource:
    """The store's logits of the view each sample was augmented with (top-k views expanded;
    sampled views as tau * log of their ids' empirical distribution, sparse_targets.sampled_target)."""
    if views.sample_ids is not None:
        ids = Rows(views.sample_ids, device, placement)  # (N, K, k)
        return lambda pos, images, view: sampled_target(ids(pos, view), num_classes, views.sample_tau)
    if views.logits is not None:
        table = Rows(views.logits, device, placement)  # (N, K, C), kept in the stored dtype
        return lambda pos, images, view: table(pos, view).float()
    values, indices, fill = (Rows(a, device, placement) for a in (views.topk_values, views.topk_indices, views.fill))
    return lambda pos, images, view: topk_expand(values(pos, view), indices(pos, view), fill(pos, view), num_classes)


def online_teacher(model: torch.nn.Module, input_size: int, device: torch.device, amp: bool = False) -> LogitSource:
    """The online-KD baseline's LogitSource: the teacher (eval, inference mode; with `amp`, bf16 on
    CUDA, in the layout precision.for_device gave it) on every augmented batch."""
    model.eval()

    def forward(pos: np.ndarray, images: torch.Tensor, view: np.ndarray | None = None) -> torch.Tensor:
        with torch.inference_mode(), autocast(device, amp):
            logits = model(device_layout(resize(images, input_size))).float()
        return logits.clone()  # an inference tensor cannot be saved for backward

    return forward
