"""Stores by the byte (issue 25), on the real CIFAR-10 images, CPU-sized:

1. fidelity at 1,000 classes: bytes per sample and KL(stored || full) at tau = 1 and tau = 4 of
   float16, int8, top-10 and 12 sampled ids, on real-shaped logits: a trained cifar_resnet20's
   float32 logits of the training images, tiled (row i of 1,000 logits = the 10 logits of
   samples i, i+1, ..., i+99), and on its own 10-class rows;
2. students from an int8 store against a float16 store of the same teacher (kd, cifar_resnet8),
   paired by seed, alternating the order, with `train`'s images/s of each;
3. `cache --dry-run`'s wall-time estimate against the real cache's (separate processes).

    .venv/bin/python benchmarks/stores_by_the_byte.py [--train-per-class 1000] [--seeds 0,1,2]
        [--teacher-epochs 10] [--student-epochs 8] [--views 4]
    .venv/bin/python benchmarks/stores_by_the_byte.py --only-dry-run --json benchmarks/results/dry_run.json

Results: benchmarks/results/stores_by_the_byte.json and a summary on stdout."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from common import WORK, cifar10_subset, machine_record, train_teacher
from fidelity import paired

from kdstore.cache import write as cache
from kdstore.cache.config import CacheConfig
from kdstore.method.sparse_targets import bytes_per_view, view_kl
from kdstore.store.format import Store
from kdstore.train import loop as train
from kdstore.train.config import TrainConfig

HERE = Path(__file__).resolve().parent
STORAGES = {  # name: (storage, k, dtype)
    "float16": ("logits", 1000, "float16"),
    "int8": ("logits", 1000, "int8"),
    "top-10 (float16)": ("topk", 10, "float16"),
    "12 sampled ids": ("sample", 12, "float16"),
}


def _tiled(z: np.ndarray, classes: int = 1000) -> np.ndarray:
    blocks = classes // z.shape[1]
    return np.concatenate([np.roll(z, -b, axis=0) for b in range(blocks)], axis=1)


def fidelity(z: np.ndarray) -> dict:
    out = {}
    for name, (storage, k, dtype) in STORAGES.items():
        c = z.shape[1]
        k = c if storage == "logits" else k
        if storage == "topk" and k >= c:
            continue
        out[name] = {
            "bytes_per_sample": bytes_per_view(storage, k, c, dtype),
            "kl_tau1": view_kl(z, 1.0, storage, k, dtype),
            "kl_tau4": view_kl(z, 4.0, storage, k, dtype),
        }
    return out


def _cache_child(cfg: CacheConfig, dry: bool) -> dict:
    """A cache (or its dry run) in a fresh process, as a user runs it: its wall time from the
    call (imports excluded) and, for the dry run, its estimate."""
    code = (
        "import json, sys, time\n"
        "from kdstore.cache import write\n"
        "from kdstore.cache.config import CacheConfig\n"
        f"cfg = CacheConfig(**json.loads({json.dumps(json.dumps(vars(cfg)))}))\n"
        "t0 = time.perf_counter()\n"
        f"est = write.dry_run(cfg) if {dry} else write.run(cfg)\n"
        "out = {'seconds': time.perf_counter() - t0}\n"
        f"if {dry}: out.update(wall=est.wall, size=est.size, stages=est.seconds, parts=est.parts)\n"
        "print('RESULT ' + json.dumps(out))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT ") :])


def build_stores(
    train_per_class: int = 1000, test_per_class: int = 100, teacher_epochs: int = 10
) -> tuple[Path, CacheConfig, dict[str, Path]]:
    """The teacher (cifar_resnet20 on real CIFAR-10 images) and its float32, float16 and int8
    stores, each made once: (their root, the cache's options, the stores by dtype)."""
    spec = f"imagefolder:{cifar10_subset(train_per_class, test_per_class)}"
    root = WORK / f"bytes-{train_per_class}-{test_per_class}-t{teacher_epochs}"
    checkpoint = str(train_teacher(root, spec, "cifar_resnet20", teacher_epochs))
    base = CacheConfig(dataset=spec, checkpoint=checkpoint, overwrite=True, progress=False)
    stores = {}
    for dtype in ("float32", "float16", "int8"):
        stores[dtype] = root / f"store-{dtype}"
        if not (stores[dtype] / "MANIFEST.json").is_file():
            cache.run(replace(base, out=str(stores[dtype]), logits_dtype=dtype))
    return root, base, stores


def dry_run_trials(root: Path, base: CacheConfig, views: int) -> list[dict]:
    """The dry run's estimate against the real cache, each in its own process: with `views` int8
    views, and without views in float16."""
    trials = []
    for n_views, dtype in ((views, "int8"), (0, "float16")):
        cfg = replace(base, out=str(root / f"dry-{dtype}-v{n_views}"), views=n_views, logits_dtype=dtype)
        dry = _cache_child(replace(cfg, dry_run=True), True)
        real = _cache_child(cfg, False)
        size = sum(f.stat().st_size for f in Path(cfg.out_path).iterdir())
        trials.append(
            {
                "views": n_views,
                "logits_dtype": dtype,
                "estimate_s": dry["wall"],
                "real_s": real["seconds"],
                "ratio": real["seconds"] / dry["wall"],
                "estimate_bytes": dry["size"],
                "real_bytes": size,
                "stages": dry["stages"],
            }
        )
    return trials


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--train-per-class", type=int, default=1000)
    p.add_argument("--test-per-class", type=int, default=100)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--teacher-epochs", type=int, default=10)
    p.add_argument("--student-epochs", type=int, default=8)
    p.add_argument("--views", type=int, default=4)
    p.add_argument("--only-dry-run", action="store_true", help="only the dry run's estimate against the real cache")
    p.add_argument("--json", default=str(HERE / "results" / "stores_by_the_byte.json"))
    args = p.parse_args()
    load_before = os.getloadavg()
    root, base, stores = build_stores(args.train_per_class, args.test_per_class, args.teacher_epochs)
    if args.only_dry_run:
        result = {"dry_run": dry_run_trials(root, base, args.views), **machine_record(load_before)}
        Path(args.json).write_text(json.dumps({**result, "command": " ".join(sys.argv)}, indent=2) + "\n")
        print(json.dumps(result, indent=1))
        return
    z = np.asarray(Store.open(stores["float32"]).train.logits, dtype=np.float32)
    result: dict = {
        "teacher_val_acc": Store.open(stores["float32"]).attrs["teacher_val_acc"],
        "fidelity_1000_tiled": fidelity(_tiled(z)),
        "fidelity_10_classes": fidelity(z),
    }
    # Students: kd from the float16 and the int8 store, paired by seed, the order alternating.
    seeds = [int(s) for s in args.seeds.split(",")]
    tcfg = TrainConfig(
        student="cifar_resnet8", variant="kd", epochs=args.student_epochs, batch_size=128, lr=0.05, progress=False
    )
    accs: dict[str, dict[int, float]] = {"float16": {}, "int8": {}}
    ips: dict[str, list[float]] = {"float16": [], "int8": []}
    for i, seed in enumerate(seeds):
        for dtype in ("float16", "int8") if i % 2 == 0 else ("int8", "float16"):
            out = root / "runs" / f"{dtype}-s{seed}"
            train.run(replace(tcfg, store=str(stores[dtype]), out=str(out), seed=seed, overwrite=True))
            rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
            accs[dtype][seed] = rows[-1]["val_acc"]
            ips[dtype] += [r["images_per_s"] for r in rows[1:]]  # the first epoch warms up
    result["students"] = {
        "accuracy": accs,
        "int8_minus_float16": paired(accs["int8"], accs["float16"]),
        "images_per_s_median": {k: float(np.median(v)) for k, v in ips.items()},
        "images_per_s_ratio_int8_over_float16": float(np.median(ips["int8"]) / np.median(ips["float16"])),
    }
    result["dry_run"] = dry_run_trials(root, base, args.views)
    result.update(machine_record(load_before), command=" ".join(sys.argv))
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "students"}, indent=1)[:4000])
    print(json.dumps(result["students"], indent=1))


if __name__ == "__main__":
    t0 = time.perf_counter()
    main()
    print(f"{time.perf_counter() - t0:.0f} s")
