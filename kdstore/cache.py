"""`kdstore cache`: run the teacher once over a dataset and write a store.

The store is built in a staging directory beside --out and renamed into place only when its
manifest has been written, so --out holds either the previous complete store or the new one.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import __version__, distributed
from .augment import augmentation_for
from .config import differing, opt, write_json
from .datasets import ImageDataset, load_dataset
from .errors import KdstoreError
from .extend import add_views
from .ffcv_files import fingerprint_beton, write_beton
from .inference import chunk_paths, clean_forward, column, column_blocks, keep_views, score_beton, stored_outputs, views_forward
from .models import DEVICES, STEMS, TeacherSpec, load_teacher, normalization, resolve_device
from .progress import console
from .splits import holdout
from .precision import for_device
from .store import BETONS, H5_NAME, SCHEMA_VERSION, STORES_DIR, build_split, claim, enclosing_store, near_chance, publish, staging_dir, write_teacher_h5
from .partners import mixed_views
from .targets import Mixing
from .views import MIX_ARRAYS, MIXES, STORED, Views, draw_params, storage_of


@dataclass(frozen=True)
class CacheConfig:
    dataset: str | None = opt(help="digits, cifar10, cifar100 or imagefolder:PATH (not with --add-views).")
    out: str | None = opt(help="Store directory to create (default: stores/DATASET-TEACHER; with only --checkpoint, the checkpoint's directory name stands for TEACHER).", path=True)
    teacher: str | None = opt(help="timm model name (default: the checkpoint's model).")
    checkpoint: str | None = opt(help="Teacher weights saved by kdstore (or a plain state dict).", path=True)
    pretrained: bool = opt(False, "Use timm's pretrained weights for the teacher.")
    pretrained_file: str | None = opt(help="A local timm/torchvision weights file for --pretrained.", path=True)
    stem: str | None = opt(help="Stem of a timm ResNet teacher (default: the checkpoint's, else auto).", choices=STEMS)
    input_size: int | None = opt(help="Teacher input size in pixels (images are resized); default: the checkpoint's, else native.")
    image_size: int | None = opt(help="Size images are stored at (imagefolder); default: the first image's.")
    batch_size: int = opt(256, "Teacher batch size.")
    workers: int = opt(0, "FFCV threads (writing and decoding); 0: one per core (shared among torchrun's processes).")
    device: str = opt("auto", "auto: cuda when available, else cpu.", choices=DEVICES)
    data_root: str | None = opt(help="Where torchvision datasets live (default ~/.cache/kdstore/data).", path=True)
    logits_dtype: str = opt("float16", "dtype of the stored logits.", choices=("float16", "float32"))
    overwrite: bool = opt(False, "Replace an existing store at --out (only once the new one is complete).")
    resume: bool = opt(False, "Continue a killed cache (same options) from its last flushed chunk.")
    split_part: str = opt("all", "holdout: only the training samples the teacher's --split held out.", choices=("all", "holdout"))
    views: int = opt(0, "Also store K augmented views per training image with the teacher's logits on each.")
    topk: int = opt(0, "Keep only the k largest logits of each view (0: all).")
    sample: int = opt(0, "Instead of logits, keep k class ids per view drawn from the teacher's softmax at --sample-tau "
                         "(with replacement): an unbiased KD target (README, 'What is computed').")
    sample_tau: float = opt(4.0, "Temperature of --sample's draws; `train --tau` must equal it.")
    views_seed: int = opt(0, "Seed of the views' augmentation parameters (and of --sample's draws).")
    mix: str = opt("none", "Mixed views: each view mixes its image with a seeded partner's (mixup, or cutmix), the teacher scores the "
                           "mixed image, and train replays it with the partner's label mixed into the CE term.", choices=MIXES)
    mix_alpha: float = opt(1.0, "Beta(alpha, alpha) of the mixing weight.")
    add_views: str | None = opt(help="Extend this store's views to --views K instead (same seed and storage; the first views stay bit for "
                                     "bit; give the store's teacher again). The store is replaced atomically.", path=True)
    allow_untrained: bool = opt(False, "Cache a teacher with random weights (no --checkpoint, --pretrained or --pretrained-file): "
                                       "for speed tests only; students learn nothing from it.")
    amp: bool = opt(True, "Run the teacher in bf16 (autocast) on CUDA; ignored on the CPU.")
    progress: bool = opt(True, "Progress bars.")

    @property
    def out_path(self) -> Path:
        """--out, or stores/DATASET-TEACHER."""
        if self.out:
            return Path(self.out)
        if self.add_views:
            return Path(self.add_views)
        dataset = Path(self.dataset.split(":", 1)[1]).name if self.dataset.startswith("imagefolder:") else self.dataset
        teacher = self.teacher or Path(self.checkpoint or "teacher").resolve().parent.name
        return STORES_DIR / f"{dataset}-{teacher}"

    @property
    def teacher_spec(self) -> TeacherSpec:
        return TeacherSpec(self.teacher, self.checkpoint, self.pretrained, self.pretrained_file, self.stem, self.input_size)

    def validate(self) -> None:
        if (self.dataset is None) == (self.add_views is None):
            raise KdstoreError("give --dataset (a new store) or --add-views STORE (more views for it)")
        if self.add_views and not self.views:
            raise KdstoreError("--add-views STORE needs --views K, the number of views the store should have")
        if self.batch_size < 1:
            raise KdstoreError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.workers < 0:
            raise KdstoreError(f"--workers must be >= 0, got {self.workers}")
        if self.image_size is not None and self.image_size < 8:
            raise KdstoreError(f"--image-size must be >= 8 pixels, got {self.image_size}")
        inside = enclosing_store(self.out_path.parent)
        if inside is not None:
            raise KdstoreError(f"--out {self.out} lies inside the store {inside}; put stores side by side")
        if self.input_size is not None and self.input_size < 8:
            raise KdstoreError(f"--input-size must be >= 8 pixels, got {self.input_size}")
        if self.logits_dtype not in ("float16", "float32"):
            raise KdstoreError(f"--logits-dtype must be float16 or float32, got {self.logits_dtype}")
        if self.teacher is None and self.checkpoint is None and not self.add_views:
            raise KdstoreError("name the teacher with --teacher (and/or give --checkpoint)")
        if not (self.checkpoint or self.pretrained or self.pretrained_file or self.allow_untrained):
            raise KdstoreError(f"teacher {self.teacher} has no trained weights: train it with `kdstore teacher --model {self.teacher} "
                               f"--dataset {self.dataset} --out runs/teacher` and pass --checkpoint runs/teacher/checkpoint.pt "
                               "(or use --pretrained); --allow-untrained caches random weights for speed tests")
        if self.split_part not in ("all", "holdout"):
            raise KdstoreError(f"--split-part must be all or holdout, got {self.split_part}")
        if self.split_part == "holdout" and not self.checkpoint:
            raise KdstoreError("--split-part holdout needs the --checkpoint of a teacher trained with --split")
        if self.views < 0 or self.topk < 0:
            raise KdstoreError(f"--views and --topk must be >= 0, got {self.views} and {self.topk}")
        if self.topk and not self.views:
            raise KdstoreError("--topk applies to stored views: give --views K too")
        if self.sample < 0 or (self.sample and not self.views) or (self.sample and self.topk):
            raise KdstoreError(f"--sample k needs --views K and excludes --topk (got --sample {self.sample}, --views {self.views}, --topk {self.topk})")
        if self.mix not in MIXES or (self.mix != "none" and not self.views) or not (self.mix_alpha > 0 and math.isfinite(self.mix_alpha)):
            raise KdstoreError(f"--mix must be one of {', '.join(MIXES)}, with --views K and --mix-alpha > 0 (got {self.mix}, "
                               f"--views {self.views}, --mix-alpha {self.mix_alpha})")
        if self.sample > 65535 or not (self.sample_tau > 0 and math.isfinite(self.sample_tau)):
            raise KdstoreError(f"--sample must be <= 65535 and --sample-tau > 0, got {self.sample} and {self.sample_tau}")


CHUNK_SAMPLES = 2048  # teacher outputs are flushed to disk about this often (whole batches)


def _stage_state(cfg: CacheConfig, meta: dict[str, Any], digest: str, dataset: ImageDataset) -> dict[str, Any]:
    """What a partial cache depends on; --resume continues only a cache started with the same."""
    return {
        "dataset": dataset.name, "train_size": len(dataset.train), "val_size": len(dataset.val), "teacher": meta,
        "checkpoint_sha256": digest, "pretrained": cfg.pretrained, "pretrained_file": cfg.pretrained_file,
        "batch_size": cfg.batch_size, "image_size": cfg.image_size, "kdstore_version": __version__, "split_part": cfg.split_part,
        "views": cfg.views, "topk": cfg.topk, "sample": cfg.sample, "sample_tau": cfg.sample_tau, "views_seed": cfg.views_seed,
        "mix": cfg.mix, "mix_alpha": cfg.mix_alpha, "amp": cfg.amp,
        "logits_dtype": cfg.logits_dtype,
    }


def _prepare_stage(stage: Path, state: dict[str, Any], resume: bool) -> bool:
    """Create (or, with resume, reopen) the staging directory; True when resuming."""
    state_file = stage / "cache-state.json"
    if resume and state_file.is_file():
        recorded = json.loads(state_file.read_text())
        if recorded != state:
            raise KdstoreError(f"--resume: the partial cache at {stage} was started with different {', '.join(differing(recorded, state))}; rerun without --resume")
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
    if cfg.add_views:
        return add_views(cfg)
    out = claim(cfg.out_path, cfg.overwrite)
    # Under torchrun, rank 0 writes the .beton files and the store; every rank scores a shard.
    ctx, device = distributed.init(resolve_device(cfg.device))
    t_start = time.perf_counter()
    dataset = load_dataset(cfg.dataset, Path(cfg.data_root) if cfg.data_root else None, cfg.image_size)
    image_size = int(dataset.train.get(0).shape[0])
    if cfg.topk >= dataset.num_classes:
        raise KdstoreError(f"--topk {cfg.topk} must be below the {dataset.num_classes} classes")
    teacher = load_teacher(cfg.teacher_spec, dataset.num_classes, image_size)
    model, meta, digest, split = for_device(teacher.model, device), teacher.meta, teacher.checkpoint_sha256, teacher.split
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
    clean = clean_forward(model, mean, std, int(meta["input_size"]), device, cfg.amp)
    passes = {"train": ("train", clean), "val": ("val", clean)}
    if cfg.views:
        params = draw_params(augmentation, len(dataset.train), cfg.views, image_size, cfg.views_seed)
        keep = keep_views(cfg.topk, cfg.sample, cfg.sample_tau, cfg.views_seed)
        mixed = mixed_views(cfg.mix, cfg.mix_alpha, cfg.views_seed, params, augmentation, image_size, stage / BETONS["train"], device, mean, std,
                            cfg.workers)
        passes["views"] = ("train", views_forward(model, mean, std, int(meta["input_size"]), device, params, augmentation, keep,
                                                  Mixing(mixed, device, "auto", mixed.partners) if mixed.mix else None, cfg.amp))
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
                                 np.arange(lo, hi), post, CHUNK_SAMPLES)
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
            stored = STORED[storage_of(cfg.topk, cfg.sample)]
            mix = {k: getattr(mixed, k) for k in ("mix", "mix_alpha", *MIX_ARRAYS)}
            splits["train"].views = Views(augmentation, cfg.views_seed, params, sample_tau=cfg.sample_tau if cfg.sample else 0.0, **mix,
                                          **{k: column_blocks(chunks["views"], k) for k in stored})
        with console.status("fingerprinting the images"):
            parts = [fingerprint_beton(stage / BETONS[name]) for name in ("train", "val")]
        fingerprint = hashlib.sha256("".join(parts).encode()).hexdigest()
        attrs = {
            "schema_version": SCHEMA_VERSION, "kdstore_version": __version__, "teacher": meta["model"], "teacher_stem": meta["stem"],
            "checkpoint_sha256": digest, "pretrained": bool(cfg.pretrained or cfg.pretrained_file), "input_size": int(meta["input_size"]),
            "image_size": image_size, "dataset": dataset.name, "num_classes": dataset.num_classes,
            "class_names": list(dataset.class_names), "dataset_fingerprint": fingerprint,
            "teacher_train_acc": float(splits["train"].correct.mean()), "teacher_val_acc": float(splits["val"].correct.mean()),
            "normalize_mean": list(mean_t), "normalize_std": list(std_t), "split_part": cfg.split_part,
            "split_fraction": float(split["fraction"]) if split else 0.0, "split_seed": int(split["seed"]) if split else -1,
            "split_members_sha256": split["members_sha256"] if split else "",
        }
        with console.status(f"writing {H5_NAME}"):
            write_teacher_h5(stage / H5_NAME, splits, attrs, cfg.logits_dtype)
        (stage / "cache-state.json").unlink()  # first: a kill from here on restarts cleanly instead of resuming
        for leftover in stage.glob("chunks-*"):
            shutil.rmtree(leftover, ignore_errors=True)
        publish(stage, out, {"dataset_fingerprint": fingerprint, "teacher_images_per_s": speed["train"],
                             "created": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    except KeyboardInterrupt:
        raise KdstoreError(f"interrupted; the partial cache is kept in {stage}: rerun with --resume to continue") from None
    except BaseException:
        if ctx.main:
            shutil.rmtree(stage, ignore_errors=True)
        raise
    size = sum(p.stat().st_size for p in out.iterdir())
    warning = near_chance(attrs)
    if warning:
        console.print(f"[bold yellow]warning:[/] {warning}", soft_wrap=True)
    console.print(
        f"[bold]store[/] {out}: teacher {meta['model']} train acc {attrs['teacher_train_acc']:.2%}, "
        f"val acc {attrs['teacher_val_acc']:.2%}; {len(splits['train'])}+{len(splits['val'])} images, "
        f"{size / 2**20:.1f} MiB, {time.perf_counter() - t_start:.1f} s", soft_wrap=True
    )
    return out
