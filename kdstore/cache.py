"""`kdstore cache`: run the teacher once over a dataset and write a store.

The store is built in a staging directory beside --out and renamed into place only when its
manifest has been written, so --out holds either the previous complete store or the new one.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from . import __version__, distributed
from .augment import AUGMENTATIONS, augmentation_for, normalize, resize
from .config import write_json
from .datasets import ImageDataset, load_dataset
from .errors import KdstoreError
from .loading import fingerprint_beton, make_loader, read_int_fields, write_beton
from .models import build_model, load_checkpoint, load_weights, normalization, resolve_device, sha256_file
from .progress import console, images_progress
from .splits import holdout
from .store import BETONS, SCHEMA_VERSION, build_split, publish, staging_dir
from .views import Views, draw_params, topk_compress


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
    resume: bool = False  # continue a killed cache of the same options from its last flushed chunk
    split_part: str = "all"  # all | holdout: only the training samples the teacher's split held out
    views: int = 0  # augmented views per training sample scored and stored (0: the clean images only)
    topk: int = 0  # store only the k largest logits of each view (0: all)
    views_seed: int = 0  # seed of the views' augmentation parameters
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
        if self.split_part not in ("all", "holdout"):
            raise KdstoreError(f"--split-part must be all or holdout, got {self.split_part}")
        if self.split_part == "holdout" and not self.checkpoint:
            raise KdstoreError("--split-part holdout needs the --checkpoint of a teacher trained with --split")
        if self.views < 0 or self.topk < 0:
            raise KdstoreError(f"--views and --topk must be >= 0, got {self.views} and {self.topk}")
        if self.topk and not self.views:
            raise KdstoreError("--topk applies to stored views: give --views K too")


def teacher_forward(model: torch.nn.Module, images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
                    input_size: int, device: torch.device) -> torch.Tensor:
    """Teacher logits (B, C) float32 for a batch of (B, H, W, 3) uint8 images, on `device`."""
    x = resize(normalize(images.to(device, non_blocking=True), mean, std), input_size)
    return model(x).float()


# forward(images (B, H, W, 3) uint8, their .beton positions (B,)) -> named outputs, each (B, ...)
Forward = Callable[[torch.Tensor, np.ndarray], dict[str, torch.Tensor]]


def clean_forward(model: torch.nn.Module, mean: torch.Tensor, std: torch.Tensor, input_size: int, device: torch.device) -> Forward:
    """Logits of the un-augmented images."""
    model.eval()
    return lambda images, pos: {"logits": teacher_forward(model, images, mean, std, input_size, device)}


def views_forward(model: torch.nn.Module, mean: torch.Tensor, std: torch.Tensor, input_size: int, device: torch.device,
                  params: np.ndarray, augmentation: str, topk: int) -> Forward:
    """Logits of every stored view of each image (one batched forward per view): (B, K, C), or
    their top-k form. The views are made exactly as `train` replays them: normalise, then
    augment with the stored parameters, then resize to the teacher's input."""
    model.eval()
    aug = AUGMENTATIONS[augmentation]
    table = torch.from_numpy(params).long().to(device)  # (N, K, P)

    def forward(images: torch.Tensor, pos: np.ndarray) -> dict[str, torch.Tensor]:
        x = normalize(images.to(device, non_blocking=True), mean, std)
        p = table[torch.from_numpy(pos).to(device)]
        logits = torch.stack([model(resize(aug.apply(x, p[:, k]), input_size)).float() for k in range(p.shape[1])], 1)
        return topk_compress(logits, topk) if topk else {"logits": logits}

    return forward


CHUNK_SAMPLES = 2048  # teacher outputs are flushed to disk about this often (whole batches)


def _load_chunks(chunk_dir: Path) -> list[dict[str, np.ndarray]]:
    """The contiguous chunks 000000.npz, 000001.npz, ... flushed by an earlier, killed pass."""
    chunks = []
    while (path := chunk_dir / f"{len(chunks):06d}.npz").is_file():
        with np.load(path) as z:
            chunks.append({k: z[k] for k in z.files})
    return chunks


