"""How a training step's images are prepared (Prepare): not augmented, augmented with fresh
random parameters, or replaying the store's views (each sample one of its stored views, chosen
per epoch; mixed views mixed with their partner as the teacher saw them).

    Prepare(epoch, positions (B,), images (B, 3, H, W)) -> (augmented images, view index (B,) or None)

positions and view indices are numpy int64 arrays on the host (.beton positions); images are
normalised float tensors on the device. VIEW_MODES says when a run replays views."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from kdstore.data.augment import AUGMENTATIONS
from kdstore.runtime.transfer import upload
from kdstore.store.mixes import Mixing, PartnerImages
from kdstore.store.rows import Rows
from kdstore.store.views import Views

Prepare = Callable[[int, np.ndarray, torch.Tensor], tuple[torch.Tensor, np.ndarray | None]]


def no_augment() -> Prepare:
    return lambda epoch, pos, x: (x, None)


class RandomAugment:
    """Fresh augmentation parameters per batch from `generator` (its state is saved with a run or
    a loader, so a resumed run goes on with the same draws). With `batch_sizes(epoch)` (the sizes
    of the epoch's batches, in order) and `device`, the whole epoch's parameters are drawn at its
    first batch, batch by batch from the same stream (so the draws are the same), and uploaded
    once; each batch then takes its slice, with no copy from the host per step."""

    def __init__(
        self,
        augmentation: str,
        image_size: int,
        generator: torch.Generator,
        device: torch.device | None = None,
        batch_sizes: Callable[[int], list[int]] | None = None,
    ) -> None:
        self.aug, self.image_size, self.generator = AUGMENTATIONS[augmentation], image_size, generator
        self.device, self.batch_sizes = device, batch_sizes
        self.epoch: int | None = None
        self.cursor = self.start = 0
        self.params: torch.Tensor | None = None

    def begin(self, images_done: int = 0) -> None:
        """A pass over an epoch starts: its parameters are drawn afresh from the generator at its
        first batch, which is `images_done` images in (an epoch resumed mid-way, the generator
        back at the state it had when that epoch began)."""
        self.epoch, self.start = None, images_done

    def __call__(self, epoch: int, pos: np.ndarray, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        if self.batch_sizes is None or self.device is None:
            return self.aug.apply(x, self.aug.draw(len(x), self.image_size, self.generator)), None
        if self.epoch != epoch:
            drawn = torch.cat([self.aug.draw(n, self.image_size, self.generator) for n in self.batch_sizes(epoch)])
            self.epoch, self.cursor, self.start, self.params = epoch, self.start, 0, upload(drawn, self.device)
        assert self.params is not None
        lo = self.cursor
        self.cursor = lo + len(x)
        return self.aug.apply(x, self.params[lo : lo + len(x)]), None


def replay_views(
    views: Views,
    seed: int,
    device: torch.device,
    placement: str = "auto",
    partners: PartnerImages | None = None,
    second: bool = False,
) -> Prepare:
    """Each sample uses one of its stored views (choose: seeded, new every epoch) and is
    augmented with exactly that view's parameters; a mixed view is then mixed with its partner's
    image, augmented with the same parameters (mixes.mix_images), as the teacher scored it. With
    `second`, each sample uses another of its views than the one `choose` gives it (choose_other:
    a two-view loss's second view)."""
    aug = AUGMENTATIONS[views.augmentation]
    params = Rows(views.params, device, placement)  # (N, K, P)
    n, k = views.params.shape[:2]
    chosen: dict[int, np.ndarray] = {}
    mixing = Mixing(views, device, placement, partners) if views.mix else None

    def prepare(epoch: int, pos: np.ndarray, x: torch.Tensor) -> tuple[torch.Tensor, np.ndarray]:
        if epoch not in chosen:
            chosen.clear()
            chosen[epoch] = (choose_other if second else choose)(seed, epoch, n, k)
        view = chosen[epoch][pos]
        p = params(pos, view).long()
        out = aug.apply(x, p)
        return (out if mixing is None else mixing(out, pos, view, lambda px: aug.apply(px, p))), view

    return prepare


@dataclass(frozen=True)
class ViewMode:
    """What `train --view-mode MODE` does with a store's views."""

    replay: Callable[[bool, bool], bool]  # (the store has views, augmentation on) -> replay them?
    needs_views: bool  # refuse a store without views
    needs_augment: bool  # refuse --no-augment


VIEW_MODES: dict[str, ViewMode] = {
    "auto": ViewMode(lambda has_views, augment: has_views and augment, needs_views=False, needs_augment=False),
    "replay": ViewMode(lambda has_views, augment: True, needs_views=True, needs_augment=True),
    "clean": ViewMode(lambda has_views, augment: False, needs_views=False, needs_augment=False),
}


def choose(seed: int, epoch: int, n: int, k: int) -> np.ndarray:
    """Which stored view each of n samples uses in `epoch`: seeded, new every epoch. (n,) int64."""
    return np.random.default_rng([seed, epoch, 0x71E5]).integers(0, k, size=n)


def choose_other(seed: int, epoch: int, n: int, k: int) -> np.ndarray:
    """A second view of each of n samples in `epoch`, never the one `choose` gives it (k >= 2):
    uniform over the other k - 1, seeded apart from `choose`. (n,) int64."""
    if k < 2:
        raise ValueError(f"a second view needs at least 2 stored views per image, the store has {k}")
    shift = np.random.default_rng([seed, epoch, 0x5EC0]).integers(1, k, size=n)
    return (choose(seed, epoch, n, k) + shift) % k
