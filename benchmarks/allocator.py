"""`kdstore train` with glibc malloc's defaults against kdstore's settings (runtime/allocator.py),
on the real CIFAR-10 images, CPU.

Each run is its own process (`kdstore train --variant kd --epochs 2`, cifar_resnet8, batch 128),
alternating defaults (KDSTORE_SYSTEM_MALLOC=1) / tuned / tuned / defaults (`--rounds` times); per run
its wall time, system time and minor page faults (getrusage of the child), on an idle machine. The
runs' metrics are compared too: the allocator must not change a number.

    .venv/bin/python benchmarks/allocator.py [--train-per-class 500] [--epochs 2] [--rounds 2] [--json F]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from common import WORK, cifar10_subset, machine_record, speed_store

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.helpers import untimed  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def train(store: Path, epochs: int, out: Path, system_malloc: bool) -> dict[str, float]:
    """One `kdstore train` in its own process; its wall and system seconds and minor page faults."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "kdstore", "train", "--store", str(store), "--variant", "kd"]
    cmd += ["--epochs", str(epochs), "--out", str(out), "--no-progress"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    if system_malloc:
        env["KDSTORE_SYSTEM_MALLOC"] = "1"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {
        "wall_s": wall,
        "sys_s": after.ru_stime - before.ru_stime,
        "minor_faults": after.ru_minflt - before.ru_minflt,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train-per-class", type=int, default=500)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2, help="ABBA rounds.")
    ap.add_argument("--json", default=str(Path(__file__).parent / "results" / "allocator.json"))
    args = ap.parse_args()
    root = cifar10_subset(args.train_per_class, 100)
    work = WORK / f"allocator-{args.train_per_class}"
    store = speed_store(root, WORK / f"concurrent-students-{args.train_per_class}" / "store")
    load_before = os.getloadavg()
    runs: dict[str, list[dict[str, float]]] = {"defaults": [], "tuned": []}
    seen = {}
    for name in ("defaults", "tuned", "tuned", "defaults") * args.rounds:
        out = work / name
        runs[name].append(train(store, args.epochs, out, name == "defaults"))
        seen[name] = [untimed(json.loads(line)) for line in (out / "metrics.jsonl").read_text().splitlines()]
        print(name, {k: round(v, 2) for k, v in runs[name][-1].items()})
    median = {n: {k: float(np.median([r[k] for r in rs])) for k in rs[0]} for n, rs in runs.items()}
    same = seen["defaults"] == seen["tuned"]
    result = {"store": str(store), "epochs": args.epochs, "runs": runs, "median": median, "same_metrics": same}
    result.update(machine_record(load_before))
    print(f"median: {median}; wall ratio defaults/tuned {median['defaults']['wall_s'] / median['tuned']['wall_s']:.3f}")
    print(f"same metrics: {same}")
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    if not same:
        sys.exit("the allocator's settings changed the run's metrics")


if __name__ == "__main__":
    main()
