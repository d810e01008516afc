"""What one more student takes in device memory, measured, and how many fit (`sweep --concurrent`).

A student's footprint is counted, not guessed: its parameters and buffers, their gradients and
SGD's momentum (one more copy of each parameter), and every tensor autograd saves for the
backward pass of one training step at the run's batch and input size (counted by saved-tensor
hooks on a forward pass over a batch of zeros; twice for a loss that reads two views), plus the
batch and its logits. Students trained together share the store's data, which is counted once."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from kdstore.data.in_memory import decoded_bytes, free_bytes, holds
from kdstore.loader.source import TrainData
from kdstore.models.build import build_model
from kdstore.runtime.devices import resolve_device
from kdstore.runtime.precision import autocast, device_layout, for_device
from kdstore.train.config import TrainConfig

HEADROOM = 0.9  # of the free memory: what students may take (the allocator's own slack is the rest)


def _nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def saved_bytes(model: nn.Module, images: torch.Tensor, device: torch.device, amp: bool) -> int:
    """Bytes autograd saves for backward in one training forward pass of `model` on `images`
    (each saved storage counted once), with the forward's output."""
    seen: dict[tuple, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        key = (t.untyped_storage().data_ptr(), t.device)
        seen[key] = max(seen.get(key, 0), t.untyped_storage().nbytes())
        return t

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast(device, amp):
        out = model(images)
    return sum(seen.values()) + _nbytes([out])


def student_bytes(cfg: TrainConfig, data: TrainData) -> int:
    """One student's device memory for a training step of cfg (module docstring), measured on a
    model built as the run builds it (a throwaway one: nothing of a run is touched)."""
    device = resolve_device(cfg.device)
    size = cfg.input_size or data.image_size
    model, _ = build_model(cfg.student, data.num_classes, size, cfg.stem, False, None)
    for_device(model, device)
    params = list(model.parameters())
    state = _nbytes(params) * 3 + _nbytes(model.buffers())  # weights, gradients, momentum; BatchNorm's statistics
    images = device_layout(torch.zeros(cfg.batch_size, 3, size, size, device=device))
    views = 2 if cfg.loader_config().distill_term().spec.pairs else 1
    activations = saved_bytes(model, images, device, cfg.amp) + _nbytes([images])
    return state + views * activations


@dataclass(frozen=True)
class Capacity:
    """How many students of one kind fit on a device (measured before training)."""

    students: int  # the largest number that fits (0: not even one)
    per_student: int  # bytes
    free: int  # bytes free for students (the device's free memory less the data still to be held)
    device: str

    def describe(self) -> str:
        return (
            f"the {self.device} has room for {self.students} of them (each takes about "
            f"{self.per_student / 2**20:,.0f} MiB; {self.free / 2**30:,.1f} GiB free)"
        )


def capacity(cfg: TrainConfig, data: TrainData) -> Capacity:
    """How many students like cfg's fit together: the device's free memory, less the splits a
    loader will still hold there (decoded once for all), over one student's measured bytes."""
    device = resolve_device(cfg.device)
    free = free_bytes(device)
    betons = (data.train_beton, data.val_beton)
    if holds(cfg.loader, betons, data.image_size, device):
        free -= sum(decoded_bytes(b, data.image_size) for b in betons)
    per = student_bytes(cfg, data)
    n = max(0, int(max(free, 0) * HEADROOM // per))
    return Capacity(students=n, per_student=per, free=max(free, 0), device=device.type)
