"""Publishing a store: claiming its --out (only a store or an empty directory is ever replaced),
the hidden staging directory beside it, and the one rename that makes a complete store appear
(claim, fresh_stage, publish, recover, commit_dir), and finding a store (default_store)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from kdstore.errors import KdstoreError
from kdstore.store.format import BETONS, H5_NAME, MANIFEST, Store, write_manifest


def publish(stage: Path, out: Path, info: dict[str, Any]) -> Store:
    """Finish a store built in `stage` (its .beton files and teacher.h5 already there): the
    manifest, then every check a reader and `verify` run, then kdstore's books removed (a complete
    store is marked by its MANIFEST) and the rename to `out`. Returns the store as opened."""
    write_manifest(stage, info)
    store = Store.open(stage, full=True)
    shutil.rmtree(stage / STAGE_MARKER, ignore_errors=True)
    commit_dir(stage, out)
    return store


def enclosing_store(path: Path) -> Path | None:
    """The store directory `path` lies in or is (a directory with MANIFEST.json and teacher.h5), if any."""
    p = Path(path).expanduser().resolve()
    for d in (p, *p.parents):
        if (d / MANIFEST).is_file() and (d / H5_NAME).is_file():
            return d
    return None


STORES_DIR = Path("stores")  # where `cache` puts a store without --out, and `train` looks without --store


def default_store(root: Path = STORES_DIR) -> Path:
    """The one complete store under `root` (`train` without --store); otherwise a one-line error
    that lists the candidates."""
    found = sorted(d for d in root.iterdir() if (d / MANIFEST).is_file()) if root.is_dir() else []
    if len(found) == 1:
        return found[0]
    if not found:
        raise KdstoreError(f"--store is required: there is no store under {root}/ (make one with `kdstore cache`)")
    raise KdstoreError(
        f"--store is required: {len(found)} stores under {root}/ ({', '.join(map(str, found))}); name one"
    )


def link_or_copy(src: Path, dst: Path) -> None:
    """A hard link where the file system allows one, else a copy (a store's .beton files, reused)."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def staging_dir(out: Path) -> Path:
    """The hidden sibling directory a store is built in before it is renamed into place."""
    out = Path(out)
    return out.parent / f".{out.name}.partial"


def _exchange(a: Path, b: Path) -> bool:
    """Swap two directory entries atomically (Linux renameat2 RENAME_EXCHANGE); False where the
    system cannot."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


STAGE_MARKER = ".kdstore-staging"  # kdstore's books in a staging directory, and its mark (cache/staging.py)


def _holds(directory: Path) -> str:
    """What a directory holds, for a message: a few of its entries' names."""
    names = sorted(p.name for p in directory.iterdir())
    shown = ", ".join(names[:3])
    return f"{shown} and {len(names) - 3} more" if len(names) > 3 else shown


def check_out(out: Path | str, overwrite: bool, keep: tuple[str | None, ...] = (), option: str = "--out") -> Path:
    """Where a new store may go, or a one-line error: an existing `out` is refused unless
    `overwrite`, and even then unless it is a kdstore store (its MANIFEST) or an empty directory:
    --overwrite never deletes what kdstore did not write. `keep`: paths the command reads (its
    checkpoint, its dataset), refused when `out` would replace them. Nothing is changed."""
    out = Path(out)
    if out.is_symlink() and not out.exists():
        raise KdstoreError(f"{option} {out} is a broken symlink or a symlink loop; name a directory")
    stage = staging_dir(out)
    if (stage.exists() or stage.is_symlink()) and not _is_stage(stage):
        raise KdstoreError(f"{stage} is in the way of {option} {out}'s staging directory and was not made by kdstore")
    for given in filter(None, keep):
        kept = Path(given).expanduser().resolve()
        if kept == out.resolve() or out.resolve() in kept.parents:
            raise KdstoreError(f"{option} {out} contains {given}, which this command reads; choose another {option}")
    if not out.exists():
        _check_writable(out, option)
        return out
    if not overwrite:
        raise KdstoreError(f"{out} already exists; pass --overwrite to replace it")
    _check_writable(out, option)
    if not out.is_dir():
        raise KdstoreError(f"{option} {out} is a file, not a kdstore store; --overwrite replaces only a store")
    if not (out / MANIFEST).is_file() and not (out / STAGE_MARKER).is_dir() and any(out.iterdir()):
        raise KdstoreError(
            f"{option} {out} is not a kdstore store (it holds {_holds(out)}); --overwrite replaces only a store "
            "(a directory with MANIFEST.json): choose another --out or remove it yourself"
        )
    return out


def _check_writable(out: Path, option: str) -> None:
    """The directory a store is staged and renamed in (out's nearest existing parent) must take new
    entries: a read-only one is refused before any work (a dry run included), not minutes later."""
    parent = next((p for p in Path(out).absolute().parents if p.exists()), None)
    if parent is not None and not (parent.is_dir() and os.access(parent, os.W_OK | os.X_OK)):
        raise KdstoreError(f"{option} {out}: {parent} is not a writable directory (read-only, or not yours)")


def claim(out: Path | str, overwrite: bool, keep: tuple[str | None, ...] = (), option: str = "--out") -> Path:
    """Where a new store goes: an interrupted replacement is repaired first (`recover`), then
    `check_out`'s refusals."""
    out = Path(out)
    recover(out)
    return check_out(out, overwrite, keep, option)


def fresh_stage(stage: Path) -> None:
    """An empty staging directory with kdstore's marker. A leftover one is removed first, only if it
    is kdstore's (the marker, or a partial cache's state from before it); anything else there is
    refused in one line."""
    if stage.is_symlink() or stage.exists():
        if not _is_stage(stage):
            raise KdstoreError(f"{stage} is in the way of the staging directory and was not made by kdstore")
        shutil.rmtree(stage)
    (stage / STAGE_MARKER).mkdir(parents=True)


def _is_stage(stage: Path) -> bool:
    """A directory kdstore staged a store in (its marker, or the files an older kdstore left there)."""
    if stage.is_symlink() or not stage.is_dir():
        return False
    known = (STAGE_MARKER, "cache-state.json", MANIFEST, H5_NAME, *BETONS.values())
    return any((stage / name).exists() for name in known) or not any(stage.iterdir())


def recover(out: Path) -> None:
    """Finish a replacement that a kill interrupted between its two renames: an absent `out`
    gets its previous store back; a leftover previous store beside a present `out` is removed."""
    out = Path(out)
    for old in sorted(out.parent.glob(f".{out.name}.old-*")):
        if not out.exists() and (old / MANIFEST).is_file():
            os.replace(old, out)
        else:
            shutil.rmtree(old, ignore_errors=True)


def commit_dir(tmp: Path, out: Path) -> None:
    """Move a finished staging directory to `out`, replacing a previous store only at the end:
    one atomic exchange where the system has it, so `out` always holds a complete store; else two
    renames, whose interruption `recover` repairs on the next run."""
    out = Path(out)
    if out.exists() and _exchange(tmp, out):
        shutil.rmtree(tmp, ignore_errors=True)  # the previous store, now at the staging path
        return
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
