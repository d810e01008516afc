"""FFCV files: writing a split to .beton and reading it back through FFCV's Loader.

A .beton has three fields: `image` (RGB, raw pixels up to 64 px, JPEG above), `label` and
`sample_id`. Row p of a split's arrays in teacher.h5 is position p of its .beton."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import math
import multiprocessing
import os
import signal
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from kdstore.data.datasets import ImageSplit
from kdstore.errors import KdstoreError
from kdstore.runtime import interrupts
from kdstore.runtime.files import NEARLY_FULL_MIB, free_mib

RAW_MAX_SIZE = 64  # images up to this size are stored as raw pixels (exact); larger ones as JPEG
PAGE_SIZE = 1 << 21  # bytes per .beton page: FFCV's minimum (2 MiB)


def threads(workers: int) -> int:
    """FFCV threads (and writer processes) for `--workers`: the number given, or with 0 the
    cores this process may use, shared among the processes torchrun started on this machine."""
    if workers >= 1:
        return workers
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))


def max_workers() -> int:
    """The most FFCV threads (and writer processes) this machine runs: numba's thread count, its
    cores unless NUMBA_NUM_THREADS says otherwise."""
    return int(os.environ.get("NUMBA_NUM_THREADS") or os.cpu_count() or 1)


def workers_problem(workers: int) -> str | None:
    """--workers out of the range FFCV accepts here, in one line (None when it is in range)."""
    most = max_workers()
    if 0 <= workers <= most:
        return None
    return f"--workers must be in 0..{most} (0: one per core; this machine runs at most {most} threads), got {workers}"


WRITER_STALL_S = 30.0  # a writer with a dead worker and no progress for this long is stopped
WRITER_HANG_S = 180.0  # a writer whose workers live but hand out no image for this long is stopped
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Have the kernel SIGKILL this process when its parent ends (Linux; elsewhere nothing), so
    that a killed `cache` never leaves FFCV's writer, or the writer its workers, behind."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return


class _IndexedSource:
    """The indexed dataset FFCV's writer reads: i -> (image (H, W, 3) uint8, label, sample id).

    An image that cannot be read (or has the wrong shape) never reaches FFCV: it is recorded in
    `errors` (one JSON line) and replaced by a black image, so that no writer worker dies of it;
    write_beton then refuses the file, naming the image. `done` counts the samples handed out.
    """

    def __init__(self, split: ImageSplit, size: int, done, errors: Path) -> None:
        self.split, self.size, self.done, self.errors = split, size, done, errors
        self.watched: int | None = None  # the pid whose worker has asked to die with its parent

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int, int]:
        if self.watched != os.getpid():  # first call in this worker (FFCV's workers are forked from the writer)
            _die_with_parent()
            self.watched = os.getpid()
        try:
            image = self.split.get(i)
            if image.shape != (self.size, self.size, 3) or image.dtype != np.uint8:
                raise ValueError(f"shape {image.shape} {image.dtype}, expected ({self.size}, {self.size}, 3) uint8")
        except Exception as e:  # noqa: BLE001 - any unreadable image is reported by name after the write
            _record(self.errors, self.split.describe(i), e)
            image = np.zeros((self.size, self.size, 3), dtype=np.uint8)
        with self.done.get_lock():
            self.done.value += 1
        return image, int(self.split.labels[i]), int(self.split.sample_ids[i])


def _record(errors: Path, image: str | None, e: BaseException) -> None:
    """One JSON line in the errors file: an unreadable image (named), or the writer's own failure (None)."""
    with open(errors, "a") as f:
        f.write(json.dumps({"image": image, "error": f"{type(e).__name__}: {str(e)[:160]}"}) + "\n")


JPEG_QUALITY = 95


