"""Augmentation-consistent stores (issue 8) on the real CIFAR-10 images, CPU-sized: unguided,
offline KD from clean-image logits, offline KD replaying K = 4, 8, 16 stored views, online KD.

    .venv/bin/python benchmarks/views.py [--views 4,8,16] [--seeds 0,1,2] [--student-epochs 6]

The teacher, the clean store and the unguided / clean offline KD / online KD students are the
accuracy benchmark's (accuracy.py, same recipe; its finished runs are reused). Each K gets its
own store (`kdstore cache --views K`, timed here) and `kd` students that replay the views.
Results: benchmarks/results/views.json and a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from accuracy import mode_runs, seed_stats
from common import WORK, cifar10_subset, teacher_and_store

from kdstore.cache import write as cache
from kdstore.cache.config import CacheConfig
from kdstore.train import loop as train
from kdstore.train.config import TrainConfig


def store_mib(path: Path) -> dict[str, float]:
    """The whole store and its teacher.h5 (what the views add to); the .beton sizes vary a little
    from cache to cache with how FFCV's writer threads fill their pages."""
    return {
        "total": sum(p.stat().st_size for p in path.iterdir() if p.is_file()) / 2**20,
        "teacher_h5": (path / "teacher.h5").stat().st_size / 2**20,
    }


def _size(mib: dict[str, float] | None) -> str:
    return "-" if mib is None else f"{mib['total']:.1f} ({mib['teacher_h5']:.2f})"


def replay_speed(store: Path, work: Path, rounds: int) -> dict:
    """Training images/s of one `kd` epoch from the same views store, clean logits against
    replayed views, alternating (clean, replay) `rounds` times so both see the same machine."""
    base = TrainConfig(
        out="",
        store=str(store),
        student="cifar_resnet8",
        variant="kd",
        epochs=1,
        batch_size=128,
        progress=False,
        overwrite=True,
    )
    ips: dict[str, list[float]] = {"clean": [], "replay": []}
    for r in range(rounds):
        for mode in ips:
            ips[mode].append(train.run(replace(base, view_mode=mode, out=str(work / f"{mode}-{r}")))["images_per_s"])
    return {
        "images_per_s": ips,
        "replay_vs_clean": float(np.median(ips["replay"]) / np.median(ips["clean"])),
        "store": str(store),
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--views", default="4,8,16")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--teacher-epochs", type=int, default=8)
    p.add_argument("--student-epochs", type=int, default=6)
    p.add_argument(
        "--speed-rounds", type=int, default=3, help="alternating clean/replay epochs for the speed comparison (0: skip)"
    )
    args = p.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    spec = f"imagefolder:{cifar10_subset(500, 500)}"
    root = WORK / f"accuracy-500-500-t{args.teacher_epochs}-s{args.student_epochs}"
    clean_store, *_ = teacher_and_store(root, spec, "cifar_resnet20", args.teacher_epochs)
    checkpoint = root / "teacher" / "checkpoint.pt"
    rows = {m: seed_stats(rs) for m, rs in mode_runs(root, clean_store, seeds, args.student_epochs).items()}
    sizes = {"offline-kd": store_mib(clean_store)}
    cache_seconds = {}
    work = WORK / f"views-500-500-t{args.teacher_epochs}"
    base = TrainConfig(
        out="",
        student="cifar_resnet8",
        variant="kd",
        epochs=args.student_epochs,
        batch_size=128,
        lr=0.05,
        progress=False,
    )
    for k in [0] + [int(v) for v in args.views.split(",")]:
        store = work / f"K{k}"
        timing = work / f"K{k}.cache-seconds"
        if not (store / "MANIFEST.json").is_file():
            t0 = time.perf_counter()
            cache.run(
                CacheConfig(
                    dataset=spec, out=str(store), checkpoint=str(checkpoint), views=k, overwrite=True, progress=False
                )
            )
            timing.write_text(f"{time.perf_counter() - t0}\n")
        name = "offline-kd" if k == 0 else f"offline-kd-views{k}"
        cache_seconds[name] = float(timing.read_text())
        sizes[name] = store_mib(store)
        if k == 0:  # the clean store is re-cached only to time it like the others
            continue
        summaries = []
        for seed in seeds:
            out = work / "runs" / f"K{k}-s{seed}"
            if not (out / "summary.json").is_file():
                train.run(replace(base, store=str(store), out=str(out), seed=seed, overwrite=True))
            summaries.append(json.loads((out / "summary.json").read_text()))
        assert all(s["views"]["mode"] == "replay" and s["views"]["count"] == k for s in summaries)
        rows[name] = seed_stats(summaries)
    speed = (
        replay_speed(work / f"K{max(int(v) for v in args.views.split(','))}", work / "speed", args.speed_rounds)
        if args.speed_rounds
        else {}
    )
    result = {
        "speed": speed,
        "seeds": seeds,
        "student_epochs": args.student_epochs,
        "rows": rows,
        "store_mib": sizes,
        "cache_seconds": cache_seconds,
    }
    out = Path(__file__).parent / "results" / "views.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        "| students (cifar_resnet8) | final val acc, mean ± std | per seed | training images/s (median) | store MiB "
        "(teacher.h5) | cache s |"
    )
    print("|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(
            f"| {name} | {100 * r['final_val_acc_mean']:.2f} ± {100 * r['final_val_acc_std']:.2f} | "
            f"{', '.join(f'{100 * v:.2f}' for v in r['values'])} | {r['images_per_s_median']:.0f} | "
            f"{_size(sizes.get(name))} | {cache_seconds.get(name, float('nan')):.1f} |"
        )
    if speed:
        print(f"replay / clean training images/s: {speed['replay_vs_clean']:.3f} ({json.dumps(speed['images_per_s'])})")


if __name__ == "__main__":
    main()
