"""The store: train.beton, val.beton, teacher.h5 and MANIFEST.json; opened, checked, written,
merged; its teacher rows and views gathered by position. Imports nothing from training."""

from kdstore.store.store import Store, verify

__all__ = ["Store", "verify"]
