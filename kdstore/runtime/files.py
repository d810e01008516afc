"""Writing a file so that a full or read-only disk is one line naming the file and the space left,
not a traceback (torch.save reports a full disk as a RuntimeError from its zip writer)."""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path
from typing import Iterator

from kdstore.errors import DiskError

NEARLY_FULL_MIB = 64  # a disk with less free space than this is said to be full
# how torch.save's zip writer reports a write that stopped short (a full disk), in its own words:
# "[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0"; said plainly instead
TORCH_SHORT_WRITE = "unexpected pos"


def free_mib(path: Path) -> float:
    """Free space, in MiB, on the file system that holds `path` (or its nearest existing parent)."""
    for p in (Path(path), *Path(path).parents):
        if p.exists():
            return shutil.disk_usage(p).free / 2**20
    return float("nan")


@contextlib.contextmanager
def writing(path: Path, kept: str = "") -> Iterator[None]:
    """Inside: code that writes `path`. An OSError or RuntimeError raised there becomes one
    DiskError that names the file, the reason, the free space, and what was `kept`."""
    try:
        yield
    except (OSError, RuntimeError) as e:
        reason = (e.strerror if isinstance(e, OSError) else None) or (
            str(e).strip().splitlines() or [type(e).__name__]
        )[0]
        free = free_mib(Path(path).parent)
        short = TORCH_SHORT_WRITE in reason  # torch's zip writer: "[enforce fail at inline_container.cc:N] ..."
        if free < NEARLY_FULL_MIB or "No space" in reason or short:
            reason = "the disk is full" + ("" if short else f": {reason}")
        raise DiskError(
            f"{path}: could not be written ({reason[:160]}; {free:.1f} MiB free there)" + (f"; {kept}" if kept else "")
        ) from None
