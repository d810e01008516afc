"""`kdstore cache`: run the teacher once over a dataset and write a store.

The store is built in a staging directory beside --out and renamed into place only when its
manifest has been written, so --out holds either the previous complete store or the new one.
"""
from __future__ import annotations

import hashlib
import shutil
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import __version__
from .augment import normalize, resize
from .datasets import load_dataset
from .errors import KdstoreError
from .loading import make_loader, write_beton
from .models import build_model, load_checkpoint, load_weights, normalization, resolve_device, sha256_file
from .orders import confidence_and_correct, curriculum, inverse
from .progress import console, images_progress
from .store import BETONS, H5_NAME, Split, Store, commit_dir, staging_dir, write_manifest, write_teacher_h5


@dataclass(frozen=True)
class CacheConfig:
    dataset: str
    out: str
    teacher: str | None = None  # timm name; taken from the checkpoint's metadata when omitted
    checkpoint: str | None = None  # a kdstore checkpoint or a plain state dict
    pretrained: bool = False
    pretrained_file: str | None = None
    stem: str | None = None  # auto | cifar | imagenet; from the checkpoint when omitted, else auto
    input_size: int | None = None  # teacher input in pixels; the dataset's image size when omitted
    image_size: int | None = None  # size images are stored at (imagefolder); native when omitted
    batch_size: int = 256
    workers: int = 2
    device: str = "auto"
    data_root: str | None = None
    logits_dtype: str = "float16"
    overwrite: bool = False
    progress: bool = True

    def validate(self) -> None:
        if self.batch_size < 1:
            raise KdstoreError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.input_size is not None and self.input_size < 8:
            raise KdstoreError(f"--input-size must be >= 8 pixels, got {self.input_size}")
        if self.logits_dtype not in ("float16", "float32"):
            raise KdstoreError(f"--logits-dtype must be float16 or float32, got {self.logits_dtype}")
        if self.teacher is None and self.checkpoint is None:
            raise KdstoreError("name the teacher with --teacher (and/or give --checkpoint)")


def score_beton(
    model: torch.nn.Module, beton: Path, batch_size: int, workers: int, device: torch.device,
    input_size: int, mean: torch.Tensor, std: torch.Tensor, label: str = "", progress: bool = True,
) -> dict[str, Any]:
    """One inference pass over a .beton in file order.

    Returns logits (N, C) float32, labels (N,), sample ids (N,), the split's fingerprint (sha256
    over sample ids, labels and image bytes in order) and the images/s of the pass.
    """
    loader = make_loader(beton, batch_size, workers)
    h = hashlib.sha256()
    logits, labels, ids = [], [], []
    model.eval()
    t0, n = time.perf_counter(), 0
    with images_progress(progress) as bar, torch.inference_mode():
        task = bar.add_task(label, total=len(loader.indices), info="")
        for images, y, sid in loader:  # images: (B, H, W, 3) uint8
            h.update(sid.numpy().astype("<i8").tobytes())
            h.update(y.numpy().astype("<i8").tobytes())
            h.update(images.numpy().tobytes())
            x = resize(normalize(images.to(device, non_blocking=True), mean, std), input_size)
            logits.append(model(x).float().cpu())
            labels.append(y.clone())
            ids.append(sid.clone())
            n += len(y)
            bar.update(task, advance=len(y))
    seconds = time.perf_counter() - t0
    return {
        "logits": torch.cat(logits).numpy(), "labels": torch.cat(labels).numpy().astype(np.int64),
        "sample_id": torch.cat(ids).numpy().astype(np.int64), "fingerprint": h.hexdigest(),
        "images_per_s": n / max(seconds, 1e-9), "seconds": seconds,
    }


def _split_arrays(scored: dict[str, Any], with_orders: bool) -> Split:
    conf, correct = confidence_and_correct(scored["logits"], scored["labels"])
    split = Split(scored["logits"], scored["labels"], scored["sample_id"], conf, correct)
    if with_orders:
        order = curriculum(conf, correct, scored["labels"])
        split.curriculum = scored["sample_id"][order]
        split.inverse = scored["sample_id"][inverse(order)]
    return split


