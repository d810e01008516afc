"""Issue 32's speed target: every distillation loss's training step (`train`'s Step: the student's
forward, the loss, backward, SGD) at >= 0.95 of `kd`'s images/s, on the same store and batches.

One process; the batches are assembled once (kd-cl-sr from a digits store with 2 views of
every image cached by a random cifar_resnet20, batch 128, the device loader; for mlkd the same
batches with their second view, Batch.pair) and every loss steps a cifar_resnet8 from the same
initial weights over them. Rounds alternate the losses (the order rotates each round); a loss's
figure is the median over rounds of its images/s (samples: an mlkd sample is two views, two
forward passes), and its ratio the median of its per-round ratio to kd's.

    .venv/bin/python benchmarks/loss_speed.py [--rounds 7] [--steps 12]

Results: benchmarks/results/loss_speed.json."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import timm
import torch
from common import machine_record

from kdstore import StoreLoader
from kdstore.cache import write as cache
from kdstore.cache.config import CacheConfig
from kdstore.loader.config import LoaderConfig
from kdstore.method.distill_losses import LOSSES
from kdstore.train.step import Step, cosine, sgd

HERE = Path(__file__).resolve().parent
VARIANTS = [(name, False) for name in LOSSES] + [(name, True) for name, s in LOSSES.items() if s.standardizable]


def _store(root: Path) -> Path:
    store = root / "digits"
    cache.run(
        CacheConfig(
            dataset="digits", out=str(store), teacher="cifar_resnet20", allow_untrained=True, views=2, progress=False
        )
    )
    return store


def _step(loss: str, standardize: bool, classes: int) -> Step:
    torch.manual_seed(0)
    model = timm.create_model("cifar_resnet8", num_classes=classes).to(memory_format=torch.channels_last)
    term = LoaderConfig(loss=loss, logit_standardize=standardize).distill_term()
    optimizer = sgd([{"params": [*model.parameters(), *term.parameters()], "lr": 0.05}], 0.9, 5e-4)  # ctkd: T
    return Step(
        model=model,
        optimizer=optimizer,
        scheduler=cosine(optimizer, 10_000),
        device=torch.device("cpu"),
        tau=4.0,
        loss=term,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--json", default=str(HERE / "results" / "loss_speed.json"))
    a = ap.parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        store = _store(Path(tmp))
        assembled = {}
        for loss in ("kd", "mlkd"):  # the same batches; mlkd's also carry each sample's second view
            loader = StoreLoader(store, variant="kd-cl-sr", batch_size=128, loader="device", workers=1, loss=loss)
            assembled[loss] = [b for _, b in zip(range(a.steps), loader)]
        classes = loader.num_classes
    # FFCV's reader (workers=1 here) sets the process's OpenMP threads through numba, and torch's
    # CPU ops follow it (1 thread after the pass): the steps are timed with one thread per core
    torch.set_num_threads(os.cpu_count() or 1)
    steps = {f"{n}{'+ls' if ls else ''}": _step(n, ls, classes) for n, ls in VARIANTS}
    batches_of = {name: assembled["mlkd" if LOSSES[name.split("+")[0]].pairs else "kd"] for name in steps}
    for name, step in steps.items():  # one warm-up step each
        step(batches_of[name][0])
    names = list(steps)
    per_round: dict[str, list[float]] = {n: [] for n in names}
    for r in range(a.rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            t0 = time.perf_counter()
            for batch in batches_of[name]:
                steps[name](batch)
            per_round[name].append(sum(len(b) for b in batches_of[name]) / (time.perf_counter() - t0))
    rows = {
        name: {
            "images_per_s": statistics.median(v),
            "ratio_to_kd": statistics.median(x / k for x, k in zip(v, per_round["kd"])),
            "per_round": v,
        }
        for name, v in per_round.items()
    }
    record = {
        "rounds": a.rounds,
        "steps": a.steps,
        "batch": 128,
        "student": "cifar_resnet8",
        "losses": rows,
        **machine_record(load_before),
    }
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(record, indent=2) + "\n")
    for name, row in rows.items():
        print(f"{name:8s} {row['images_per_s']:8.1f} img/s  {row['ratio_to_kd']:.3f} of kd")


if __name__ == "__main__":
    main()
