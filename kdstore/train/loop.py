"""`kdstore train` (students from a store) and `kdstore teacher`: one training loop for both.

The loop reads its batches from the public loader (kdstore.loader.StoreLoader: the variant's
order and pacing, augmentation or replayed views, teacher targets and lambda per batch) and
takes the public loss on them (kd_loss, in step.py): it never asks which variant, pacing, scorer
or storage it runs. No teacher model is ever built here (except the online-KD baseline's).

A run is put together in build.py, advanced an epoch at a time in epochs.py, and written to (and
restored from) its directory by run_dir.py; this module runs it (fit) and is the command (run)."""

from __future__ import annotations

import gc
import time
from dataclasses import replace
from typing import Any

from kdstore.errors import Diverged, KdstoreError
from kdstore.loader.source import TrainData, data_from_store
from kdstore.loader.teacher_targets import LogitSource, online_teacher
from kdstore.models.teachers import TeacherSpec, load_teacher
from kdstore.runtime.console import images_progress, say
from kdstore.runtime.devices import resolve_device
from kdstore.runtime.precision import for_device
from kdstore.store.format import Store
from kdstore.store.publish import default_store
from kdstore.store.verification import verify
from kdstore.train.build import RUN_RECORD, BatchHook, Run, build_run
from kdstore.train.config import TrainConfig
from kdstore.train.epochs import epoch_line, run_epoch, scalars_of, train_epoch, val_metrics
from kdstore.train.run_dir import RESUMABLE_CHANGES, diverged, open_run, save_epoch, save_stopped, summarize
from kdstore.train.tensorboard import EventLog

__all__ = [
    "TrainData",
    "data_from_store",
    "Run",
    "BatchHook",
    "build_run",
    "run_epoch",
    "train_epoch",
    "val_metrics",
    "epoch_line",
    "scalars_of",
    "save_epoch",
    "summarize",
    "RUN_RECORD",
    "RESUMABLE_CHANGES",
    "fit",
    "run",
    "run_online",
]


def fit(
    cfg: TrainConfig,
    data: TrainData,
    model_name: str,
    kind: str,
    hook: BatchHook | None = None,
    teacher: LogitSource | None = None,
) -> dict[str, Any]:
    """Train `model_name` on `data` with cfg; writes config.json, metrics.jsonl, summary.json and
    checkpoint.pt under cfg.out. `kind` ("student" or "teacher") goes into the checkpoint.
    `teacher` replaces the cached logits as the KD target (the online-KD baseline)."""
    run = build_run(cfg, data, model_name, kind, hook, teacher)
    caution = run.step.loss.lam_caution(cfg.lam) if run.step.loss is not None else None
    if caution and run.variant.fixed_lambda and run.ctx.main:
        say(f"warning: {caution}")
    start = open_run(run)
    events = EventLog(run.out) if cfg.tensorboard and run.ctx.main else None
    t0 = time.perf_counter()
    with images_progress(cfg.progress and run.ctx.main) as bar:
        for epoch in range(start, cfg.epochs):
            row = run_epoch(run, epoch, bar)
            stop = diverged(run, row)
            if stop is not None:
                path = save_stopped(run, row, stop)
                raise Diverged(f"{run.label} seed {cfg.seed}: {stop}; stopped (its last finite epoch is kept, {path})")
            if run.ctx.main:
                save_epoch(run, row)
                if events is not None:
                    events.epoch(scalars_of(run, row))
                say(epoch_line(run, row, time.perf_counter() - t0, epoch + 1 - start))
    if events is not None:
        events.close()
    summary = summarize(run, model_name, time.perf_counter() - t0)
    del run  # its FFCV loaders and their threads end here, not at interpreter exit
    gc.collect()
    return summary


def run(cfg: TrainConfig, *, hook: BatchHook | None = None) -> dict[str, Any]:
    """Train a student from cfg.store (default: the one store under stores/); returns the summary."""
    cfg.validate()
    if not cfg.store:
        cfg = replace(cfg, store=str(default_store()))
        say(f"using the store {cfg.store}")
    if cfg.verify:
        problems = verify(str(cfg.store))
        if problems:
            raise KdstoreError(
                f"--verify: {problems[0]}" + (f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else "")
            )
    store = Store.open(str(cfg.store))
    return fit(cfg, data_from_store(store), cfg.student, "student", hook)


def run_online(
    cfg: TrainConfig, store: Store, checkpoint: str | None = None, teacher_name: str | None = None
) -> dict[str, Any]:
    """Train a student with online KD (the teacher runs on every batch) through the same loop and
    step as `run`; a baseline for benchmarks, not part of the offline workflow."""
    spec = TeacherSpec(teacher=teacher_name, checkpoint=checkpoint, input_size=int(store.attrs["input_size"]))
    loaded = load_teacher(spec, store.num_classes, int(store.attrs["image_size"]))
    device = resolve_device(cfg.device)
    for_device(loaded.model, device)
    data = data_from_store(store)
    data.meta["online_teacher"] = loaded.meta["model"]
    return fit(
        cfg,
        data,
        cfg.student,
        "student",
        teacher=online_teacher(loaded.model, int(loaded.meta["input_size"]), device, cfg.amp),
    )
