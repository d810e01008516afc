"""The teacher pass (`kdstore cache`): the teacher run once over the images, written as a store."""

from kdstore.cache.config import CacheConfig
from kdstore.cache.write import run

__all__ = ["CacheConfig", "run"]
