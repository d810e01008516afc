"""PyTorch Lightning over a kdstore store: StoreDataModule (a LightningDataModule whose loaders
are StoreLoaders) and DistillationModule (a LightningModule whose step is kdstore.kd_loss).
Lightning is an optional extra: `pip install kdstore[lightning]`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from kdstore.errors import KdstoreError
from kdstore.loader.batch import Batch, check_tau, distill_loss
from kdstore.loader.config import LoaderConfig
from kdstore.loader.store_loader import StoreLoader
from kdstore.store.format import Store

try:
    import lightning.pytorch as pl
except ImportError:  # one line, not a traceback, when the extra is missing
    raise KdstoreError(
        "kdstore.integrations.lightning needs PyTorch Lightning: pip install 'kdstore[lightning]'"
    ) from None


class StoreDataModule(pl.LightningDataModule):
    """A store's training and validation splits as Lightning's loaders (kdstore.StoreLoader with
    `config` and/or keyword options; the device defaults to the trainer's). Batches arrive on the
    device already; the loader's position (epoch, batch) is saved in Lightning's checkpoints."""

    def __init__(self, store: Store | str | Path, config: LoaderConfig | None = None, **options: Any) -> None:
        super().__init__()
        self.store, self.config, self.options = store, config, options
        self.train_loader: StoreLoader | None = None
        self.val_loader: StoreLoader | None = None
        self._state: dict[str, Any] | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_loader is not None:
            return
        options = dict(self.options)
        trainer = getattr(self, "trainer", None)
        if "device" not in options and trainer is not None:
            options["device"] = trainer.strategy.root_device.type
        self.train_loader = StoreLoader(self.store, "train", self.config, **options)
        self.val_loader = self.train_loader.val()
        if self._state is not None:
            self.train_loader.load_state_dict(self._state)

    def train_dataloader(self) -> StoreLoader:
        assert self.train_loader is not None, "setup() first"
        return self.train_loader

    def val_dataloader(self) -> StoreLoader:
        assert self.val_loader is not None, "setup() first"
        return self.val_loader

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        return batch  # a StoreLoader's batches are on its device already

    def state_dict(self) -> dict[str, Any]:
        return {} if self.train_loader is None else self.train_loader.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not state_dict:
            return
        self._state = state_dict
        if self.train_loader is not None:
            self.train_loader.load_state_dict(state_dict)


class DistillationModule(pl.LightningModule):
    """An example LightningModule for a store: kdstore.kd_loss on each batch (its lambda and
    teacher target; or `loss` with `loss_options`, as kdstore.distill_loss), SGD with Nesterov
    momentum and a per-step cosine schedule as `kdstore train` uses; logs train_loss, train_ce,
    train_kd, val_acc and val_loss."""

    def __init__(
        self,
        model: nn.Module,
        *,
        lr: float = 0.05,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        tau: float | None = None,
        label_smoothing: float = 0.0,
        loss: str = "kd",
        loss_options: dict[str, float] | None = None,
    ) -> None:
        super().__init__()
        if tau is not None:  # None: each batch's own (its loader's --tau)
            check_tau(tau, "DistillationModule")
        self.model = model
        self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay
        self.tau, self.label_smoothing = tau, label_smoothing
        self.loss = distill_loss(loss, tau=tau, options=loss_options)  # kd: kd_loss

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        logits = self.model(batch.images)
        pair = None if batch.pair is None else self.model(batch.pair.images)  # a two-view loss (mlkd)
        terms = self.loss(logits, batch, label_smoothing=self.label_smoothing, pair_logits=pair)
        self.log_dict(
            {"train_loss": terms.loss.detach(), "train_ce": terms.ce, "train_kd": terms.kd}, batch_size=len(batch)
        )
        return terms.loss

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        logits = self.model(batch.images)
        self.log_dict(
            {
                "val_acc": (logits.argmax(1) == batch.labels).float().mean(),
                "val_loss": nn.functional.cross_entropy(logits, batch.labels),
            },
            batch_size=len(batch),
        )

    def configure_optimizers(self) -> Any:
        opt = torch.optim.SGD(
            self.parameters(), lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay, nesterov=True
        )
        steps = max(1, int(self.trainer.estimated_stepping_batches))
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
