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
from .orders import confidence_and_correct
from .store import BETONS, H5_NAME, SCHEMA_VERSION, Blocks, build_split, enclosing_store, publish, recover, staging_dir, write_teacher_h5
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
        if self.workers < 1:
            raise KdstoreError(f"--workers must be >= 1, got {self.workers}")
        if self.image_size is not None and self.image_size < 8:
            raise KdstoreError(f"--image-size must be >= 8 pixels, got {self.image_size}")
        inside = enclosing_store(Path(self.out).parent) if self.out else None
        if inside is not None:
            raise KdstoreError(f"--out {self.out} lies inside the store {inside}; put stores side by side")
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

# post(outputs of a batch as numpy arrays, its labels) -> what is kept of them
Post = Callable[[dict[str, np.ndarray], np.ndarray], dict[str, np.ndarray]]


def stored_outputs(logits_dtype: str) -> Post:
    """What a store keeps of a batch: logits in the stored dtype and, for clean images, each
    sample's confidence and correctness computed from the float32 logits first."""
    def post(out: dict[str, np.ndarray], labels: np.ndarray) -> dict[str, np.ndarray]:
        kept = dict(out)
        if "logits" in out and out["logits"].ndim == 2:
            kept["confidence"], kept["correct"] = confidence_and_correct(out["logits"], labels)
        for key in ("logits", "topk_values"):
            if key in kept:
                kept[key] = kept[key].astype(logits_dtype)
        return kept

    return post


def scores_only(out: dict[str, np.ndarray], labels: np.ndarray) -> dict[str, np.ndarray]:
    """A scorer keeps confidence and correctness, not the (N, C) logits."""
    confidence, correct = confidence_and_correct(out["logits"], labels)
    return {"confidence": confidence, "correct": correct}


def chunk_paths(chunk_dir: Path) -> list[Path]:
    """The contiguous chunks 000000.npz, 000001.npz, ... flushed so far (each is whole or absent)."""
    paths = []
    while (path := chunk_dir / f"{len(paths):06d}.npz").is_file():
        paths.append(path)
    return paths


def _save_chunk(chunk_dir: Path, index: int, chunk: dict[str, np.ndarray]) -> None:
    tmp = chunk_dir / f".{index:06d}.tmp.npz"
    np.savez(tmp, **chunk)
    os.replace(tmp, chunk_dir / f"{index:06d}.npz")  # atomic: a chunk file is whole or absent


def column(paths: list[Path], key: str) -> np.ndarray:
    """One output over all chunks, concatenated (for the small per-sample arrays)."""
    parts = []
    for path in paths:
        with np.load(path) as z:
            parts.append(z[key])
    return np.concatenate(parts)


def column_blocks(paths: list[Path], key: str) -> Blocks:
    """One large output over all chunks, as blocks read one chunk at a time (never all at once)."""
    n, shape, dtype = 0, None, None
    for path in paths:
        with np.load(path, mmap_mode=None) as z:
            n += len(z["labels"])
            if shape is None:
                first = z[key]
                shape, dtype = first.shape[1:], first.dtype

    def read():
        for path in paths:
            with np.load(path) as z:
                yield z[key]

    return Blocks((n, *shape), dtype, read)


