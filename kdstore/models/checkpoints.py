"""Checkpoints: a plain dict {"state_dict": ..., "meta": {...}} of tensors and plain types, so it
loads with torch.load(weights_only=True); `meta` says how to rebuild the model. Saved atomically."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from kdstore.errors import KdstoreError
from kdstore.runtime.files import writing


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Atomic torch.save: write a sibling temp file, then rename over `path`."""
    path = Path(path)
    for stale in path.parent.glob(f".{path.name}.tmp-*"):  # left by a killed save
        stale.unlink(missing_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    kept = "the previous checkpoint is kept" if path.is_file() else ""
    try:
        with writing(path, kept):
            torch.save(payload, tmp)
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """torch.load(weights_only=True); a pickle payload or a foreign file is refused in one line."""
    path = Path(path)
    if not path.is_file():
        raise KdstoreError(f"checkpoint {path} does not exist")
    try:
        with warnings.catch_warnings():  # torch's warnings about a refused pickle: the one-line error says it
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for a bad file
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise KdstoreError(f"checkpoint {path} cannot be loaded safely (weights_only=True): {first[:200]}") from None
    if isinstance(ckpt, dict) and "state_dict" in ckpt:
        return ckpt
    if isinstance(ckpt, dict) and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        return {"state_dict": ckpt, "meta": {}}
    raise KdstoreError(f"checkpoint {path} is not a state dict or a kdstore checkpoint")


def load_weights(model: nn.Module, ckpt: dict[str, Any], path: Path) -> None:
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as e:
        raise KdstoreError(f"checkpoint {path} does not fit the model: {str(e).splitlines()[0]}") from None
