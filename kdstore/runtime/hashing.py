"""sha256 of files and open file objects, read in chunks (stores, checkpoints)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import BinaryIO


def sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return sha256_stream(f)


def sha256_stream(f: BinaryIO, chunk: int = 4 << 20) -> str:
    """sha256 of an open binary file, from its start."""
    h = hashlib.sha256()
    f.seek(0)
    while block := f.read(chunk):
        h.update(block)
    return h.hexdigest()