def _fields(size: int) -> dict[str, Any]:
    """The fields kdstore writes: images (raw pixels up to RAW_MAX_SIZE, else JPEG), label, sample id."""
    from ffcv.fields import IntField, RGBImageField

    mode = "raw" if size <= RAW_MAX_SIZE else "jpg"
    return {
        "image": RGBImageField(write_mode=mode, jpeg_quality=JPEG_QUALITY),
        "label": IntField(),
        "sample_id": IntField(),
    }


WRITER_CHUNK = 100  # samples FFCV's writer hands a worker at a time (from_indexed_dataset's chunksize)
PAGES_PER_WRITER = 16  # data pages per writer process at least (each leaves its last page partly empty)


def image_bytes_of(image: np.ndarray) -> int:
    """Bytes one image takes in a .beton: raw pixels up to RAW_MAX_SIZE, else a JPEG at the
    writer's quality."""
    if image.shape[0] <= RAW_MAX_SIZE:
        return int(image.nbytes)
    import cv2

    _, encoded = cv2.imencode(".jpg", image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    return len(encoded)


def _data_pages(n: int, image_bytes: float) -> int:
    """Pages `n` images of `image_bytes` fill when one writer packs them."""
    return math.ceil(n / max(1, int(PAGE_SIZE // max(image_bytes, 1))))


def writer_workers(n: int, image_bytes: float, workers: int) -> int:
    """FFCV writer processes for a file of `n` images of `image_bytes`: --workers' threads, but
    no more than one per PAGES_PER_WRITER data pages, nor than it has chunks to hand out. Each
    writer fills pages of its own and writes its last one whole, so W writers leave up to W - 1
    pages more than one would: with this rule a file's size is known within 1/PAGES_PER_WRITER
    before it is written (a small file, one writer: exactly), which the disk check counts on."""
    return max(1, min(threads(workers), _data_pages(n, image_bytes) // PAGES_PER_WRITER, math.ceil(n / WRITER_CHUNK)))


def beton_bytes(n: int, image_bytes: float, workers: int) -> float:
    """The size of a .beton of `n` images of `image_bytes` each as FFCV's writer lays it out,
    at most: header, field descriptors and per-sample metadata, padded to a page; the data pages,
    one more for each writer process after the first (`writer_workers`); the allocation table.
    Exact for raw pixels with one writer (tested); JPEG images are counted at their mean size."""
    from ffcv.types import ALLOC_TABLE_TYPE, FieldDescType, HeaderType, get_metadata_type

    fields = list(_fields(RAW_MAX_SIZE).values())  # the metadata's layout is the same for raw and JPEG
    head = HeaderType.itemsize + FieldDescType.itemsize * len(fields) + n * get_metadata_type(fields).itemsize
    pages = _data_pages(n, image_bytes) + writer_workers(n, image_bytes, workers) - 1
    return math.ceil(head / PAGE_SIZE) * PAGE_SIZE + pages * PAGE_SIZE + n * ALLOC_TABLE_TYPE.itemsize


def _write_in_child(split: ImageSplit, path: Path, writers: int, size: int, done, errors: Path) -> None:
    """The writer process: its own process group (so that a stuck writer and its workers are
    stopped together), FFCV's tqdm bar silenced (kdstore reports progress with rich)."""
    os.setpgrp()
    _die_with_parent()
    code = 0
    try:
        from ffcv.writer import DatasetWriter

        # Small pages waste less space on small datasets (each writer worker fills its own pages).
        writer = DatasetWriter(str(path), _fields(size), page_size=PAGE_SIZE, num_workers=writers)
        with contextlib.redirect_stderr(io.StringIO()):
            writer.from_indexed_dataset(_IndexedSource(split, size, done, errors))
    except BaseException as e:  # noqa: BLE001 - reported by the parent in one line
        _record(errors, None, e)
        code = 1
    os._exit(code)  # no interpreter teardown in a forked child


def _stop(proc) -> None:
    """Kill the writer's process group (it and its workers) and reap it; nothing if it never started."""
    if proc.pid is None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        proc.kill()  # just forked, before its setpgrp(): the group above is not yet its own
    proc.join()


def _dead_worker(proc) -> bool:
    """Has one of the writer's worker processes ended (a zombie that its parent has not reaped)?"""
    import psutil

    try:
        return any(c.status() == psutil.STATUS_ZOMBIE for c in psutil.Process(proc.pid).children())
    except psutil.Error:
        return False


def _disk_note(path: Path, need: float) -> str:
    """Why a writer may have died: say so when the disk is (nearly) full, with what the file
    needs (measured before the partial file is removed)."""
    free = free_mib(path.parent)
    if free >= NEARLY_FULL_MIB:
        return ""
    return f", and the disk holding {path.parent} had {free:.1f} MiB free (the file needs about {need / 2**20:.1f} MiB)"


def _watch(proc: multiprocessing.process.BaseProcess, done, n: int, path: Path, need: float) -> None:
    """Wait for the writer; stop it when it stalls: no image handed out for WRITER_STALL_S and a
    worker dead, or for WRITER_HANG_S with every worker alive (a deadlock). Once every image is
    handed out the writer is finishing its tables, so both allowances grow tenfold."""
    last, last_change = 0, time.monotonic()
    while proc.is_alive():
        proc.join(0.2)
        if done.value != last:
            last, last_change = done.value, time.monotonic()
            continue
        idle = time.monotonic() - last_change
        grace = 10 if last == n else 1
        dead = idle > WRITER_STALL_S * grace and _dead_worker(proc)
        if not proc.is_alive() or not (dead or idle > WRITER_HANG_S * grace):
            continue
        _stop(proc)
        note = _disk_note(path, need)
        path.unlink(missing_ok=True)
        why = (
            "lost a worker process (killed or crashed)"
            if dead
            else f"stalled ({idle:.0f} s without an image, its workers alive)"
        )
        raise KdstoreError(
            f"FFCV's writer {why} while writing {path} ({last}/{n} images){note}; nothing was kept, rerun the command"
        )


def write_beton(split: ImageSplit, path: Path, workers: int = 2, image_bytes: float | None = None) -> None:
    """Write `split` to an FFCV file at `path`, in split order, with `writer_workers` processes
    (`image_bytes`: what the cache's estimate measured, so that both count the same writers;
    by default the first image's).

    FFCV's writer waits forever for a worker that died, so it runs in a child process watched
    from here (`_watch`): a writer that stalls, with a dead worker or with all of them alive, is
    stopped with its workers and a one-line error. The writer and its workers die with this
    process (PR_SET_PDEATHSIG), so a killed `cache` leaves none of them writing. Unreadable images never reach
    FFCV; they are named in one line after the write, and the file is removed."""
    path = Path(path)
    try:
        first = split.get(0)
        size = first.shape[0]
        image_bytes = image_bytes or image_bytes_of(first)
        writers = writer_workers(len(split), image_bytes, workers)
        need = beton_bytes(len(split), image_bytes, workers)  # for a message, should the disk fill
    except Exception as e:  # noqa: BLE001 - the first image sets the field; name it if unreadable
        raise KdstoreError(
            f"{split.describe(0)}: not a readable image ({type(e).__name__}: {str(e)[:120]}); remove or fix it and "
            "rerun"
        ) from None
    errors = path.with_name(f".{path.name}.errors")
    errors.unlink(missing_ok=True)
    # FFCV's writer imported here, once, so the forked writer inherits it: imported in the child it
    # cost ~3.4 s per file (measured on the 2-core machine; a 2,048-image file writes in ~0.5 s)
    import ffcv.fields  # noqa: F401
    import ffcv.writer  # noqa: F401

    ctx = multiprocessing.get_context("fork")
    done = ctx.Value("Q", 0)
    proc = ctx.Process(target=_write_in_child, args=(split, path, writers, size, done, errors))
    try:
        proc.start()  # the child starts with SIGINT and SIGTERM at their defaults (runtime.interrupts)
        _watch(proc, done, len(split), path, need)
    finally:
        _stop(proc)  # Ctrl-C, an error here, or a writer that died: never leave it or its workers behind
    interrupts.check()  # a signal swallowed while the writer ran (a ctypes callback): stop here
    problems = [json.loads(line) for line in errors.read_text().splitlines()] if errors.is_file() else []
    errors.unlink(missing_ok=True)
    if problems or proc.exitcode != 0:
        note = _disk_note(path, need)
        path.unlink(missing_ok=True)
        images = [p for p in problems if p["image"] is not None]
        if not images:
            why = problems[0]["error"] if problems else f"exit code {proc.exitcode}"
            raise KdstoreError(f"FFCV's writer failed while writing {path} ({why}{note}); nothing was kept")
        more = f" ({len(images)} unreadable images in all)" if len(images) > 1 else ""
        raise KdstoreError(
            f"{images[0]['image']}: not a readable image ({images[0]['error']}){more}; remove or fix it and rerun"
        )


FIELDS = {"image": "RGBImageField", "label": "IntField", "sample_id": "IntField"}  # what kdstore writes and reads


def _shown(path: str) -> str:
    """A held file (/proc/self/fd/N) by its real path, for messages."""
    try:
        return os.readlink(path) if path.startswith("/proc/self/fd/") else path
    except OSError:
        return path


@functools.lru_cache(maxsize=16)
def _checked(path: str, stamp: tuple[int, int, int]) -> tuple[int, ...]:
    """check_beton's work, done once per file version (path, inode, size, mtime); returns the
    image sizes found."""
    from ffcv.fields.rgb_image import IMAGE_MODES
    from ffcv.types import (
        ALLOC_TABLE_TYPE,
        CURRENT_VERSION,
        FieldDescType,
        HeaderType,
        get_handlers,
        get_metadata_type,
    )
    from ffcv.utils import decode_null_terminated_string

    size = stamp[1]

    def bad(what: str) -> KdstoreError:
        return KdstoreError(f"{_shown(path)} is not a readable FFCV file ({what}); `kdstore verify` checks every file")

    if size < HeaderType.itemsize:
        raise bad(f"{size} bytes, shorter than its header")
    header = np.fromfile(path, dtype=HeaderType, count=1)[0]
    if int(header["version"]) != CURRENT_VERSION:
        raise bad(f"format version {int(header['version'])}, FFCV reads {CURRENT_VERSION}")
    n, n_fields, table_at = int(header["num_samples"]), int(header["num_fields"]), int(header["alloc_table_ptr"])
    if n_fields != len(FIELDS) or n < 1:
        raise bad(f"{n_fields} fields and {n} samples")
    descriptors = np.fromfile(path, dtype=FieldDescType, count=n_fields, offset=HeaderType.itemsize)
    if len(descriptors) != n_fields:
        raise bad("truncated in its field descriptors")
    names = [decode_null_terminated_string(d["name"]) for d in descriptors]
    try:
        handlers = get_handlers(descriptors)
    except Exception:  # noqa: BLE001 - an unknown type id
        handlers = [None] * n_fields
    kinds = {name: type(h).__name__ for name, h in zip(names, handlers)}
    if kinds != FIELDS:
        raise bad(f"fields {kinds}, expected {FIELDS}")
    meta_at = HeaderType.itemsize + descriptors.nbytes
    meta_type = get_metadata_type(handlers)
    if not meta_at + n * meta_type.itemsize <= table_at <= size or (size - table_at) % ALLOC_TABLE_TYPE.itemsize:
        raise bad(f"its allocation table at byte {table_at} does not fit a file of {size} bytes")
    meta = np.fromfile(path, dtype=meta_type, count=n, offset=meta_at)
    table = np.fromfile(path, dtype=ALLOC_TABLE_TYPE, offset=table_at)
    image = meta[f"f{names.index('image')}"]
    w, h = image["width"].astype(np.int64), image["height"].astype(np.int64)
    ptr, length = table["ptr"].astype(np.int64), table["size"].astype(np.int64)
    if len(table) and (ptr.min() < meta_at or (ptr + length).max() > table_at):
        raise bad("an allocation outside its data region")
    order = np.argsort(ptr, kind="stable")
    data_ptr = image["data_ptr"].astype(np.int64)
    at = np.minimum(np.searchsorted(ptr[order], data_ptr), max(len(ptr) - 1, 0))
    if not len(ptr) or (ptr[order][at] != data_ptr).any():
        raise bad("an image pointer that matches no allocation")
    raw = image["mode"] == IMAGE_MODES["raw"]
    if (length[order][at][raw] < 3 * w[raw] * h[raw]).any():
        raise bad("a raw image larger than its allocation")
    return tuple(sorted(set(np.unique(w).tolist()) | set(np.unique(h).tolist())))


def check_beton(path: Path, image_size: int | None = None) -> None:
    """Refuse a .beton that FFCV's compiled reader could crash or hang on, in one line: header,
    field names and types, metadata, allocation table and file size against each other, every
    image pointer inside an allocation (and, given `image_size`, every image that size). Pixel
    damage is not visible here (`kdstore verify` hashes the file). Cached per file version."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise KdstoreError(f"{_shown(str(path))} cannot be read ({e.strerror})") from None
    sizes = _checked(str(path), (st.st_ino, st.st_size, st.st_mtime_ns))
    if image_size is not None and sizes != (image_size,):
        raise KdstoreError(
            f"{_shown(str(path))} holds images of {', '.join(map(str, sizes[:4]))} px, not the {image_size} px its "
            "store "
            f"records (a damaged or foreign file); `kdstore verify` checks every file"
        )


def read_int_fields(path: Path) -> dict[str, np.ndarray]:
    """`label` and `sample_id` of every position, read from the .beton's metadata (no decoding)."""
    from ffcv.reader import Reader

    check_beton(path)
    try:
        reader = Reader(str(path))
    except (OSError, ValueError, AssertionError, IndexError) as e:
        raise KdstoreError(
            f"{_shown(str(path))} is not a readable FFCV file ({type(e).__name__}: {str(e)[:120]})"
        ) from None
    names = list(reader.handlers)
    meta = reader.metadata
    return {name: np.asarray(meta[f"f{names.index(name)}"]).astype(np.int64) for name in ("label", "sample_id")}


def _epoch_order_type():
    from ffcv.traversal_order.base import TraversalOrder

    class EpochOrder(TraversalOrder):
        """A traversal order that visits exactly `order_fn(epoch)` (positions in the .beton).

        FFCV's Loader accepts an instance of a TraversalOrder and calls it with itself.
        """

        def __init__(self, order_fn: Callable[[int], np.ndarray]) -> None:  # noqa: D107 - bound later
            self.order_fn = order_fn

        def __call__(self, loader) -> "EpochOrder":
            TraversalOrder.__init__(self, loader)
            return self

        def sample_order(self, epoch: int) -> Sequence[int]:
            return np.asarray(self.order_fn(epoch), dtype=self.indices.dtype)  # type: ignore[return-value]  # FFCV's annotation

    return EpochOrder


STOP_S = 30.0  # the longest an FFCV reader thread is waited for once told to stop


@contextlib.contextmanager
def epoch_of(loader: Any) -> Any:
    """One pass over a loader (FFCV's, or any iterable); when the pass ends, done or not (an
    exception, Ctrl-C, SIGTERM, a break), FFCV's reader thread is told to stop and joined. A
    thread left decoding in numba's parallel region as Python exits aborts the process
    ("terminate called without an active exception", SIGABRT) instead of exiting cleanly. A
    command stopped by a signal does not wait for it (it may be compiling for a second or
    more): it exits without Python's teardown, so no thread is destroyed under it."""
    batches = iter(loader)
    try:
        yield batches
    finally:
        stop = getattr(batches, "terminate_event", None)
        if stop is not None and batches.is_alive():
            stop.set()  # it exits once its queue is full and a put times out (0.5 s)
            if not interrupts.interrupted():  # else the command exits at once (interrupts.exit_now): no wait
                batches.join(STOP_S)


def make_loader(
    path: Path,
    batch_size: int,
    workers: int,
    order_fn: Callable[[int], np.ndarray] | None = None,
    drop_last: bool = False,
    indices: np.ndarray | None = None,
):
    """An FFCV Loader yielding (images (B, H, W, 3) uint8, labels (B,), sample ids (B,)).

    `order_fn(epoch)` gives the positions to visit in that epoch; None reads `indices` (default:
    all positions) in file order. Images are not augmented here: augmentation runs batched on
    tensors (see augment.py).
    """
    from ffcv.fields.decoders import IntDecoder, SimpleRGBImageDecoder
    from ffcv.loader import Loader, OrderOption
    from ffcv.transforms import Squeeze, ToTensor

    check_beton(path)
    order = OrderOption.SEQUENTIAL if order_fn is None else _epoch_order_type()(order_fn)
    pipelines = {
        "image": [SimpleRGBImageDecoder(), ToTensor()],
        "label": [IntDecoder(), ToTensor(), Squeeze(1)],
        "sample_id": [IntDecoder(), ToTensor(), Squeeze(1)],
    }
    try:
        return Loader(
            str(path),
            batch_size=batch_size,
            num_workers=threads(workers),
            order=order,
            pipelines=pipelines,
            drop_last=drop_last,
            os_cache=True,
            indices=indices,
        )
    except (OSError, ValueError, AssertionError, IndexError) as e:
        raise KdstoreError(
            f"{_shown(str(path))} is not a readable FFCV file ({type(e).__name__}: {str(e)[:120]})"
        ) from None


def fingerprint_beton(path: Path) -> str:
    """sha256 over every position's sample id, label and stored image (mode, width, height and
    its bytes: raw pixels up to 64 px, the JPEG above), in file order. Nothing is decoded; the
    bytes are read where each image lies, so the pages' layout (which varies with the number of
    writer processes) does not matter: the same images give the same fingerprint."""
    from ffcv.fields.rgb_image import IMAGE_MODES
    from ffcv.types import (
        ALLOC_TABLE_TYPE,
        FieldDescType,
        HeaderType,
        get_handlers,
        get_metadata_type,
    )
    from ffcv.utils import decode_null_terminated_string

    check_beton(path)
    header = np.fromfile(path, dtype=HeaderType, count=1)[0]
    n, table_at = int(header["num_samples"]), int(header["alloc_table_ptr"])
    descriptors = np.fromfile(path, dtype=FieldDescType, count=len(FIELDS), offset=HeaderType.itemsize)
    meta = np.fromfile(
        path,
        dtype=get_metadata_type(get_handlers(descriptors)),
        count=n,
        offset=HeaderType.itemsize + descriptors.nbytes,
    )
    table = np.fromfile(path, dtype=ALLOC_TABLE_TYPE, offset=table_at)
    size_at = dict(zip(table["ptr"].tolist(), table["size"].tolist()))
    fields = read_int_fields(path)
    names = [decode_null_terminated_string(d["name"]) for d in descriptors]
    image = meta[f"f{names.index('image')}"]
    h = hashlib.sha256()
    h.update(fields["sample_id"].astype("<i8").tobytes())
    h.update(fields["label"].astype("<i8").tobytes())
    h.update(np.stack([image[k].astype("<i8") for k in ("mode", "width", "height")], 1).tobytes())
    raw = 3 * image["width"].astype(np.int64) * image["height"].astype(np.int64)
    with open(path, "rb") as f:
        fd = f.fileno()
        for ptr, mode, pixels in zip(image["data_ptr"].tolist(), image["mode"].tolist(), raw.tolist()):
            h.update(os.pread(fd, pixels if mode == IMAGE_MODES["raw"] else size_at[ptr], ptr))
    return h.hexdigest()
