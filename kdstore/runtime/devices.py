"""The device a command runs on: `--device auto|cpu|cuda`."""

from __future__ import annotations

import os

import torch

from kdstore.errors import KdstoreError

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(device: str) -> torch.device:
    """The torch device for --device. Asking whether CUDA is there goes through NVML, which does
    not initialise CUDA in this process: FFCV's writer, forked later, never inherits a CUDA state."""
    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise KdstoreError("--device cuda was asked for but no CUDA device is available")
    try:
        return torch.device(device)
    except RuntimeError:
        raise KdstoreError(f"unknown device {device!r}; use auto, cpu or cuda") from None
