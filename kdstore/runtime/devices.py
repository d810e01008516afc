"""The device a command runs on: `--device auto|cpu|cuda`."""

from __future__ import annotations

import torch

from kdstore.errors import KdstoreError

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise KdstoreError("--device cuda was asked for but no CUDA device is available")
    try:
        return torch.device(device)
    except RuntimeError:
        raise KdstoreError(f"unknown device {device!r}; use auto, cpu or cuda") from None
