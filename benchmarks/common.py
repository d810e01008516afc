"""Helpers for the benchmark scripts: the real CIFAR-10 JPEGs unpacked (a subset) outside the repo."""
from __future__ import annotations

import sys
import tarfile
from pathlib import Path

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
    want = {"train": train_per_class, "test": test_per_class}
    taken: dict[tuple[str, str], int] = {}
    with tarfile.open(SHARED_CIFAR, "r:gz") as tar:
        for member in tar:
            parts = Path(member.name).parts
            if not member.isfile() or len(parts) < 3 or parts[-3] not in want:
                continue
            key = (parts[-3], parts[-2])
            if taken.get(key, 0) >= want[parts[-3]]:
                continue
            taken[key] = taken.get(key, 0) + 1
            target = root / parts[-3] / parts[-2] / parts[-1]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(tar.extractfile(member).read())
    done.write_text("ok\n")
    return root
