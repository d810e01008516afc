"""kdstore's `train` against the simplest honest plain PyTorch loop, on the CPU (issue 26).

The plain loop is what a reviewer would write: the training split as one in-memory uint8 tensor
(decoded with PIL from the same real CIFAR-10 JPEGs), a seeded permutation per epoch, the same
augmentation (zero-padded random crop of 4 px and a flip, drawn per sample), normalisation,
model (`cifar_resnet8` from timm's registry), loss (CE, and for KD the teacher's logits read
from the store's teacher.h5 with h5py and gathered by index), SGD with Nesterov momentum and a
per-step cosine schedule; no kdstore code runs in its loop. Both are timed over the training
pass alone (kdstore's `seconds`; the plain loop's loop), the first epoch left out, alternating
plain and kdstore (ABBA per variant) in one process with the same torch threads.

    .venv/bin/python benchmarks/parity.py [--train-per-class 1000] [--epochs 3] [--json F]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import h5py
import numpy as np
import timm
import torch
import torch.nn.functional as F
from common import WORK, cifar10_subset, machine_record, speed_store
from PIL import Image

import kdstore.models  # noqa: F401 - registers cifar_resnet8 in timm's registry (model building only)
from kdstore.train import loop as train
from kdstore.train.config import TrainConfig

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def load_split(root: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """root/train/CLASS/*.jpg -> uint8 (N, 32, 32, 3), labels (N,), in sorted class and file order."""
    classes = sorted(d.name for d in (root / "train").iterdir() if d.is_dir())
    images, labels = [], []
    for k, c in enumerate(classes):
        for f in sorted((root / "train" / c).iterdir()):
            images.append(np.asarray(Image.open(f).convert("RGB")))
            labels.append(k)
    return torch.from_numpy(np.stack(images)), torch.tensor(labels)


def plain_epochs(images, labels, teacher, epochs: int, lam: float, batch: int = 128, seed: int = 0) -> list[float]:
    """The plain loop; returns the training images/s of each epoch."""
    torch.manual_seed(seed)
    model = timm.create_model("cifar_resnet8", num_classes=10)
    n = len(labels)
    steps = epochs * (n // batch + (n % batch > 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=True)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    g = torch.Generator().manual_seed(seed)
    rates = []
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(n, generator=g)
        t0 = time.perf_counter()
        for lo in range(0, n - 1, batch):
            idx = order[lo : lo + batch]
            if len(idx) < 2:
                break
            x = (images[idx].permute(0, 3, 1, 2).float() / 255 - mean) / std
            b = len(idx)
            dx, dy = torch.randint(0, 9, (b,), generator=g), torch.randint(0, 9, (b,), generator=g)
            flip = torch.randint(0, 2, (b,), generator=g).bool()
            padded = F.pad(x, (4, 4, 4, 4))
            rows = dy[:, None] + torch.arange(32)
            cols = dx[:, None] + torch.arange(32)
            cols = torch.where(flip[:, None], cols.flip(1), cols)
            x = padded.permute(0, 2, 3, 1)[torch.arange(b)[:, None, None], rows[:, :, None], cols[:, None, :]]
            x = x.permute(0, 3, 1, 2).contiguous()
            logits = model(x)
            loss = F.cross_entropy(logits, labels[idx])
            if lam:
                t = teacher[idx].float()
                kd = F.kl_div(
                    F.log_softmax(logits / 4, 1), F.log_softmax(t / 4, 1), reduction="batchmean", log_target=True
                )
                loss = (1 - lam) * loss + lam * 16 * kd
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        rates.append(n / (time.perf_counter() - t0))
    return rates


def kdstore_epochs(store: Path, variant: str, epochs: int, out: Path) -> list[float]:
    cfg = TrainConfig(
        out=str(out),
        store=str(store),
        variant=variant,
        student="cifar_resnet8",
        epochs=epochs,
        batch_size=128,
        progress=False,
        overwrite=True,
        tensorboard=False,
        agreement_samples=0,
    )
    train.run(cfg)
    return [json.loads(line)["images_per_s"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train-per-class", type=int, default=1000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--json", default=str(Path(__file__).parent / "results" / "parity.json"))
    args = ap.parse_args()
    root = cifar10_subset(args.train_per_class, 100)
    store = WORK / f"parity-{args.train_per_class}" / "store"
    speed_store(root, store)
    images, labels = load_split(root)
    with h5py.File(store / "teacher.h5", "r") as f:  # rows in .beton order; sample ids are file-order indices
        logits, ids = f["train/logits"][()], f["train/sample_id"][()]
    teacher = torch.empty((len(labels), logits.shape[1]), dtype=torch.float16)
    teacher[torch.from_numpy(ids)] = torch.from_numpy(logits)
    load_before = os.getloadavg()
    runs = []
    for variant, lam in (("unguided", 0.0), ("kd", 0.9)):
        for i, who in enumerate(("plain", "kdstore", "kdstore", "plain")):
            t0 = time.perf_counter()
            if who == "plain":
                rates = plain_epochs(images, labels, teacher, args.epochs, lam)
            else:
                rates = kdstore_epochs(
                    store, variant, args.epochs, WORK / f"parity-{args.train_per_class}" / f"run-{i}"
                )
            runs.append(
                {
                    "variant": variant,
                    "who": who,
                    "per_epoch": rates,
                    "steady": float(np.median(rates[1:])),
                    "seconds": time.perf_counter() - t0,
                }
            )
            print(
                f"{variant:9} {who:8} {runs[-1]['steady']:8,.0f} img/s  (epochs {[round(r) for r in rates]})",
                flush=True,
            )
    summary = {}
    for variant in ("unguided", "kd"):
        mine = [r["steady"] for r in runs if r["variant"] == variant and r["who"] == "kdstore"]
        plain = [r["steady"] for r in runs if r["variant"] == variant and r["who"] == "plain"]
        summary[variant] = {
            "kdstore": float(np.mean(mine)),
            "plain": float(np.mean(plain)),
            "ratio": float(np.mean(mine) / np.mean(plain)),
        }
        print(f"{variant}: kdstore/plain = {summary[variant]['ratio']:.3f}", flush=True)
    result = {
        **machine_record(load_before),
        "images": len(labels),
        "epochs": args.epochs,
        "runs": runs,
        "summary": summary,
    }
    Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
