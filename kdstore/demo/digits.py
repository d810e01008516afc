"""`kdstore demo`: the whole method on the embedded digits data, small enough for 2 CPU cores.

Trains a small teacher, caches it, trains all six variants briefly from the one store, and
writes the report (table and figures) to OUT/runs/report. Each step is the same library call the CLI commands make."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

from kdstore.cache import write as cache
from kdstore.cache.config import CacheConfig
from kdstore.report import sweep
from kdstore.report.sweep import SweepConfig
from kdstore.train import teacher
from kdstore.train.config import TrainConfig
from kdstore.train.teacher import TeacherConfig

# Sized to finish in a few minutes on 2 cores while leaving a teacher that is clearly better
# than a student trained as briefly.
DEMO: dict[str, Any] = {
    "teacher": "cifar_resnet20",
    "teacher_epochs": 8,
    "teacher_lr": 0.1,
    "student": "cifar_resnet8",
    "student_epochs": 6,
    "batch_size": 64,
    "lr": 0.05,
}


def run(out: Path | str, seeds: tuple[int, ...] = (0,), progress: bool = True) -> dict[str, Any]:
    out = Path(out)
    teacher_dir, store_dir, runs_dir = out / "teacher", out / "store", out / "runs"
    base = TrainConfig(out="", batch_size=DEMO["batch_size"], workers=2, progress=progress, overwrite=True)
    if not (teacher_dir / "summary.json").is_file():
        teacher.run(
            TeacherConfig(
                model=DEMO["teacher"],
                dataset="digits",
                training=replace(base, out=str(teacher_dir), epochs=DEMO["teacher_epochs"], lr=DEMO["teacher_lr"]),
            )
        )
    cache.run(
        CacheConfig(
            dataset="digits",
            out=str(store_dir),
            checkpoint=str(teacher_dir / "checkpoint.pt"),
            overwrite=True,
            progress=progress,
        )
    )
    student = replace(base, store=str(store_dir), student=DEMO["student"], epochs=DEMO["student_epochs"], lr=DEMO["lr"])
    # The store was just rebuilt, so earlier student runs are stale: train them all again.
    shutil.rmtree(runs_dir, ignore_errors=True)
    return sweep.run(
        SweepConfig(variants="paper", seeds=",".join(map(str, seeds)), base=replace(student, out=str(runs_dir)))
    )