def _cat(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def score_beton(
    forward: Forward, beton: Path, batch_size: int, workers: int, label: str = "", progress: bool = True,
    chunk_dir: Path | None = None, positions: np.ndarray | None = None, post: Post = scores_only,
) -> dict[str, Any]:
    """One inference pass over a .beton (or its `positions`) in file order.

    Each batch's outputs (forward's, then `post` on them) go, with labels and sample ids, to
    numbered chunk files in `chunk_dir`, flushed every CHUNK_SAMPLES images (whole batches); a
    pass killed earlier continues after its last flushed chunk, with the same batches as one pass.
    Without `chunk_dir` they are returned, concatenated (for small outputs only). Also returns
    the images/s and seconds of the pass.
    """
    if positions is None:
        positions = np.arange(len(read_int_fields(beton)["sample_id"]))
    n_total = len(positions)
    done: list[Path] = []
    if chunk_dir is not None:
        chunk_dir.mkdir(exist_ok=True)
        done = chunk_paths(chunk_dir)
    start = len(column(done, "labels")) if done else 0
    batches_per_chunk = max(1, CHUNK_SAMPLES // batch_size)
    kept: list[dict[str, np.ndarray]] = []  # without chunk_dir: every batch
    parts: list[dict[str, np.ndarray]] = []  # with chunk_dir: the batches of the coming chunk
    index = len(done)
    t0, n = time.perf_counter(), 0
    with images_progress(progress) as bar, torch.inference_mode():
        task = bar.add_task(label, total=n_total, completed=start, info="resumed" if start else "")
        if start < n_total:
            loader = make_loader(beton, batch_size, workers, indices=positions[start:])
            for b, (images, y, sid) in enumerate(loader, 1):  # images: (B, H, W, 3) uint8
                labels = y.numpy().astype(np.int64)  # copies: FFCV reuses its buffers
                outputs = {k: v.cpu().numpy() for k, v in forward(images, positions[start + n:start + n + len(y)]).items()}
                batch = {**post(outputs, labels), "labels": labels, "sample_id": sid.numpy().astype(np.int64)}
                (parts if chunk_dir is not None else kept).append(batch)
                n += len(y)
                bar.update(task, advance=len(y))
                if chunk_dir is not None and b % batches_per_chunk == 0:
                    _save_chunk(chunk_dir, index, _cat(parts))
                    index, parts = index + 1, []
    if parts:
        _save_chunk(chunk_dir, index, _cat(parts))
    seconds = time.perf_counter() - t0
    result: dict[str, Any] = _cat(kept) if kept else {}
    result.update(images_per_s=n / max(seconds, 1e-9), seconds=seconds)
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
        "views": cfg.views, "topk": cfg.topk, "views_seed": cfg.views_seed, "logits_dtype": cfg.logits_dtype,
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
    recover(out)
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
        speed = {}
        chunk_dir = lambda pass_name, rank: stage / f"chunks-{pass_name}-r{rank}of{ctx.world}"  # noqa: E731
        post = stored_outputs(cfg.logits_dtype)
        for pass_name, (split_name, forward) in passes.items():
            beton = stage / BETONS[split_name]
            if ctx.main and not beton.is_file():
                tmp = stage / f".{beton.name}.tmp"
                with console.status(f"writing {beton.name} ({len(getattr(dataset, split_name))} images)"):
                    write_beton(getattr(dataset, split_name), tmp, cfg.workers)
                os.replace(tmp, beton)
            distributed.barrier(ctx)
            lo, hi = distributed.shard(len(getattr(dataset, split_name)), cfg.batch_size, ctx.rank, ctx.world)
            label = f"teacher on {split_name}" + (f" ({cfg.views} views)" if pass_name == "views" else "")
            scored = score_beton(forward, beton, cfg.batch_size, cfg.workers, label, cfg.progress and ctx.main, chunk_dir(pass_name, ctx.rank),
                                 np.arange(lo, hi), post)
            speed[pass_name] = scored["images_per_s"] * ctx.world
            distributed.barrier(ctx)
        if not ctx.main:
            return out
        # The main rank joins the chunks every rank flushed, in rank order, one chunk at a time.
        chunks = {p: [path for r in range(ctx.world) for path in chunk_paths(chunk_dir(p, r))] for p in passes}
        splits = {name: build_split(column_blocks(chunks[name], "logits"), column(chunks[name], "labels"), column(chunks[name], "sample_id"),
                                    column(chunks[name], "confidence"), column(chunks[name], "correct"), with_orders=name == "train")
                  for name in ("train", "val")}
        if cfg.views:
            if not np.array_equal(column(chunks["views"], "sample_id"), splits["train"].sample_id):
                raise KdstoreError("internal error: the views pass visited the training images in another order")
            stored = ("logits",) if not cfg.topk else ("topk_values", "topk_indices", "fill")
            splits["train"].views = Views(augmentation, cfg.views_seed, params, **{k: column_blocks(chunks["views"], k) for k in stored})
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
        with console.status(f"writing {H5_NAME}"):
            write_teacher_h5(stage / H5_NAME, splits, attrs, cfg.logits_dtype)
        (stage / "cache-state.json").unlink()  # first: a kill from here on restarts cleanly instead of resuming
        for leftover in stage.glob("chunks-*"):
            shutil.rmtree(leftover, ignore_errors=True)
        publish(stage, out, {"dataset_fingerprint": fingerprint, "teacher_images_per_s": speed["train"]})
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