def _save_chunk(chunk_dir: Path, index: int, parts: dict[str, list[torch.Tensor]]) -> dict[str, np.ndarray]:
    chunk = {k: torch.cat(v).numpy() for k, v in parts.items()}
    tmp = chunk_dir / f".{index:06d}.tmp.npz"
    np.savez(tmp, **chunk)
    os.replace(tmp, chunk_dir / f"{index:06d}.npz")  # atomic: a chunk file is whole or absent
    return chunk


def score_beton(
    forward: Forward, beton: Path, batch_size: int, workers: int, label: str = "", progress: bool = True,
    chunk_dir: Path | None = None, positions: np.ndarray | None = None,
) -> dict[str, Any]:
    """One inference pass over a .beton (or its `positions`) in file order.

    Returns forward's outputs (e.g. logits (N, C) float32), labels (N,), sample ids (N,) and the
    images/s of the pass.
    With `chunk_dir`, every output is flushed there in chunks of whole batches, and a pass killed
    earlier continues after its last flushed chunk (the batches are the same as in one pass).
    """
    if positions is None:
        positions = np.arange(len(read_int_fields(beton)["sample_id"]))
    n_total = len(positions)
    chunks: list[dict[str, np.ndarray]] = []
    if chunk_dir is not None:
        chunk_dir.mkdir(exist_ok=True)
        chunks = _load_chunks(chunk_dir)
    start = sum(len(c["labels"]) for c in chunks)
    batches_per_chunk = max(1, CHUNK_SAMPLES // batch_size)
    parts: dict[str, list[torch.Tensor]] = {"labels": [], "sample_id": []}
    t0, n = time.perf_counter(), 0
    with images_progress(progress) as bar, torch.inference_mode():
        task = bar.add_task(label, total=n_total, completed=start, info="resumed" if start else "")
        if start < n_total:
            loader = make_loader(beton, batch_size, workers, indices=positions[start:])
            for b, (images, y, sid) in enumerate(loader, 1):  # images: (B, H, W, 3) uint8
                for key, value in forward(images, positions[start + n:start + n + len(y)]).items():
                    parts.setdefault(key, []).append(value.cpu())
                parts["labels"].append(y.clone())  # FFCV reuses its buffers
                parts["sample_id"].append(sid.clone())
                n += len(y)
                bar.update(task, advance=len(y))
                if chunk_dir is not None and b % batches_per_chunk == 0:
                    chunks.append(_save_chunk(chunk_dir, len(chunks), parts))
                    parts = {k: [] for k in parts}
    if parts["labels"]:
        chunks.append(_save_chunk(chunk_dir, len(chunks), parts) if chunk_dir is not None else {k: torch.cat(v).numpy() for k, v in parts.items()})
    seconds = time.perf_counter() - t0
    result = _concat(chunks)
    result.update(images_per_s=n / max(seconds, 1e-9), seconds=seconds)
    return result


def _concat(chunks: list[dict[str, np.ndarray]]) -> dict[str, Any]:
    result = {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
    result["labels"] = result["labels"].astype(np.int64)
    result["sample_id"] = result["sample_id"].astype(np.int64)
    return result


@dataclass
class Teacher:
    model: torch.nn.Module
    meta: dict[str, Any]  # how to rebuild it: model name, classes, input size, stem
    checkpoint_sha256: str  # "" without a checkpoint
    split: dict[str, Any] | None  # the held-out split its checkpoint records, if any


def load_teacher(cfg: CacheConfig, num_classes: int, image_size: int) -> Teacher:
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
    torch.manual_seed(0)  # a teacher without weights (a random baseline) is the same in every run
    model, model_meta = build_model(name, num_classes, int(input_size), stem, cfg.pretrained and ckpt is None, cfg.pretrained_file if ckpt is None else None)
    digest = ""
    if ckpt is not None:
        load_weights(model, ckpt, Path(cfg.checkpoint))
        digest = sha256_file(Path(cfg.checkpoint))
    return Teacher(model, model_meta, digest, meta.get("split") or None)


def _stage_state(cfg: CacheConfig, meta: dict[str, Any], digest: str, dataset: ImageDataset) -> dict[str, Any]:
    """What a partial cache depends on; --resume continues only a cache started with the same."""
    return {
        "dataset": dataset.name, "train_size": len(dataset.train), "val_size": len(dataset.val), "teacher": meta,
        "checkpoint_sha256": digest, "pretrained": cfg.pretrained, "pretrained_file": cfg.pretrained_file,
        "batch_size": cfg.batch_size, "image_size": cfg.image_size, "kdstore_version": __version__, "split_part": cfg.split_part,
        "views": cfg.views, "topk": cfg.topk, "views_seed": cfg.views_seed,
    }


def _prepare_stage(stage: Path, state: dict[str, Any], resume: bool) -> bool:
    """Create (or, with resume, reopen) the staging directory; True when resuming."""
    state_file = stage / "cache-state.json"
    if resume and state_file.is_file():
        recorded = json.loads(state_file.read_text())
        if recorded != state:
            differing = sorted(k for k in set(state) | set(recorded) if recorded.get(k) != state.get(k))
            raise KdstoreError(f"--resume: the partial cache at {stage} was started with different {', '.join(differing)}; rerun without --resume")
        return True
    if stage.exists():
        shutil.rmtree(stage)
    stage.mkdir(parents=True)
    write_json(state_file, state)
    return False


def run(cfg: CacheConfig) -> Path:
    """Write the store; returns its path.

    The store is built in OUT's hidden sibling `.NAME.partial`; a cache killed part-way leaves it
    there, and `resume=True` continues from the last flushed chunk of teacher outputs.
    """
    cfg.validate()
    out = Path(cfg.out)
    if out.exists() and not cfg.overwrite:
        raise KdstoreError(f"{out} already exists; pass --overwrite to replace it")
    # Under torchrun, rank 0 writes the .beton files and the store; every rank scores a shard.
    ctx, device = distributed.init(resolve_device(cfg.device))
    t_start = time.perf_counter()
    dataset = load_dataset(cfg.dataset, Path(cfg.data_root) if cfg.data_root else None, cfg.image_size)
    image_size = int(dataset.train.get(0).shape[0])
    if cfg.topk >= dataset.num_classes:
        raise KdstoreError(f"--topk {cfg.topk} must be below the {dataset.num_classes} classes")
    teacher = load_teacher(cfg, dataset.num_classes, image_size)
    model, meta, digest, split = teacher.model.to(device), teacher.meta, teacher.checkpoint_sha256, teacher.split
    if cfg.split_part == "holdout":
        if not split:
            raise KdstoreError(f"--split-part holdout: checkpoint {cfg.checkpoint} was not trained with --split, so nothing was held out")
        dataset.train = holdout(dataset.train, split)
    mean_t, std_t = normalization(model)
    mean, std = torch.tensor(mean_t, device=device), torch.tensor(std_t, device=device)

    stage = staging_dir(out)
    state = {**_stage_state(cfg, meta, digest, dataset), "processes": ctx.world}
    distributed.agree(ctx, "the cache's inputs", json.dumps(state, sort_keys=True))
    if ctx.main and _prepare_stage(stage, state, cfg.resume):
        console.print(f"resuming the partial cache in {stage}")
    distributed.barrier(ctx)
    # Passes over the images: each split's clean images, then (--views K) K augmented views of
    # every training image, drawn up front so that every rank and a resumed pass see the same.
    augmentation = augmentation_for(image_size)
    clean = clean_forward(model, mean, std, int(meta["input_size"]), device)
    passes = {"train": ("train", clean), "val": ("val", clean)}
    if cfg.views:
        params = draw_params(augmentation, len(dataset.train), cfg.views, image_size, cfg.views_seed)
        passes["views"] = ("train", views_forward(model, mean, std, int(meta["input_size"]), device, params, augmentation, cfg.topk))
    try:
        scored = {}
        for pass_name, (split_name, forward) in passes.items():
            beton = stage / BETONS[split_name]
            if ctx.main and not beton.is_file():
                tmp = stage / f".{beton.name}.tmp"
                with console.status(f"writing {beton.name} ({len(getattr(dataset, split_name))} images)"):
                    write_beton(getattr(dataset, split_name), tmp, cfg.workers)
                os.replace(tmp, beton)
            distributed.barrier(ctx)
            lo, hi = distributed.shard(len(getattr(dataset, split_name)), cfg.batch_size, ctx.rank, ctx.world)
            chunk_dir = lambda rank: stage / f"chunks-{pass_name}-r{rank}of{ctx.world}"  # noqa: E731
            label = f"teacher on {split_name}" + (f" ({cfg.views} views)" if pass_name == "views" else "")
            scored[pass_name] = score_beton(forward, beton, cfg.batch_size, cfg.workers, label, cfg.progress and ctx.main, chunk_dir(ctx.rank), np.arange(lo, hi))
            distributed.barrier(ctx)
            if ctx.active:  # the main rank joins the shards every rank flushed
                speed = scored[pass_name]["images_per_s"] * ctx.world
                scored[pass_name] = {**_concat([c for r in range(ctx.world) for c in _load_chunks(chunk_dir(r))]), "images_per_s": speed}
        if not ctx.main:
            return out
        splits = {name: build_split(scored[name]["logits"], scored[name]["labels"], scored[name]["sample_id"], with_orders=name == "train")
                  for name in ("train", "val")}
        if cfg.views:
            v = scored["views"]
            if not np.array_equal(v["sample_id"], splits["train"].sample_id):
                raise KdstoreError("internal error: the views pass visited the training images in another order")
            splits["train"].views = Views(augmentation, cfg.views_seed, params, **{k: v[k] for k in ("logits", "topk_values", "topk_indices", "fill") if k in v})
        with console.status("fingerprinting the images"):
            parts = [fingerprint_beton(stage / BETONS[name], cfg.workers) for name in ("train", "val")]
        fingerprint = hashlib.sha256("".join(parts).encode()).hexdigest()
        attrs = {
            "schema_version": SCHEMA_VERSION, "kdstore_version": __version__, "teacher": meta["model"], "teacher_stem": meta["stem"],
            "checkpoint_sha256": digest, "pretrained": bool(cfg.pretrained or cfg.pretrained_file), "input_size": int(meta["input_size"]),
            "image_size": image_size, "dataset": dataset.name, "num_classes": dataset.num_classes,
            "class_names": list(dataset.class_names), "dataset_fingerprint": fingerprint,
            "teacher_train_acc": float(splits["train"].correct.mean()), "teacher_val_acc": float(splits["val"].correct.mean()),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "normalize_mean": list(mean_t), "normalize_std": list(std_t), "split_part": cfg.split_part,
            "split_fraction": float(split["fraction"]) if split else 0.0, "split_seed": int(split["seed"]) if split else -1,
            "split_members_sha256": split["members_sha256"] if split else "",
        }
        for leftover in stage.glob("chunks-*"):
            shutil.rmtree(leftover, ignore_errors=True)
        (stage / "cache-state.json").unlink()
        publish(stage, out, splits, attrs, cfg.logits_dtype, {"dataset_fingerprint": fingerprint, "teacher_images_per_s": scored["train"]["images_per_s"]})
    except KeyboardInterrupt:
        raise KdstoreError(f"interrupted; the partial cache is kept in {stage}: rerun with --resume to continue") from None
    except BaseException:
        if ctx.main:
            shutil.rmtree(stage, ignore_errors=True)
        raise
    size = sum(p.stat().st_size for p in out.iterdir())
    console.print(
        f"[bold]store[/] {out}: teacher {meta['model']} train acc {attrs['teacher_train_acc']:.2%}, "
        f"val acc {attrs['teacher_val_acc']:.2%}; {len(splits['train'])}+{len(splits['val'])} images, "
        f"{size / 2**20:.1f} MiB, {time.perf_counter() - t_start:.1f} s"
    )
    return out
