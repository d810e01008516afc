"""Training from a store (`kdstore train`, `teacher`, `bench`, `eval`): one loop, one step."""

from kdstore.train.config import TrainConfig
from kdstore.train.loop import run

__all__ = ["TrainConfig", "run"]
