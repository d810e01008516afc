"""FFCV files: writing a split to .beton and reading it back through FFCV's Loader.

A .beton has three fields: `image` (RGB, raw pixels up to 64 px, JPEG above), `label` and
`sample_id`. Row p of a split's arrays in teacher.h5 is position p of its .beton.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .datasets import ImageSplit
from .errors import KdstoreError

RAW_MAX_SIZE = 64  # images up to this size are stored as raw pixels (exact); larger ones as JPEG
PAGE_SIZE = 1 << 21  # bytes per .beton page: FFCV's minimum (2 MiB)


class _IndexedSource:
    """The indexed dataset FFCV's writer reads: i -> (image (H, W, 3) uint8, label, sample id)."""

    def __init__(self, split: ImageSplit) -> None:
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int, int]:
        return self.split.get(i), int(self.split.labels[i]), int(self.split.sample_ids[i])


def write_beton(split: ImageSplit, path: Path, workers: int = 2) -> None:
    """Write `split` to an FFCV file at `path`, in split order."""
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter

    size = split.get(0).shape[0]
    mode = "raw" if size <= RAW_MAX_SIZE else "jpg"
    fields = {"image": RGBImageField(write_mode=mode, jpeg_quality=95), "label": IntField(), "sample_id": IntField()}
    # FFCV's writer draws a tqdm bar on stderr; kdstore reports progress with rich instead.
    # Small pages waste less space on small datasets (each writer worker fills its own pages).
    writer = DatasetWriter(str(path), fields, page_size=PAGE_SIZE, num_workers=max(1, workers))
    with contextlib.redirect_stderr(io.StringIO()):
        writer.from_indexed_dataset(_IndexedSource(split))


def read_int_fields(path: Path) -> dict[str, np.ndarray]:
    """`label` and `sample_id` of every position, read from the .beton's metadata (no decoding)."""
    from ffcv.reader import Reader

    try:
        reader = Reader(str(path))
    except (OSError, ValueError, AssertionError, IndexError) as e:
        raise KdstoreError(f"{path} is not a readable FFCV file ({type(e).__name__}: {str(e)[:120]})") from None
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
            return np.asarray(self.order_fn(epoch), dtype=self.indices.dtype)

    return EpochOrder


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

    order = OrderOption.SEQUENTIAL if order_fn is None else _epoch_order_type()(order_fn)
    pipelines = {
        "image": [SimpleRGBImageDecoder(), ToTensor()],
        "label": [IntDecoder(), ToTensor(), Squeeze(1)],
        "sample_id": [IntDecoder(), ToTensor(), Squeeze(1)],
    }
    try:
        return Loader(str(path), batch_size=batch_size, num_workers=max(1, workers), order=order, pipelines=pipelines,
                      drop_last=drop_last, os_cache=True, indices=indices)
    except (OSError, ValueError, AssertionError, IndexError) as e:
        raise KdstoreError(f"{path} is not a readable FFCV file ({type(e).__name__}: {str(e)[:120]})") from None


def fingerprint_beton(path: Path, workers: int = 2, batch_size: int = 512) -> str:
    """sha256 over sample ids, labels and image bytes of every position, in file order."""
    h = hashlib.sha256()
    for images, labels, ids in make_loader(path, batch_size, workers):
        h.update(ids.numpy().astype("<i8").tobytes())
        h.update(labels.numpy().astype("<i8").tobytes())
        h.update(images.numpy().tobytes())
    return h.hexdigest()
