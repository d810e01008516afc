"""The curricula the paper names as missing (issue 9), on the real CIFAR-10 images, CPU-sized:
kd, kd-cl, kd-cl with linear and exp pacing, random-cl with linear pacing (the control),
kd-cl scored by student snapshots, and kd-cl from a two-teacher merged store; several seeds.

    .venv/bin/python benchmarks/curricula.py [--seeds 0,1,2] [--student-epochs 6]

Teacher A is the accuracy benchmark's cifar_resnet20 (8 epochs; trained here if absent);
teacher B a second cifar_resnet20 trained with another seed. Every run is `kdstore sweep`'s
(resumable); the table (paired against `kd`) goes to benchmarks/results/curricula.json.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from common import WORK, cifar10_subset, teacher_and_store

from kdstore.report import sweep
from kdstore.report import tables as report
from kdstore.report.sweep import SweepConfig
from kdstore.store import merge
from kdstore.store.format import Store
from kdstore.train.config import TrainConfig


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--teacher-epochs", type=int, default=8)
    p.add_argument("--student-epochs", type=int, default=6)
    p.add_argument("--rescore-every", type=int, default=2)
    args = p.parse_args()
    seeds = sweep.parse_seeds(args.seeds)
    spec = f"imagefolder:{cifar10_subset(500, 500)}"
    store_a, *_ = teacher_and_store(
        WORK / f"accuracy-500-500-t{args.teacher_epochs}-s6", spec, "cifar_resnet20", args.teacher_epochs
    )
    store_b, *_ = teacher_and_store(
        WORK / f"teacher-b-500-500-t{args.teacher_epochs}", spec, "cifar_resnet20", args.teacher_epochs, seed=1
    )
    merged = WORK / f"merged-500-500-t{args.teacher_epochs}"
    if not (merged / "MANIFEST.json").is_file():
        merge.run(merge.MergeConfig(stores=(str(store_a), str(store_b)), out=str(merged), overwrite=True))
    runs = WORK / f"curricula-e{args.student_epochs}"
    base = TrainConfig(
        out="",
        store=str(store_a),
        student="cifar_resnet8",
        epochs=args.student_epochs,
        batch_size=128,
        lr=0.05,
        rescore_every=args.rescore_every,
        progress=False,
    )
    a, spec_seeds = replace(base, out=str(runs / "a")), ",".join(map(str, seeds))
    sweep.run(SweepConfig(variants="kd,kd-cl", seeds=spec_seeds, base=a))
    sweep.run(SweepConfig(variants="kd-cl,random-cl", seeds=spec_seeds, pacing="linear", base=a))
    sweep.run(SweepConfig(variants="kd-cl", seeds=spec_seeds, pacing="exp", base=a))
    sweep.run(SweepConfig(variants="kd-cl", seeds=spec_seeds, scorer="student", base=a))
    sweep.run(
        SweepConfig(variants="kd-cl", seeds=spec_seeds, base=replace(base, out=str(runs / "merged"), store=str(merged)))
    )
    found = report.find_runs([runs / "a"])
    merged_runs = report.find_runs([runs / "merged"])
    for r in merged_runs:
        r.summary["arm"] = "kd-cl (merged A+B)"
    summary = report.summarize(found + merged_runs, allow_mixed=True, baseline="kd")
    report.write_report(summary, runs / "report", found)
    stores = {name: Store.open(path).attrs for name, path in (("a", store_a), ("b", store_b), ("merged", merged))}
    summary["teachers"] = {k: {"teacher": a["teacher"], "val_acc": a["teacher_val_acc"]} for k, a in stores.items()}
    summary["config"] = {
        "student_epochs": args.student_epochs,
        "seeds": seeds,
        "rescore_every": args.rescore_every,
        "pacing_a": base.pacing_a,
        "pacing_b": base.pacing_b,
        "train_images": 5000,
        "val_images": 5000,
    }
    out = Path(__file__).parent / "results" / "curricula.json"
    out.write_text(json.dumps(summary, indent=2) + "\n")
    header, body = report.table_rows(summary)
    print("| " + " | ".join(header) + " |")
    for row in body:
        print("| " + " | ".join(row) + " |")
    print(json.dumps(summary["teachers"]))


if __name__ == "__main__":
    main()
