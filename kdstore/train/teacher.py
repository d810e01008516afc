"""`kdstore teacher`: train (or fine-tune) a teacher with the student loop, straight from a dataset.

There is no store yet, so the dataset is written to FFCV files under OUT/data and the run is the
`unguided` variant (lambda = 0, shuffled): the same loop, augmentation and schedule as students."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from kdstore.data.beton import write_beton
from kdstore.data.datasets import load_dataset
from kdstore.data.splits import split_record, subset
from kdstore.errors import KdstoreError
from kdstore.loader.source import TrainData
from kdstore.models.build import normalization_for, offline_weights
from kdstore.options import opt
from kdstore.runtime import distributed
from kdstore.runtime.console import console
from kdstore.runtime.devices import resolve_device
from kdstore.store.format import BETONS
from kdstore.train.config import TrainConfig
from kdstore.train.loop import fit


@dataclass(frozen=True, kw_only=True)
class TeacherConfig:
    """`kdstore teacher`: which model on which data; `training` holds the loop's options (its
    student and variant are set from here: the model, unguided)."""

    model: str = opt(help="timm model name of the teacher.", required=True)
    dataset: str = opt(help="digits, cifar10, cifar100 or imagefolder:PATH.", required=True)
    data_root: str | None = opt(help="Where torchvision datasets live (default ~/.cache/kdstore/data).", path=True)
    image_size: int | None = opt(help="Size images are stored at (imagefolder).")
    split: float | None = opt(help="Train on this seeded, class-stratified fraction of the training set (e.g. 0.6).")
    split_seed: int = opt(0, "Seed of --split.")
    training: TrainConfig = field(default_factory=lambda: TrainConfig(out=""))

    @property
    def train_config(self) -> TrainConfig:
        return replace(self.training, student=self.model, variant="unguided")


def run(teacher: TeacherConfig) -> dict[str, Any]:
    """Train model `teacher.model` as a teacher on its dataset; the checkpoint feeds `kdstore cache`.

    With `split` (e.g. 0.6) it trains on a seeded, class-stratified fraction of the training set
    and records the split in its checkpoint; `cache --split-part holdout` then scores the rest.
    """
    cfg = teacher.train_config
    cfg.validate()
    if teacher.split is not None and not 0.0 < teacher.split < 1.0:
        raise KdstoreError(f"--split must be in (0, 1), got {teacher.split}")
    if cfg.pretrained and not cfg.pretrained_file:
        offline_weights(cfg.student)  # offline and not cached: refused now, before any file is written
    ds = load_dataset(teacher.dataset, Path(teacher.data_root) if teacher.data_root else None, teacher.image_size)
    record = None
    if teacher.split is not None:
        mask, record = split_record(ds.train, teacher.split, teacher.split_seed)
        ds.train = subset(ds.train, mask)
    out = Path(cfg.out)
    if (out / "summary.json").exists() and not cfg.overwrite:
        raise KdstoreError(f"{out} already holds a finished run; pass --overwrite to replace it")
    data_dir = out / "data"
    ctx, _ = distributed.init(resolve_device(cfg.device))
    fresh = not out.exists()
    try:
        if ctx.main:  # under torchrun, rank 0 writes the files the others read
            data_dir.mkdir(parents=True, exist_ok=True)
            for split in ("train", "val"):
                with console.status(f"writing {BETONS[split]}"):
                    write_beton(getattr(ds, split), data_dir / BETONS[split], cfg.workers)
        distributed.barrier(ctx)
        return _fit(cfg, ds, data_dir, record)
    except Exception:
        if ctx.main and not (out / "checkpoint.pt").exists():  # nothing to resume: leave no half-made run
            shutil.rmtree(out if fresh else data_dir, ignore_errors=True)
        raise


def _fit(cfg: TrainConfig, ds, data_dir: Path, record) -> dict[str, Any]:
    mean, std = normalization_for(cfg.student)
    data = TrainData(
        train_beton=data_dir / BETONS["train"],
        val_beton=data_dir / BETONS["val"],
        num_classes=ds.num_classes,
        image_size=int(ds.train.get(0).shape[0]),
        mean=mean,
        std=std,
        meta={"dataset": ds.name, "class_names": list(ds.class_names), "split": record},
    )
    return fit(cfg, data, cfg.student, "teacher")
