"""How models and batches sit on a device: mixed precision (bf16 autocast on CUDA) and memory
layout (channels_last on CUDA, with cuDNN's autotuner). Every forward (the student's step, the
teacher in `cache`, online KD and the student scorer, evaluation) goes through these."""

from __future__ import annotations

import torch
import torch.nn as nn


def autocast(device: torch.device, enabled: bool):
    """Mixed precision on CUDA (bf16 where supported, else fp16); a no-op elsewhere."""
    on = enabled and device.type == "cuda"
    dtype = torch.bfloat16 if on and torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast(device.type, dtype=dtype, enabled=on)


def grad_scaler(device: torch.device, amp: bool) -> torch.amp.GradScaler:
    """Loss scaling only where fp16 autocast needs it (CUDA without bf16)."""
    return torch.amp.GradScaler(
        device.type, enabled=amp and device.type == "cuda" and not torch.cuda.is_bf16_supported()
    )


def for_device(model: nn.Module, device: torch.device) -> nn.Module:
    """A model on `device`; on CUDA in channels_last (what cuDNN's fast convolutions want), with
    cuDNN's autotuner on (input shapes are fixed within a run)."""
    model.to(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        model.to(memory_format=torch.channels_last)
    return model


def device_layout(x: torch.Tensor) -> torch.Tensor:
    """A batch in the layout `for_device` models take: channels_last on CUDA, as it is elsewhere."""
    return x.contiguous(memory_format=torch.channels_last) if x.is_cuda and x.dim() == 4 else x
