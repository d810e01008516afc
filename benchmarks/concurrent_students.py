"""`kdstore sweep --concurrent 3` against the same three runs one by one (`--concurrent 1`), on the
real CIFAR-10 images, CPU (issue 35's CPU target: together at least as fast, ratio >= 1.0).

Each sweep is its own process (`kdstore sweep --variants kd,kd-cl,kd-cl-sr --seeds 0 ...`),
alternating one-by-one / together / together / one-by-one (`--rounds` times); the figure is each
sweep's wall time, from start to its report, on an idle machine. The runs' metrics are compared
too: the two ways must give the same numbers (timings aside).

    .venv/bin/python benchmarks/concurrent_students.py [--train-per-class 500] [--epochs 2] [--rounds 1] [--json F]
"""

from __future__ import annotations

import argparse
import json
import os
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
VARIANTS = "kd,kd-cl,kd-cl-sr"


def sweep(store: Path, epochs: int, concurrent: int, out: Path) -> float:
    """One sweep in its own process; returns its wall time."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "kdstore", "sweep", "--store", str(store), "--variants", VARIANTS, "--seeds", "0"]
    cmd += ["--epochs", str(epochs), "--concurrent", str(concurrent), "--out", str(out), "--no-progress"]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def metrics(out: Path) -> dict[str, list[dict]]:
    return {
        d.name: [untimed(json.loads(line)) for line in (d / "metrics.jsonl").read_text().splitlines()]
        for d in sorted(out.iterdir())
        if (d / "metrics.jsonl").is_file()
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train-per-class", type=int, default=500)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=1, help="ABBA rounds.")
    ap.add_argument("--json", default=str(Path(__file__).parent / "results" / "concurrent_students.json"))
    args = ap.parse_args()
    root = cifar10_subset(args.train_per_class, 100)
    work = WORK / f"concurrent-students-{args.train_per_class}"
    store = speed_store(root, work / "store")
    load_before = os.getloadavg()
    times: dict[int, list[float]] = {1: [], 3: []}
    seen: dict[int, dict] = {}
    for n in (1, 3, 3, 1) * args.rounds:
        out = work / f"sweep-{n}"
        times[n].append(sweep(store, args.epochs, n, out))
        seen[n] = metrics(out)
        print(f"--concurrent {n}: {times[n][-1]:.1f} s")
    same = seen[1] == seen[3]
    one, together = float(np.median(times[1])), float(np.median(times[3]))
    result = {
        "store": str(store),
        "variants": VARIANTS,
        "epochs": args.epochs,
        "one_by_one_s": times[1],
        "together_s": times[3],
        "ratio": one / together,
        "same_metrics": same,
        **machine_record(load_before),
    }
    print(f"one by one {one:.1f} s, together {together:.1f} s: ratio {one / together:.3f}; same metrics: {same}")
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    if not same:
        sys.exit("the runs trained together differ from the runs one by one")


if __name__ == "__main__":
    main()
