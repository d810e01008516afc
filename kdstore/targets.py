"""What a training step sees: the images augmented (randomly, or replaying a stored view) and
the teacher's logits for them (from the store's table, a stored view, or a live teacher).

Two small function types keep the loop free of branches on these choices:

    Prepare(epoch, positions (B,), images (B, 3, H, W)) -> (augmented images, view index (B,) or None)
    TeacherFn(positions (B,), augmented images, view index or None) -> logits (B, C) float32

positions and view indices are numpy int64 arrays on the host (.beton positions); images are
normalised float tensors on the device.

Teacher rows come from `Rows`: the store's large arrays are read row by row from the file
(store.FileRows), so a process holds only the rows it gathers and every process on a machine
shares one copy of the file through the page cache. On CUDA a table that fits `DEVICE_TABLE_FRACTION` of the free
device memory is uploaded once instead (in the stored dtype) and gathered on the device.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import psutil
import torch

from .augment import AUGMENTATIONS, normalize, resize
from .arrays import release_pages, row_blocks, upload
from .precision import autocast, device_layout
from .store import file_rows
from .views import Views, choose, mix_images, sampled_target, topk_expand

Prepare = Callable[[int, np.ndarray, torch.Tensor], tuple[torch.Tensor, np.ndarray | None]]
TeacherFn = Callable[[np.ndarray, torch.Tensor, np.ndarray | None], torch.Tensor]
# LabelMix(positions, view index) -> (partner labels (B,), weight of the own label (B,)) for mixed views
LabelMix = Callable[[np.ndarray, np.ndarray], tuple[torch.Tensor, torch.Tensor]]

DEVICE_TABLE_FRACTION = 0.25  # of free CUDA memory: a teacher table up to this size lives on the device
PLACEMENTS = ("auto", "device", "mapped")
PREFETCH_FRACTION = 0.5  # of available memory: a table up to this size is read into the page cache ahead


class Rows:
    """Rows of a large (N, ...) or (N, K, ...) store array, gathered by position (and view) and
    returned on `device`.

    placement `auto`: on the device when the table fits (CUDA only), else `mapped`: read on the
    host from the store file with pread (store.FileRows; measured faster than gathering from the
    memory map, and the process's resident memory does not grow with the rows read), then pinned
    and copied asynchronously on CUDA. Both give the same values in the stored dtype."""

    def __init__(self, array: np.ndarray, device: torch.device, placement: str = "auto") -> None:
        if placement not in PLACEMENTS:
            raise ValueError(f"placement must be one of {PLACEMENTS}, got {placement!r}")
        self.array, self.device = array, device
        if placement == "auto":
            placement = "device" if device.type == "cuda" and array.nbytes <= DEVICE_TABLE_FRACTION * torch.cuda.mem_get_info(device)[0] else "mapped"
        self.placement = placement
        self.table = _upload(array, device) if placement == "device" else None
        self.file = file_rows(array) if self.table is None else None
        if self.file is not None and array.nbytes < PREFETCH_FRACTION * psutil.virtual_memory().available:
            self.file.prefetch(array.nbytes)  # the epoch reads every row: have the kernel load them ahead

    def __call__(self, *index: np.ndarray) -> torch.Tensor:
        if self.table is not None:
            return self.table[tuple(upload(torch.from_numpy(np.asarray(i, dtype=np.int64)), self.device) for i in index)]
        if self.file is not None:
            flat = np.asarray(index[0], dtype=np.int64)
            for i, axis in zip(index[1:], self.array.shape[1:]):
                flat = flat * axis + np.asarray(i, dtype=np.int64)
            rows = torch.from_numpy(self.file.read(flat, self.array.shape[len(index):]))
        else:
            rows = torch.from_numpy(self.array[tuple(index)])  # an array in memory: a gather copies
        return upload(rows, self.device)


def _upload(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """The whole array on the device in its stored dtype, copied block by block (arrays.row_blocks;
    bounded host memory)."""
    table = torch.empty(array.shape, dtype=torch.from_numpy(np.empty(0, array.dtype)).dtype, device=device)
    for lo, hi in row_blocks(array):
        table[lo:hi] = torch.from_numpy(np.array(array[lo:hi])).to(device)
        release_pages(array)
    return table


def no_augment() -> Prepare:
    return lambda epoch, pos, x: (x, None)


def random_augment(augmentation: str, image_size: int, generator: torch.Generator, device: torch.device | None = None,
                   batch_sizes: Callable[[int], list[int]] | None = None) -> Prepare:
    """Fresh parameters per batch from `generator` (saved in checkpoints, so a resumed run goes on
    with the same draws). With `batch_sizes(epoch)` (the sizes of the epoch's batches, in order),
    the whole epoch's parameters are drawn at its first batch, batch by batch from the same
    stream (so the draws are the same), and uploaded to `device` once; each batch then takes its
    slice, with no copy from the host per step."""
    aug = AUGMENTATIONS[augmentation]
    if batch_sizes is None or device is None:
        return lambda epoch, pos, x: (aug.apply(x, aug.draw(len(x), image_size, generator)), None)
    state: dict[str, Any] = {"epoch": None}

    def prepare(epoch: int, pos: np.ndarray, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        if state["epoch"] != epoch:
            drawn = torch.cat([aug.draw(n, image_size, generator) for n in batch_sizes(epoch)])
            state.update(epoch=epoch, cursor=0, params=upload(drawn, device))
        lo = state["cursor"]
        state["cursor"] = lo + len(x)
        return aug.apply(x, state["params"][lo:lo + len(x)]), None

    return prepare


def replay_views(views: Views, seed: int, device: torch.device, placement: str = "auto", partners: PartnerImages | None = None) -> Prepare:
    """Each sample uses one of its stored views (views.choose: seeded, new every epoch) and is
    augmented with exactly that view's parameters; a mixed view is then mixed with its partner's
    image, augmented with the same parameters (views.mix_images), as the teacher scored it."""
    aug = AUGMENTATIONS[views.augmentation]
    params = Rows(views.params, device, placement)  # (N, K, P)
    n, k = views.params.shape[:2]
    chosen: dict[int, np.ndarray] = {}
    mixing = Mixing(views, device, placement, partners) if views.mix else None

    def prepare(epoch: int, pos: np.ndarray, x: torch.Tensor) -> tuple[torch.Tensor, np.ndarray]:
        if epoch not in chosen:
            chosen.clear()
            chosen[epoch] = choose(seed, epoch, n, k)
        view = chosen[epoch][pos]
        p = params(pos, view).long()
        out = aug.apply(x, p)
        return (out if mixing is None else mixing(out, pos, view, lambda px: aug.apply(px, p))), view

    return prepare


# PartnerImages(positions (B,) int64 tensor) -> the normalised images (B, 3, H, W) at those .beton positions
PartnerImages = Callable[[torch.Tensor], torch.Tensor]


def resident_partners(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> PartnerImages:
    """Partner images gathered from a split held in memory (resident.ResidentSplit.images)."""
    return lambda idx: normalize(images[idx.to(images.device)], mean, std)


class Mixing:
    """The stored mix of each (position, view): its partner's image and the weight or box."""

    def __init__(self, views: Views, device: torch.device, placement: str, partners: PartnerImages | None) -> None:
        if partners is None:
            raise ValueError("mixed views need the partner images (a resident training split)")
        self.partners = partners
        self.partner, self.lam = Rows(views.mix_partner, device, placement), Rows(views.mix_lam, device, placement)
        self.box = Rows(views.mix_box, device, placement) if views.mix_box is not None else None

    def __call__(self, x: torch.Tensor, pos: np.ndarray, view: np.ndarray, augment: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        box = self.box(pos, view) if self.box is not None else None
        return mix_images(x, augment(self.partners(self.partner(pos, view).long())), self.lam(pos, view), box)


def view_label_mix(views: Views, labels: torch.Tensor, device: torch.device, placement: str = "auto") -> LabelMix:
    """The CE term's labels of a mixed view: the partner's label, weighted by 1 - lambda."""
    partner, lam = Rows(views.mix_partner, device, placement), Rows(views.mix_lam, device, placement)
    return lambda pos, view: (labels[partner(pos, view).long()], lam(pos, view).float())


def cached_teacher(logits: np.ndarray, device: torch.device, placement: str = "auto") -> TeacherFn:
    """The store's logits of the clean images, looked up by position. logits: (N, C)."""
    rows = Rows(logits, device, placement)
    return lambda pos, images, view: rows(pos).float()


def view_teacher(views: Views, num_classes: int, device: torch.device, placement: str = "auto") -> TeacherFn:
    """The store's logits of the view each sample was augmented with (top-k views expanded;
    sampled views as tau * log of their ids' empirical distribution, views.sampled_target)."""
    if views.sample_ids is not None:
        ids = Rows(views.sample_ids, device, placement)  # (N, K, k)
        return lambda pos, images, view: sampled_target(ids(pos, view), num_classes, views.sample_tau)
    if views.logits is not None:
        table = Rows(views.logits, device, placement)  # (N, K, C), kept in the stored dtype
        return lambda pos, images, view: table(pos, view).float()
    values, indices, fill = (Rows(a, device, placement) for a in (views.topk_values, views.topk_indices, views.fill))
    return lambda pos, images, view: topk_expand(values(pos, view), indices(pos, view), fill(pos, view), num_classes)


def online_teacher(model: torch.nn.Module, input_size: int, device: torch.device, amp: bool = False) -> TeacherFn:
    """The online-KD baseline's TeacherFn: the teacher (eval, inference mode; with `amp`, bf16 on
    CUDA, in the layout precision.for_device gave it) on every augmented batch."""
    model.eval()

    def forward(pos: np.ndarray, images: torch.Tensor, view: np.ndarray | None = None) -> torch.Tensor:
        with torch.inference_mode(), autocast(device, amp):
            logits = model(device_layout(resize(images, input_size))).float()
        return logits.clone()  # an inference tensor cannot be saved for backward

    return forward
