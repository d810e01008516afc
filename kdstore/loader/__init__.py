"""A store in any training loop: StoreLoader (batches with views, curricula, lambda and teacher
targets on the device), its Batch and Target, kd_loss and distill_loss (the other losses).
`kdstore train` runs on exactly these."""

from kdstore.loader.batch import Batch, DistillLoss, LossTerms, Pair, Target, distill_loss, kd_loss
from kdstore.loader.config import LoaderConfig
from kdstore.loader.store_loader import StoreLoader

__all__ = [
    "Batch",
    "DistillLoss",
    "LoaderConfig",
    "LossTerms",
    "Pair",
    "StoreLoader",
    "Target",
    "distill_loss",
    "kd_loss",
]
