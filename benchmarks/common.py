"""Helpers for the benchmark scripts: the real CIFAR-10 JPEGs unpacked (a subset) outside the repo."""

from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

from kdstore.cache import write as cache
from kdstore.cache.config import CacheConfig
from kdstore.data.datasets import unpack_imagefolder_subset
from kdstore.train import teacher
from kdstore.train.config import TrainConfig
from kdstore.train.teacher import TeacherConfig

SHARED_CIFAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg.tar.gz"
WORK = Path.home() / ".cache" / "kdstore" / "bench"


def cifar10_subset(train_per_class: int, test_per_class: int) -> Path:
    """Unpack the first N images per class of each split once; returns the imagefolder root."""
    if not SHARED_CIFAR.is_file():
        sys.exit(f"skipped: the real CIFAR-10 JPEGs are not at {SHARED_CIFAR}")
    root = WORK / f"cifar10-{train_per_class}-{test_per_class}"
    done = root / ".complete"
    if done.is_file():
        return root
    unpack_imagefolder_subset(SHARED_CIFAR, root, {"train": train_per_class, "test": test_per_class})
    done.write_text("ok\n")
    return root


def train_teacher(root: Path, spec: str, model: str, epochs: int, seed: int = 0, progress: bool = True) -> Path:
    """Train `model` with `kdstore teacher` under root/teacher, once (a finished run is reused);
    returns its checkpoint."""
    if not (root / "teacher" / "summary.json").is_file():
        teacher.run(
            TeacherConfig(
                model=model,
                dataset=spec,
                training=TrainConfig(
                    out=str(root / "teacher"),
                    epochs=epochs,
                    batch_size=128,
                    lr=0.1,
                    seed=seed,
                    overwrite=True,
                    progress=progress,
                ),
            )
        )
    return root / "teacher" / "checkpoint.pt"


def teacher_and_store(
    root: Path, spec: str, model: str, epochs: int, seed: int = 0, views: int = 0
) -> tuple[Path, float, float]:
    """Train `model` with `kdstore teacher` under root/teacher and cache it to root/store (each
    once: finished steps are reused). Returns the store path and the seconds each step took now."""
    t0 = time.perf_counter()
    checkpoint = train_teacher(root, spec, model, epochs, seed)
    teacher_s = time.perf_counter() - t0
    store = root / "store"
    t0 = time.perf_counter()
    if not (store / "MANIFEST.json").is_file():
        cache.run(CacheConfig(dataset=spec, out=str(store), checkpoint=str(checkpoint), overwrite=True))
    return store, teacher_s, time.perf_counter() - t0


def speed_store(root: Path, store: Path) -> Path:
    """A store of the imagefolder at `root` cached once by a random-weight cifar_resnet20 (speed does
    not depend on the teacher's weights); returns its path."""
    if not (store / "MANIFEST.json").is_file():
        cache.run(
            CacheConfig(
                dataset=f"imagefolder:{root}",
                out=str(store),
                teacher="cifar_resnet20",
                allow_untrained=True,
                overwrite=True,
                progress=False,
            )
        )
    return store


def machine_record(load_before: tuple[float, float, float]) -> dict[str, Any]:
    """What every CPU figure is recorded with: when, where, the torch threads and version, and the
    load averages before the measurement and now (after it)."""
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "load_before": load_before,
        "load_after": os.getloadavg(),
    }
