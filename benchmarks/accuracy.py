"""Accuracy on the real CIFAR-10 images with a CPU-sized recipe: unguided vs offline KD (cached
clean-image logits) vs online KD (the teacher on every augmented batch), over several seeds.

    .venv/bin/python benchmarks/accuracy.py [--train-per-class 500] [--test-per-class 500] [--seeds 0,1,2]

Teacher: cifar_resnet20 trained with `kdstore teacher`; students: cifar_resnet8, variant `kd`
(shuffled, lambda 0.9, tau 4) or `unguided`. Everything lands under ~/.cache/kdstore/bench/;
the table (mean ± std over seeds) goes to benchmarks/results/accuracy.json and stdout.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
from common import WORK, cifar10_subset, teacher_and_store

from kdstore.store.format import Store
from kdstore.train import loop as train
from kdstore.train.config import TrainConfig


def mode_runs(
    root: Path, store_dir: Path, seeds: list[int], epochs: int, modes=("unguided", "offline-kd", "online-kd")
) -> dict[str, list[dict]]:
    """Student summaries per mode and seed under root/runs (finished runs are reused)."""
    store = Store.open(store_dir)
    base = TrainConfig(
        out="", store=str(store_dir), student="cifar_resnet8", epochs=epochs, batch_size=128, lr=0.05, progress=False
    )
    rows: dict[str, list[dict]] = {}
    for mode in modes:
        for seed in seeds:
            out = root / "runs" / f"{mode}-s{seed}"
            if not (out / "summary.json").is_file():
                cfg = replace(
                    base, out=str(out), seed=seed, variant="unguided" if mode == "unguided" else "kd", overwrite=True
                )
                if mode == "online-kd":
                    train.run_online(cfg, store, checkpoint=str(root / "teacher" / "checkpoint.pt"))
                else:
                    train.run(cfg)
            rows.setdefault(mode, []).append(json.loads((out / "summary.json").read_text()))
    return rows


def seed_stats(summaries: list[dict]) -> dict:
    """Mean, std (ddof 1) and values of final val accuracy over seeds; median training images/s."""
    acc = [r["final_val_acc"] for r in summaries]
    return {
        "final_val_acc_mean": float(np.mean(acc)),
        "final_val_acc_std": float(np.std(acc, ddof=1)) if len(acc) > 1 else 0.0,
        "values": acc,
        "images_per_s_median": float(np.median([r["images_per_s"] for r in summaries])),
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--train-per-class", type=int, default=500)
    p.add_argument("--test-per-class", type=int, default=500)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--teacher-epochs", type=int, default=6)
    p.add_argument("--student-epochs", type=int, default=4)
    args = p.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    folder = cifar10_subset(args.train_per_class, args.test_per_class)
    root = WORK / f"accuracy-{args.train_per_class}-{args.test_per_class}-t{args.teacher_epochs}-s{args.student_epochs}"
    spec = f"imagefolder:{folder}"
    store_dir, teacher_s, cache_s = teacher_and_store(root, spec, "cifar_resnet20", args.teacher_epochs)
    store = Store.open(store_dir)
    rows = mode_runs(root, store_dir, seeds, args.student_epochs)
    table = {
        "teacher_val_acc": store.attrs["teacher_val_acc"],
        "train_images": len(store.train),
        "val_images": len(store.val),
        "teacher_seconds": teacher_s,
        "cache_seconds": cache_s,
        "seeds": seeds,
        "student_epochs": args.student_epochs,
        "modes": {m: seed_stats(rs) for m, rs in rows.items()},
    }
    out = Path(__file__).parent / "results" / "accuracy.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(table, indent=2) + "\n")
    print(json.dumps(table, indent=2))


if __name__ == "__main__":
    main()
