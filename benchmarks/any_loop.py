"""examples/plain_loop.py (a plain PyTorch loop over kdstore.StoreLoader) against `kdstore train`,
same store, options and seed, on the real CIFAR-10 images (issue 24).

Each run is its own process (`kdstore train ...` and `python examples/plain_loop.py ...`),
alternating plain/train/train/plain (`--rounds` times) per variant; images/s is each run's training pass (train's
`seconds`, the example's own `seconds`) over its epochs after the first, on an idle machine.
Both logs are also compared line by line (train_loss and val_acc must be equal).

    .venv/bin/python benchmarks/any_loop.py [--train-per-class 1000] [--epochs 3] [--rounds 1] [--json F]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from common import WORK, cifar10_subset, machine_record, speed_store

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("kd", "kd-cl-sr")


def run(who: str, store: Path, variant: str, epochs: int, out: Path) -> list[dict]:
    common = ["--store", str(store), "--variant", variant, "--epochs", str(epochs), "--seed", "0", "--out", str(out)]
    if who == "plain":
        cmd = [sys.executable, str(ROOT / "examples" / "plain_loop.py"), *common]
    else:
        cmd = [sys.executable, "-m", "kdstore", "train", *common, "--overwrite", "--no-progress"]
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train-per-class", type=int, default=1000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=1, help="ABBA rounds per variant.")
    ap.add_argument("--json", default=str(Path(__file__).parent / "results" / "any_loop.json"))
    args = ap.parse_args()
    root = cifar10_subset(args.train_per_class, 100)
    work = WORK / f"any-loop-{args.train_per_class}"
    store = speed_store(root, work / "store")
    n = sum(1 for _ in (root / "train").rglob("*.jpg"))
    load_before = os.getloadavg()
    runs = []
    for variant in VARIANTS:
        for i, who in enumerate(("plain", "train", "train", "plain") * args.rounds):
            rows = run(who, store, variant, args.epochs, work / f"{variant}-{who}-{i}")
            rates = [n / r["seconds"] for r in rows]
            runs.append({"variant": variant, "who": who, "per_epoch": rates, "steady": float(np.median(rates[1:]))})
            runs[-1]["metrics"] = [(r["train_loss"], r["val_acc"]) for r in rows]
            print(f"{variant:9} {who:6} {runs[-1]['steady']:8,.0f} img/s  (epochs {[round(r) for r in rates]})")
    summary = {}
    for variant in VARIANTS:
        mine = [r for r in runs if r["variant"] == variant]
        train_ = np.mean([r["steady"] for r in mine if r["who"] == "train"])
        plain = np.mean([r["steady"] for r in mine if r["who"] == "plain"])
        same = all(r["metrics"] == mine[0]["metrics"] for r in mine)  # every run, plain or train
        summary[variant] = {"train": float(train_), "plain": float(plain), "plain/train": float(plain / train_)}
        summary[variant]["identical_metrics"] = same
        print(f"{variant}: plain/train = {plain / train_:.3f}, identical metrics in all {len(mine)} runs: {same}")
    result = {
        **machine_record(load_before),
        "images": n,
        "epochs": args.epochs,
        "runs": runs,
        "summary": summary,
    }
    Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
