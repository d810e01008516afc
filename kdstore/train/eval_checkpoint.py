"""`kdstore eval`: a saved model (teacher or student checkpoint) on a dataset split or a store's
validation images: accuracy and mean cross-entropy, optionally its logits.
Images go through the path `train` evaluates with (an FFCV file, the normalisation the model was
trained with, resized to its input size), so the accuracy matches the run's own val_acc."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdstore.data.beton import write_beton
from kdstore.data.datasets import load_dataset
from kdstore.errors import KdstoreError
from kdstore.models.build import build_from_meta, normalization_for
from kdstore.models.checkpoints import load_checkpoint, load_weights
from kdstore.options import opt, path_problems, write_json
from kdstore.passes.inference import (
    ModelInput,
    ScorePass,
    clean_forward,
    score_beton,
    stored_outputs,
)
from kdstore.runtime.console import say
from kdstore.runtime.devices import DEVICES, resolve_device
from kdstore.runtime.precision import for_device
from kdstore.store.format import Store


@dataclass(frozen=True, kw_only=True)
class EvalConfig:
    """`kdstore eval`: a checkpoint and the images to score it on; `kdstore.evaluate.run(cfg)`
    runs it and returns the accuracy and mean cross-entropy."""

    checkpoint: str = opt(
        help="A checkpoint.pt written by `kdstore train` or `kdstore teacher`.", required=True, path=True
    )
    dataset: str | None = opt(help="digits, cifar10, cifar100 or imagefolder:PATH (or give --store).")
    store: str | None = opt(help="Evaluate on a store's images instead of --dataset.", path=True)
    split: str = opt("val", "Which split.", choices=("val", "train"))
    data_root: str | None = opt(help="Where torchvision datasets live (default ~/.cache/kdstore/data).", path=True)
    image_size: int | None = opt(help="Size images are stored at (imagefolder).")
    batch_size: int = opt(512, "Batch size.")
    workers: int = opt(0, "FFCV threads; 0: one per core.")
    device: str = opt("auto", "auto: cuda when available, else cpu.", choices=DEVICES)
    amp: bool = opt(True, "bf16 autocast on CUDA, as `train` evaluates (ignored on the CPU).")
    logits: str | None = opt(
        help="Also write the logits (N, C) float32 with labels and sample ids here (.npz).", path=True
    )
    json: str | None = opt(help="Write the figures as JSON here.", path=True)
    progress: bool = opt(True, "Progress bar.")

    def validate(self) -> None:
        wrong = path_problems(self)
        if wrong:
            raise KdstoreError(wrong[0])
        if (self.dataset is None) == (self.store is None):
            raise KdstoreError("give exactly one of --dataset and --store")
        if self.batch_size < 1 or self.workers < 0:
            raise KdstoreError(
                f"--batch-size must be >= 1 and --workers >= 0, got {self.batch_size} and {self.workers}"
            )
        for name in ("logits", "json"):
            value = getattr(self, name)
            if value and Path(value).is_dir():
                raise KdstoreError(f"--{name} {value} is a directory; name a file")


def evaluate_beton(
    model: torch.nn.Module, beton: Path, mean, std, input_size: int, cfg: EvalConfig, device: torch.device
) -> dict[str, Any]:
    """Logits of every image of `beton` (file order) through the shared inference pass, then accuracy and loss."""
    inp = ModelInput(
        model=model,
        mean=torch.tensor(mean, device=device),
        std=torch.tensor(std, device=device),
        input_size=input_size,
        device=device,
        amp=cfg.amp,
    )
    job = ScorePass(
        beton=beton,
        batch_size=cfg.batch_size,
        workers=cfg.workers,
        label="evaluating",
        progress=cfg.progress,
        post=stored_outputs("float32"),
    )
    scored = score_beton(clean_forward(inp), job)
    logits = torch.from_numpy(np.asarray(scored["logits"], dtype=np.float32))
    labels = torch.from_numpy(np.asarray(scored["labels"], dtype=np.int64))
    loss = torch.nn.functional.cross_entropy(logits, labels).item() if len(labels) else float("nan")
    acc = (logits.argmax(1) == labels).double().mean().item() if len(labels) else float("nan")
    return {
        "accuracy": acc,
        "loss": loss,
        "samples": int(len(labels)),
        "logits": logits.numpy(),
        "labels": labels.numpy(),
        "sample_id": np.asarray(scored["sample_id"]),
    }


def run(cfg: EvalConfig) -> dict[str, Any]:
    cfg.validate()
    ckpt = load_checkpoint(Path(cfg.checkpoint))
    meta = ckpt.get("meta") if isinstance(ckpt, dict) else None
    if not isinstance(meta, dict) or "model" not in meta:
        raise KdstoreError(
            f"checkpoint {cfg.checkpoint} does not say which model it holds (not written by kdstore train/teacher)"
        )
    model = build_from_meta(meta)
    load_weights(model, ckpt, Path(cfg.checkpoint))
    device = resolve_device(cfg.device)
    for_device(model, device)
    # The normalisation the model was trained with (recorded since kdstore 0.1; older: timm's for the model).
    mean, std = (
        (meta["normalize_mean"], meta["normalize_std"])
        if "normalize_mean" in meta
        else normalization_for(meta["model"])
    )
    with tempfile.TemporaryDirectory(prefix="kdstore-eval-") as tmp:
        if cfg.store:
            store = Store.open(cfg.store)
            source, num_classes, beton = f"store {cfg.store} ({cfg.split})", store.num_classes, store.beton(cfg.split)
        else:
            assert cfg.dataset is not None  # validate(): --dataset or --store
            ds = load_dataset(cfg.dataset, Path(cfg.data_root) if cfg.data_root else None, cfg.image_size)
            source, num_classes, beton = f"{ds.name} ({cfg.split})", ds.num_classes, Path(tmp) / f"{cfg.split}.beton"
            write_beton(getattr(ds, cfg.split), beton, cfg.workers)
        if num_classes != int(meta["num_classes"]):
            raise KdstoreError(
                f"checkpoint {cfg.checkpoint} has {meta['num_classes']} classes but {source} has {num_classes}"
            )
        r = evaluate_beton(model, beton, mean, std, int(meta["input_size"]), cfg, device)
    result = {
        "checkpoint": str(cfg.checkpoint),
        "model": meta["model"],
        "source": source,
        "split": cfg.split,
        "accuracy": r["accuracy"],
        "loss": r["loss"],
        "samples": r["samples"],
    }
    say(f"{meta['model']} on {source}: accuracy {r['accuracy']:.2%}, loss {r['loss']:.4f} ({r['samples']} images)")
    if cfg.logits:
        Path(cfg.logits).parent.mkdir(parents=True, exist_ok=True)
        with open(cfg.logits, "wb") as f:  # np.savez would append .npz to a name without it
            np.savez(f, logits=r["logits"], labels=r["labels"], sample_id=r["sample_id"])
        say(f"wrote {cfg.logits}")
    if cfg.json:
        Path(cfg.json).parent.mkdir(parents=True, exist_ok=True)
        write_json(Path(cfg.json), result)
        say(f"wrote {cfg.json}")
    return result
