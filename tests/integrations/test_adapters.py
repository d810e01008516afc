"""The adapters (kdstore.integrations): timm's task and Lightning's data module train an epoch on
digits with a KD term that is kd_loss on the store's own teacher rows; without the lightning
extra, asking for its adapter is one line."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from kdstore import Store, StoreLoader, kd_loss
from kdstore.method.losses import kd_per_sample


def _kd_from_store(store: Path, output: torch.Tensor, ids: np.ndarray, tau: float) -> float:
    """The KD term from the store's own rows, looked up by sample id (not through the loader)."""
    split = Store.open(store).train
    rows = torch.from_numpy(np.asarray(split.logits[split.positions(ids)], dtype=np.float32))
    return kd_per_sample(output.detach(), rows, tau).mean().item()


def test_timm_task_trains_an_epoch_from_a_store(digits_store):
    import timm

    from kdstore.integrations.timm import OfflineDistillationTask

    loader = StoreLoader(digits_store, variant="kd", seed=0, workers=1)
    torch.manual_seed(0)
    task = OfflineDistillationTask(timm.create_model("cifar_resnet8", num_classes=loader.num_classes), temperature=4.0)
    opt = torch.optim.SGD(task.parameters(), lr=0.05, momentum=0.9)
    before = [p.detach().clone() for p in task.parameters()]
    losses = []
    for batch in loader:
        result = task(batch.images, batch)
        opt.zero_grad()
        result["loss"].backward()
        opt.step()
        losses.append(result["loss"].item())
        assert result["kd_loss"].item() == pytest.approx(_kd_from_store(digits_store, result["output"], batch.ids, 4.0))
        ref = kd_loss(result["output"], batch, tau=4.0)
        assert result["loss"].item() == pytest.approx(ref.loss.item()) and result["task_loss"].item() == ref.ce.item()
    assert len(losses) == len(loader) and np.isfinite(losses).all()
    assert all(not torch.equal(a, b) for a, b in zip(before, task.parameters()))  # every parameter was trained


def test_lightning_data_module_trains_an_epoch_from_a_store(digits_store, tmp_path):
    pl = pytest.importorskip("lightning.pytorch", reason="the lightning extra is not installed")
    import timm

    from kdstore.integrations.lightning import DistillationModule, StoreDataModule

    seen = []

    class Recording(DistillationModule):
        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            output = self.model(batch.images)
            seen.append((batch.ids, kd_loss(output, batch, tau=self.tau).kd.item(), output.detach()))
            return loss

    data = StoreDataModule(digits_store, variant="kd", seed=0, workers=1, batch_size=128)
    module = Recording(timm.create_model("cifar_resnet8", num_classes=10))
    trainer = pl.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=str(tmp_path),
    )
    trainer.fit(module, datamodule=data)
    assert len(seen) == len(data.train_dataloader()) and "val_acc" in trainer.callback_metrics
    for ids, kd, output in seen[:3]:
        assert kd == pytest.approx(_kd_from_store(digits_store, output, ids, 4.0))
    assert data.state_dict()["epoch"] == 1


def test_lightning_missing_is_one_line(monkeypatch):
    """Without the extra, asking for the adapter says what to install (kdstore imports without it)."""
    import importlib

    monkeypatch.setitem(sys.modules, "lightning.pytorch", None)
    monkeypatch.setitem(sys.modules, "lightning", None)
    monkeypatch.delitem(sys.modules, "kdstore.integrations.lightning", raising=False)
    from kdstore.errors import KdstoreError

    with pytest.raises(KdstoreError, match=r"pip install 'kdstore\[lightning\]'"):
        importlib.import_module("kdstore.integrations.lightning")
