"""A split held whole in device memory (airbench's design): its .beton decoded once through FFCV
into one uint8 tensor, every batch an index gather by the epoch's positions, no loader thread.
`train --loader auto` (the default) holds a split this way when its decoded images fit
`RESIDENT_FRACTION` of the free memory of the device (on the CPU: of the available host
memory); larger data (ImageNet) streams through FFCV's Loader. Both feed the same images,
labels and ids in the same order (tested bit for bit)."""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import psutil
import torch

from kdstore.data.beton import epoch_of, make_loader, read_int_fields
from kdstore.runtime.transfer import upload

LOADERS = ("auto", "device", "ffcv")
RESIDENT_FRACTION = 0.5  # of free device (or available host) memory: a split up to this size is held whole


def image_bytes(n: int, image_size: int) -> int:
    """What n images take decoded, as uint8 (n, H, W, 3)."""
    return n * image_size * image_size * 3


def decoded_bytes(beton: Path, image_size: int) -> int:
    """What a split's images take decoded."""
    return image_bytes(len(read_int_fields(beton)["sample_id"]), image_size)


def free_bytes(device: torch.device) -> int:
    """The free memory of a CUDA device, or the available host memory for the CPU."""
    return int(torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else psutil.virtual_memory().available)


def fits(nbytes: int, device: torch.device) -> bool:
    return nbytes <= RESIDENT_FRACTION * free_bytes(device)


def holds(requested: str, betons: tuple[Path, ...], image_size: int, device: torch.device) -> bool:
    """Whether --loader REQUESTED holds the splits in memory: `device` does, `ffcv` does not,
    `auto` does when they fit."""
    if requested != "auto":
        return requested == "device"
    return fits(sum(decoded_bytes(b, image_size) for b in betons), device)


def batch_sizes(n: int, batch_size: int, drop_last: bool) -> list[int]:
    """The sizes of the batches n positions make, in order (what a loader yields)."""
    full, rest = divmod(n, batch_size)
    return [batch_size] * full + ([rest] if rest and not drop_last else [])


class ResidentSplit:
    """A .beton's images (N, H, W, 3) uint8, labels (N,) and sample ids (N,) by position, the
    images and labels on `device` (sample ids stay on the host, where the loop checks them)."""

    def __init__(self, beton: Path, device: torch.device, workers: int, batch_size: int = 1024) -> None:
        fields = read_int_fields(beton)
        self.sample_id = torch.from_numpy(fields["sample_id"])
        self.labels = torch.from_numpy(fields["label"]).to(device)
        self.device = device
        images = None
        row = 0
        with epoch_of(make_loader(beton, batch_size, workers)) as batches:
            for batch, _, _ in batches:  # file order
                if images is None:
                    images = torch.empty((len(self.sample_id), *batch.shape[1:]), dtype=torch.uint8, device=device)
                images[row : row + len(batch)].copy_(batch)  # FFCV reuses its buffer: copied before the next batch
                row += len(batch)
        self.images = images if images is not None else torch.empty((0, 1, 1, 3), dtype=torch.uint8, device=device)

    def __len__(self) -> int:
        return len(self.sample_id)


_HELD: OrderedDict[tuple, ResidentSplit] = OrderedDict()
HELD_SPLITS = 4  # decoded splits kept for the next run in this process (a sweep decodes its store once)


def resident_split(beton: Path, device: torch.device, workers: int) -> ResidentSplit:
    """A ResidentSplit of `beton`, decoded once per process: runs that follow (a sweep's, the
    tests') reuse it while the file is the same (device, inode, size, mtime); the splits are
    only read, never written."""
    st = os.stat(beton)
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, str(device))
    if key in _HELD:
        _HELD.move_to_end(key)
        return _HELD[key]
    split = _HELD[key] = ResidentSplit(beton, device, workers)
    while len(_HELD) > HELD_SPLITS:
        _HELD.popitem(last=False)
    return split


class ResidentLoader:
    """What the loop asks of FFCV's Loader (iteration over (images, labels, ids) batches, len,
    batch_size, drop_last, next_epoch), over a ResidentSplit: each epoch's positions are uploaded
    once, and every batch is a gather on the device."""

    def __init__(
        self,
        split: ResidentSplit,
        batch_size: int,
        order_fn: Callable[[int], np.ndarray] | None = None,
        drop_last: bool = False,
    ) -> None:
        self.split, self.batch_size, self.drop_last = split, batch_size, drop_last
        every = np.arange(len(split))
        self.order_fn = order_fn or (lambda epoch: every)
        self.next_epoch = 0
        self.length = len(self.order_fn(0))

    def __len__(self) -> int:
        return len(batch_sizes(self.length, self.batch_size, self.drop_last))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        order = np.asarray(self.order_fn(self.next_epoch), dtype=np.int64)
        self.next_epoch += 1
        host = torch.from_numpy(order)
        on_device = upload(host, self.split.device)
        for b in range(len(batch_sizes(len(order), self.batch_size, self.drop_last))):
            lo, hi = b * self.batch_size, min((b + 1) * self.batch_size, len(order))
            idx = on_device[lo:hi]
            yield self.split.images[idx], self.split.labels[idx], self.split.sample_id[host[lo:hi]]
