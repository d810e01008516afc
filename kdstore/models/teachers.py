"""A teacher loaded from its weights (a kdstore checkpoint, timm's pretrained weights, or a local
file), with what a store records of it (model, stem, input size, the checkpoint's sha256)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from kdstore.errors import KdstoreError
from kdstore.models.build import build_model
from kdstore.models.checkpoints import load_checkpoint, load_weights
from kdstore.runtime.hashing import sha256_file


@dataclass(frozen=True, kw_only=True)
class TeacherSpec:
    """Which teacher to load: a timm name and/or a checkpoint, and how to build it."""

    teacher: str | None = None  # timm name; taken from the checkpoint's metadata when omitted
    checkpoint: str | None = None  # a kdstore checkpoint or a plain state dict
    pretrained: bool = False
    pretrained_file: str | None = None
    stem: str | None = None  # auto | cifar | imagenet; from the checkpoint when omitted, else auto
    input_size: int | None = None  # teacher input in pixels; the checkpoint's, else the image size


@dataclass
class Teacher:
    model: torch.nn.Module
    meta: dict[str, Any]  # how to rebuild it: model name, classes, input size, stem
    checkpoint_sha256: str  # "" without a checkpoint
    split: dict[str, Any] | None  # the held-out split its checkpoint records, if any


def load_teacher(cfg: "TeacherSpec", num_classes: int, image_size: int) -> Teacher:
    """Build the teacher from timm (and a checkpoint); returns it, its metadata and the checkpoint
    sha256. `cfg` is a TeacherSpec or any config with its fields (CacheConfig has them)."""
    ckpt, meta = None, {}
    if cfg.checkpoint:
        ckpt = load_checkpoint(Path(cfg.checkpoint))
        meta = ckpt.get("meta", {})
    name = cfg.teacher or meta.get("model")
    if name is None:
        raise KdstoreError(f"checkpoint {cfg.checkpoint} does not name its model; pass --teacher")
    if meta.get("model") and cfg.teacher and meta["model"] != cfg.teacher:
        raise KdstoreError(f"checkpoint {cfg.checkpoint} holds a {meta['model']}, not a {cfg.teacher}")
    if meta.get("num_classes") and int(meta["num_classes"]) != num_classes:
        raise KdstoreError(
            f"checkpoint {cfg.checkpoint} has {meta['num_classes']} classes but the dataset has {num_classes}"
        )
    input_size = cfg.input_size or meta.get("input_size") or image_size
    stem = cfg.stem or meta.get("stem") or "auto"
    torch.manual_seed(0)  # a teacher without weights (a random baseline) is the same in every run
    model, model_meta = build_model(
        name,
        num_classes,
        int(input_size),
        stem,
        cfg.pretrained and ckpt is None,
        cfg.pretrained_file if ckpt is None else None,
    )
    digest = ""
    if ckpt is not None and cfg.checkpoint is not None:
        load_weights(model, ckpt, Path(cfg.checkpoint))
        digest = sha256_file(Path(cfg.checkpoint))
    return Teacher(model, model_meta, digest, meta.get("split") or None)
