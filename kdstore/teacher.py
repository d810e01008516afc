"""`kdstore teacher`: train (or fine-tune) a teacher with the student loop, straight from a dataset.

There is no store yet, so the dataset is written to FFCV files under OUT/data and the run is the
`unguided` variant (lambda = 0, shuffled): the same loop, augmentation and schedule as students.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from .datasets import load_dataset
from .errors import KdstoreError
from .loading import write_beton
from . import distributed
from .models import normalization_for, resolve_device
from .progress import console
from .splits import split_record, subset
from .store import BETONS
from .train import TrainConfig, TrainData, fit


def run(cfg: TrainConfig, dataset: str, data_root: str | None = None, image_size: int | None = None,
        split: float | None = None, split_seed: int = 0) -> dict[str, Any]:
    """Train model `cfg.student` as a teacher on `dataset`; the checkpoint feeds `kdstore cache`.

    With `split` (e.g. 0.6) it trains on a seeded, class-stratified fraction of the training set
    and records the split in its checkpoint; `cache --split-part holdout` then scores the rest.
    """
    cfg.validate()
    ds = load_dataset(dataset, Path(data_root) if data_root else None, image_size)
    record = None
    if split is not None:
        mask, record = split_record(ds.train, split, split_seed)
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
        train_beton=data_dir / BETONS["train"], val_beton=data_dir / BETONS["val"], num_classes=ds.num_classes,
        image_size=int(ds.train.get(0).shape[0]), mean=mean, std=std,
        meta={"dataset": ds.name, "class_names": list(ds.class_names), "split": record},
    )
    return fit(cfg, data, cfg.student, "teacher")