def load_teacher(cfg: CacheConfig, num_classes: int, image_size: int) -> tuple[torch.nn.Module, dict[str, Any], str]:
    """Build the teacher from timm (and a checkpoint); returns it, its metadata and the checkpoint sha256."""
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
        raise KdstoreError(f"checkpoint {cfg.checkpoint} has {meta['num_classes']} classes but the dataset has {num_classes}")
    input_size = cfg.input_size or meta.get("input_size") or image_size
    stem = cfg.stem or meta.get("stem") or "auto"
    model, model_meta = build_model(name, num_classes, int(input_size), stem, cfg.pretrained and ckpt is None, cfg.pretrained_file if ckpt is None else None)
    digest = ""
    if ckpt is not None:
        load_weights(model, ckpt, Path(cfg.checkpoint))
        digest = sha256_file(Path(cfg.checkpoint))
    return model, model_meta, digest


def run(cfg: CacheConfig) -> Path:
    """Write the store; returns its path."""
    cfg.validate()
    out = Path(cfg.out)
    if out.exists() and not cfg.overwrite:
        raise KdstoreError(f"{out} already exists; pass --overwrite to replace it")
    device = resolve_device(cfg.device)
    t_start = time.perf_counter()
    dataset = load_dataset(cfg.dataset, Path(cfg.data_root) if cfg.data_root else None, cfg.image_size)
    image_size = int(dataset.train.get(0).shape[0])
    model, meta, digest = load_teacher(cfg, dataset.num_classes, image_size)
    model.to(device)
    mean_t, std_t = normalization(model)
    mean, std = torch.tensor(mean_t, device=device), torch.tensor(std_t, device=device)

    tmp = staging_dir(out)
    try:
        scored = {}
        for split_name in ("train", "val"):
            beton = tmp / BETONS[split_name]
            with console.status(f"writing {beton.name} ({len(getattr(dataset, split_name))} images)"):
                write_beton(getattr(dataset, split_name), beton, cfg.workers)
            scored[split_name] = score_beton(model, beton, cfg.batch_size, cfg.workers, device, meta["input_size"], mean, std, f"teacher on {split_name}", cfg.progress)
        splits = {name: _split_arrays(s, name == "train") for name, s in scored.items()}
        fingerprint = hashlib.sha256((scored["train"]["fingerprint"] + scored["val"]["fingerprint"]).encode()).hexdigest()
        attrs = {
            "schema_version": 1, "kdstore_version": __version__, "teacher": meta["model"], "teacher_stem": meta["stem"],
            "checkpoint_sha256": digest, "pretrained": bool(cfg.pretrained or cfg.pretrained_file), "input_size": int(meta["input_size"]),
            "image_size": image_size, "dataset": dataset.name, "num_classes": dataset.num_classes,
            "class_names": list(dataset.class_names), "dataset_fingerprint": fingerprint,
            "teacher_train_acc": float(splits["train"].correct.mean()), "teacher_val_acc": float(splits["val"].correct.mean()),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "normalize_mean": list(mean_t), "normalize_std": list(std_t),
        }
        write_teacher_h5(tmp / H5_NAME, splits, attrs, cfg.logits_dtype)
        write_manifest(tmp, {"teacher_images_per_s": scored["train"]["images_per_s"]})
        Store.open(tmp)  # the checks a reader runs, before the store is published
        commit_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    size = sum(p.stat().st_size for p in out.iterdir())
    console.print(
        f"[bold]store[/] {out}: teacher {meta['model']} train acc {attrs['teacher_train_acc']:.2%}, "
        f"val acc {attrs['teacher_val_acc']:.2%}; {len(splits['train'])}+{len(splits['val'])} images, "
        f"{size / 2**20:.1f} MiB, {time.perf_counter() - t_start:.1f} s"
    )
    return out
