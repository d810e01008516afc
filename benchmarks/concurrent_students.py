"""`kdstore sweep --concurrent 3` against the same three runs one by one (`--concurrent 1`), on the
real CIFAR-10 images, CPU (issue 35's CPU target: together at least as fast, ratio >= 1.0); and
the same three stacked into one network (`--stack on`; in turn is `--stack off`).

Each sweep is its own process (`kdstore sweep --variants kd,kd-cl,kd-cl-sr --seeds 0 ...`), in the
order one by one, together, stacked, stacked, together, one by one (`--rounds` times); the figure
is each sweep's wall time, from start to its report, on an idle machine. The runs' metrics are
compared too: together (in turn) must give the numbers of one by one (timings aside).

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


# The ways compared: (--concurrent, --stack)
WAYS = {"one by one": ("1", "off"), "together": ("3", "off"), "stacked": ("3", "on")}


def sweep(store: Path, epochs: int, way: str, out: Path) -> float:
    """One sweep in its own process; returns its wall time."""
    shutil.rmtree(out, ignore_errors=True)
    concurrent, stack = WAYS[way]
    cmd = [sys.executable, "-m", "kdstore", "sweep", "--store", str(store), "--variants", VARIANTS, "--seeds", "0"]
    cmd += ["--epochs", str(epochs), "--concurrent", concurrent, "--stack", stack, "--out", str(out), "--no-progress"]
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
    times: dict[str, list[float]] = {way: [] for way in WAYS}
    seen: dict[str, dict] = {}
    for way in ("one by one", "together", "stacked", "stacked", "together", "one by one") * args.rounds:
        out = work / f"sweep-{way.replace(' ', '-')}"
        times[way].append(sweep(store, args.epochs, way, out))
        seen[way] = metrics(out)
        print(f"{way}: {times[way][-1]:.1f} s", flush=True)
    same = seen["one by one"] == seen["together"]
    median = {way: float(np.median(t)) for way, t in times.items()}
    result = {
        "store": str(store),
        "variants": VARIANTS,
        "epochs": args.epochs,
        "seconds": times,
        "median_s": median,
        "ratio": median["one by one"] / median["together"],
        "ratio_stacked": median["one by one"] / median["stacked"],
        "same_metrics": same,
        **machine_record(load_before),
    }
    print(f"medians {median}: one by one / together {result['ratio']:.3f}, / stacked {result['ratio_stacked']:.3f}")
    print(f"together (in turn) gave the same metrics as one by one: {same}")
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    if not same:
        sys.exit("the runs trained together differ from the runs one by one")


if __name__ == "__main__":
    main()
