"""Host tensors moved between host and device without making the host wait (pinned memory,
asynchronous copies, one event per download)."""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch


def upload(host: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`host` on `device`: on CUDA through pinned memory (a host copy first, so the caller may
    reuse its buffer at once), so the copy is queued and the host does not wait for it; a tensor
    already there, or any tensor elsewhere, as it is."""
    if host.device.type != "cpu" or device.type != "cuda":
        return host.to(device)
    return host.pin_memory().to(device, non_blocking=True)


def download(tensors: dict[str, torch.Tensor]) -> Callable[[], dict[str, np.ndarray]]:
    """Start copying `tensors` to the host (on CUDA into pinned memory, without waiting); the
    function returned waits for the copies, once, and gives them as numpy arrays."""
    host = {k: v.to("cpu", non_blocking=True) for k, v in tensors.items()}
    on_cuda = any(v.is_cuda for v in tensors.values())
    done = torch.cuda.Event() if on_cuda else None
    if done is not None:
        done.record()

    def wait() -> dict[str, np.ndarray]:
        if done is not None:
            done.synchronize()
        return {k: v.numpy() for k, v in host.items()}

    return wait
