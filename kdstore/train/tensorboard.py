"""TensorBoard event files of a run (`tensorboard --logdir runs`); metrics.jsonl stays the record.

Every number of an epoch's metrics row is a scalar at that epoch (train loss and its terms,
accuracy, validation, lambda, lr, images/s, and whatever else the row carries); the per-batch
lists (lambda, pace g(t)) are scalars at the global batch index."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch.utils.tensorboard import SummaryWriter

from kdstore.runtime.files import writing

# metrics.jsonl key -> TensorBoard tag (grouped into panels); numbers not named here go under "other/".
TAGS = {
    "train_loss": "train/loss",
    "train_ce": "train/ce",
    "train_kd": "train/kd",
    "train_acc": "train/acc",
    "val_acc": "val/acc",
    "val_loss": "val/loss",
    "lam_mean": "lambda/mean",
    "lam_min": "lambda/min",
    "lam_max": "lambda/max",
    "agree_train": "agreement/top1_train",
    "agree_val": "agreement/top1_val",
    "kl_train": "agreement/kl_train",
    "kl_val": "agreement/kl_val",
    "lr": "opt/lr",
    "images_per_s": "speed/images_per_s",
    "data_wait_frac": "speed/data_wait_frac",
    "seconds": "speed/epoch_seconds",
    "eval_seconds": "speed/eval_seconds",
}
PER_BATCH = {"lam": "batch/lambda", "pace": "batch/pace"}


def scalars(row: dict[str, Any]) -> dict[str, float]:
    """The epoch's scalars by tag (bools and non-numbers are left out)."""
    out = {}
    for key, value in row.items():
        if key == "epoch" or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        out[TAGS.get(key, key if "/" in key else f"other/{key}")] = float(value)
    return out


class EventLog:
    """One run's event files, in the run directory."""

    def __init__(self, out: Path) -> None:
        self.out = Path(out)
        with writing(self.out / "events.out.tfevents.*"):
            self.writer = SummaryWriter(log_dir=str(out))

    def epoch(self, row: dict[str, Any]) -> None:
        """The epoch's scalars, flushed (a full disk is one line naming the event files)."""
        with writing(self.out / "events.out.tfevents.*"):
            self._write(row)

    def _write(self, row: dict[str, Any]) -> None:
        epoch = int(row["epoch"])
        for tag, value in scalars(row).items():
            self.writer.add_scalar(tag, value, epoch)
        for key, tag in PER_BATCH.items():
            values = row.get(key) or []
            first = (epoch - 1) * len(values)
            for b, value in enumerate(values):
                self.writer.add_scalar(tag, float(value), first + b)
        self.writer.flush()

    def close(self) -> None:
        with writing(self.out / "events.out.tfevents.*"):
            self.writer.close()
