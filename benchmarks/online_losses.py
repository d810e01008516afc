"""Offline against online on the real CIFAR-10 images for the distillation losses (issue 32):
students trained from the store's replayed views against students trained with the teacher run
on the same augmented images at every step (and, for mlkd, on each sample's second view too),
3 seeds, paired by seed.

    .venv/bin/python benchmarks/online_losses.py [--losses dkd,mlkd] [--train-per-class 500]

Teacher: cifar_resnet20 trained with `kdstore teacher` on the subset, cached with 2 views per
image (float16 logits). Students: cifar_resnet8, `--variant` (default kd-cl-sr: mlkd collapses at
a fixed lambda of 0.9, benchmarks/RESULTS.md), batch 64, lr 0.05. Everything lands under
~/.cache/kdstore/bench/; the table goes to benchmarks/results/online_losses.json and stdout."""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import replace
from pathlib import Path

from common import WORK, cifar10_subset, machine_record, train_teacher

from kdstore.cache import write as cache
from kdstore.cache.config import CacheConfig
from kdstore.report.tables import mean_std, paired_diff
from kdstore.store.format import Store
from kdstore.train import loop as train
from kdstore.train.config import TrainConfig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--losses", default="dkd,mlkd")
    ap.add_argument("--variant", default="kd-cl-sr")
    ap.add_argument("--train-per-class", type=int, default=500)
    ap.add_argument("--test-per-class", type=int, default=200)
    ap.add_argument("--teacher-epochs", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--seeds", default="0,1,2")
    args = ap.parse_args()
    load_before = os.getloadavg()
    folder = cifar10_subset(args.train_per_class, args.test_per_class)
    root = WORK / f"online-losses-{args.train_per_class}-{args.test_per_class}-t{args.teacher_epochs}"
    spec = f"imagefolder:{folder}"
    checkpoint = train_teacher(root, spec, "cifar_resnet20", args.teacher_epochs, progress=False)
    store_dir = root / "store"
    if not (store_dir / "MANIFEST.json").is_file():
        cache.run(CacheConfig(dataset=spec, out=str(store_dir), checkpoint=str(checkpoint), views=2, progress=False))
    store = Store.open(store_dir)
    seeds = [int(s) for s in args.seeds.split(",")]
    base = TrainConfig(
        out="", store=str(store_dir), student="cifar_resnet8", variant=args.variant, epochs=args.epochs,
        batch_size=64, lr=0.05, workers=1, progress=False, overwrite=True,
    )  # fmt: skip
    table: dict = {"teacher_val_acc": store.attrs["teacher_val_acc"], "losses": {}}
    for loss in args.losses.split(","):
        final: dict[str, dict[int, float]] = {"offline": {}, "online": {}}
        for seed in seeds:
            for mode in ("offline", "online"):
                out = root / "runs" / f"{loss}-{mode}-s{seed}"
                if not (out / "summary.json").is_file():
                    cfg = replace(base, out=str(out), seed=seed, loss=loss)
                    if mode == "online":
                        train.run_online(cfg, store, checkpoint=str(checkpoint))
                    else:
                        train.run(cfg)
                final[mode][seed] = json.loads((out / "summary.json").read_text())["final_val_acc"]
        table["losses"][loss] = {
            mode: dict(zip(("mean", "std"), mean_std(list(v.values())))) | {"values": v} for mode, v in final.items()
        } | {"offline_minus_online": paired_diff(final["offline"], final["online"])}
        print(loss, json.dumps(table["losses"][loss]), flush=True)
    table.update(
        recipe={k: getattr(args, k) for k in ("variant", "train_per_class", "test_per_class", "teacher_epochs")}
        | {"epochs": args.epochs, "batch": 64, "lr": 0.05, "views": 2, "seeds": seeds},
        **machine_record(load_before),
    )
    path = Path(__file__).parent / "results" / "online_losses.json"
    path.write_text(json.dumps(table, indent=2) + "\n")


if __name__ == "__main__":
    main()
