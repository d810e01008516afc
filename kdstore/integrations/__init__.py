"""Adapters of a kdstore store to the training loops researchers already use.

- `kdstore.integrations.timm`: OfflineDistillationTask, the offline counterpart of
  timm.task.LogitDistillationTask (its targets come from the batch, no teacher runs).
- `kdstore.integrations.lightning`: StoreDataModule, a LightningDataModule over a store, and
  DistillationModule, an example LightningModule step (needs `pip install kdstore[lightning]`).

Neither is imported by `import kdstore`."""
