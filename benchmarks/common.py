"""Helpers for the benchmark scripts: the real CIFAR-10 JPEGs unpacked (a subset) outside the repo."""
from __future__ import annotations

import sys
from pathlib import Path

from kdstore.datasets import unpack_imagefolder_subset

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
