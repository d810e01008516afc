"""The store: train.beton, val.beton, teacher.h5 and MANIFEST.json; opened, checked, written,
merged; its teacher rows and views gathered by position. Imports nothing from training."""

from kdstore.store.format import Store
from kdstore.store.verification import verify

__all__ = ["Store", "verify"]
