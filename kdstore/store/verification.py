"""`kdstore verify`: every byte of a store checked (sha256 against MANIFEST.json, the small
datasets through their checksums, the large ones block by block, the open-time checks)."""

from __future__ import annotations

from pathlib import Path

from kdstore.errors import KdstoreError
from kdstore.runtime.hashing import sha256_file
from kdstore.store.format import MANIFEST, Store, read_manifest


def verify(path: Path | str) -> list[str]:
    """Recompute every file's sha256 against the manifest, then open the store with every check
    (large arrays read through block by block); returns one line per problem."""
    path = Path(path)
    problems = hash_problems(path)
    if not problems:
        try:
            Store.open(path, full=True)
        except KdstoreError as e:
            problems.append(str(e))
    return problems


def hash_problems(path: Path | str) -> list[str]:
    """Every file's sha256 against the manifest (the bytes the writer checked when it published
    the store); one line per problem. `verify` adds the structural checks of an open."""
    path = Path(path)
    if not (path / MANIFEST).is_file():
        return [f"{path}: no {MANIFEST} (incomplete store)"]
    try:
        recorded = read_manifest(path)["sha256"]
    except KdstoreError as e:
        return [str(e)]
    problems = []
    for name, digest in recorded.items():
        if not (path / name).is_file():
            problems.append(f"{name}: missing")
        elif sha256_file(path / name) != digest:
            problems.append(f"{name}: sha256 differs from the manifest (file changed or corrupt)")
    return problems
