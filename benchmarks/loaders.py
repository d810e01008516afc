"""Data held in memory (`--loader device`) against FFCV's Loader (`--loader ffcv`), CPU (issue 13).

`train` runs of `cifar_resnet8` with offline KD from one store of real CIFAR-10 images, the two
loaders alternating (ABBA, so drift hits both alike): training images/s per epoch (the first
epoch, which compiles FFCV's pipeline or decodes the split, is left out), the fraction of the
epoch spent waiting for data, and whether the two gave the same metrics.

    .venv/bin/python benchmarks/loaders.py [--train-per-class 1000] [--epochs 4] [--batch-size 128]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from common import WORK, cifar10_subset, speed_store

from kdstore.store.format import Store
from kdstore.train import loop as train
from kdstore.train.config import TrainConfig

TIMING = ("seconds", "images_per_s", "data_wait_frac", "eval_seconds")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train-per-class", type=int, default=1000)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--json", default=str(Path(__file__).parent / "results" / "loaders.json"))
    args = ap.parse_args()
    root = cifar10_subset(args.train_per_class, 200)
    store = WORK / f"loaders-{args.train_per_class}" / "store"
    speed_store(root, store)
    load_before = os.getloadavg()
    runs = []
    for i, loader in enumerate(("ffcv", "device", "device", "ffcv")):
        out = WORK / f"loaders-{args.train_per_class}" / f"run-{i}-{loader}"
        cfg = TrainConfig(
            out=str(out),
            store=str(store),
            variant="kd",
            student="cifar_resnet8",
            epochs=args.epochs,
            batch_size=args.batch_size,
            loader=loader,
            agreement_samples=0,
            tensorboard=False,
            progress=False,
            overwrite=True,
        )
        train.fit(cfg, train.data_from_store(Store.open(store)), cfg.student, "student")
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        runs.append(
            {
                "loader": loader,
                "loader_used": json.loads((out / "config.json").read_text())["loader_used"],
                "images_per_s": [r["images_per_s"] for r in rows],
                "data_wait_frac": [r["data_wait_frac"] for r in rows],
                "metrics": [{k: v for k, v in r.items() if k not in TIMING} for r in rows],
            }
        )
    summary = {}
    for loader in ("ffcv", "device"):
        mine = [r for r in runs if r["loader"] == loader]
        steady = np.array([v for r in mine for v in r["images_per_s"][1:]])
        summary[loader] = {
            "images_per_s_median": float(np.median(steady)),
            "images_per_s_min": float(steady.min()),
            "images_per_s_max": float(steady.max()),
            "data_wait_frac_median": float(np.median([v for r in mine for v in r["data_wait_frac"][1:]])),
        }
    result = {
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "load_before": load_before,
            "load_after": os.getloadavg(),
        },
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "args": vars(args),
        "n_train": len(Store.open(store).train),
        "runs": runs,
        "summary": summary,
        "device_over_ffcv": summary["device"]["images_per_s_median"] / summary["ffcv"]["images_per_s_median"],
        "same_metrics": all(r["metrics"] == runs[0]["metrics"] for r in runs),
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1))
    print(json.dumps({k: result[k] for k in ("machine", "summary", "device_over_ffcv", "same_metrics")}, indent=1))


if __name__ == "__main__":
    main()
