"""Three `train` processes on one store while a `cache --overwrite` of that store runs (issue 27):
all three must finish with the metrics of a solo run. Too heavy for the suite on 2 cores (five
processes at once), so run here, on an idle machine; its companion in the suite,
tests/store/test_concurrent_replace.py, replaces a store under a running `train` (both loaders).

    .venv/bin/python benchmarks/concurrent_recache.py [--json F]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.helpers import make_imagefolder  # noqa: E402

KDSTORE = os.path.join(os.path.dirname(sys.executable), "kdstore")
KEYS = ("train_loss", "train_ce", "train_kd", "train_acc", "val_acc", "val_loss", "lam_mean", "agree_val", "kl_val")


def _metrics(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: r.get(k) for k in KEYS} for r in rows]


def _ok(args: list[str]) -> None:
    proc = subprocess.run(args, capture_output=True, text=True, timeout=600)
    if proc.returncode:
        sys.exit(proc.stderr)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", default=str(Path(__file__).parent / "results" / "concurrent_recache.json"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="kdstore-recache-") as tmp:
        root = Path(tmp)
        folder = make_imagefolder(root / "images", classes=3, train_per_class=40, val_per_class=6)
        spec = f"imagefolder:{folder}"
        _ok(
            [
                KDSTORE,
                "teacher",
                "--model",
                "cifar_resnet8",
                "--dataset",
                spec,
                "--epochs",
                "4",
                "--batch-size",
                "10",
                "--workers",
                "1",
                "--no-progress",
                "--out",
                str(root / "teacher"),
            ]
        )
        cache = [
            KDSTORE,
            "cache",
            "--dataset",
            spec,
            "--checkpoint",
            str(root / "teacher" / "checkpoint.pt"),
            "--out",
            str(root / "store"),
            "--batch-size",
            "8",
            "--workers",
            "1",
            "--no-progress",
            "--overwrite",
        ]
        _ok(cache)

        def train_args(out: Path) -> list[str]:
            return [
                KDSTORE,
                "train",
                "--store",
                str(root / "store"),
                "--variant",
                "kd-cl",
                "--epochs",
                "2",
                "--batch-size",
                "8",
                "--workers",
                "1",
                "--no-progress",
                "--no-tensorboard",
                "--out",
                str(out),
            ]

        _ok(train_args(root / "solo"))
        t0 = time.perf_counter()
        runs = [
            subprocess.Popen(train_args(root / f"r{i}"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for i in range(3)
        ]
        recache = subprocess.run(cache, capture_output=True, text=True, timeout=600)
        codes = [p.wait(timeout=600) for p in runs]
        same = [
            (root / f"r{i}" / "metrics.jsonl").is_file() and _metrics(root / f"r{i}") == _metrics(root / "solo")
            for i in range(3)
        ]
        result = {
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "recache_exit": recache.returncode,
            "train_exits": codes,
            "metrics_equal_solo": same,
            "seconds": time.perf_counter() - t0,
            "load": os.getloadavg(),
        }
        print(json.dumps(result))
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
        shutil.rmtree(root, ignore_errors=True)
        if recache.returncode or any(codes) or not all(same):
            sys.exit("FAILED: a run failed or its metrics differ from the solo run's")


if __name__ == "__main__":
    main()
