"""`train`'s speed from an int8 store against a float16 store of the same teacher (issue 25):
the stores of benchmarks/stores_by_the_byte.py, `kd` with cifar_resnet8, separate processes,
alternating float16 / int8 each round; and the teacher-row gather alone (store.Rows, batches of
512 random rows, as `train` gathers them), for 10 classes and for rows tiled to 1,000.

    .venv/bin/python benchmarks/int8_speed.py [--rounds 4] [--epochs 3]
    .venv/bin/python benchmarks/int8_speed.py --only-data-path --json benchmarks/results/int8_data_path.json

Results: benchmarks/results/int8_speed.json."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import machine_record
from stores_by_the_byte import build_stores

from kdstore import StoreLoader
from kdstore.method.int8 import quantize
from kdstore.store.file_rows import FileRows, remember
from kdstore.store.quantized import Quantized
from kdstore.store.rows import Rows

HERE = Path(__file__).resolve().parent


def _train(store: Path, out: Path, epochs: int) -> list[float]:
    subprocess.run(
        [sys.executable, "-m", "kdstore", "train", "--store", str(store), "--out", str(out), "--variant", "kd",
         "--student", "cifar_resnet8", "--epochs", str(epochs), "--batch-size", "128", "--no-progress",
         "--overwrite"],
        check=True, capture_output=True,
    )  # fmt: skip
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["images_per_s"] for r in rows[1:]]  # the first epoch warms up


def _gather_rate(table, batches: int = 2000) -> float:
    rows = Rows(table, torch.device("cpu"), "mapped")  # read with pread, as train does on the CPU
    g = np.random.default_rng(0)
    idx = [g.integers(0, len(table), 512) for _ in range(batches)]
    rows(idx[0])
    t0 = time.perf_counter()
    for i in idx:
        rows(i).float()
    return batches * 512 / (time.perf_counter() - t0)


def gathers(classes: int, n: int = 200_000) -> dict[str, float]:
    """Rows/s of the gather from a file-mapped float16 table and from its int8 form (codes,
    scales, offsets read alike, dequantised), each part in a raw file of its own."""
    z = np.random.default_rng(1).normal(0, 3, (n, classes)).astype(np.float32)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        parts = {"float16": [z.astype(np.float16)], "int8": list(quantize(z))}
        for name, arrays in parts.items():
            mapped = []
            for j, a in enumerate(arrays):
                path = Path(tmp) / f"{name}{j}.bin"
                a.tofile(path)
                f = open(path, "rb")  # noqa: SIM115 - kept open by the FileRows for the gather
                m = np.memmap(path, dtype=a.dtype, mode="r", shape=a.shape)
                remember(m, FileRows(f, 0, m.dtype))
                mapped.append(m)
            table = mapped[0] if name == "float16" else Quantized(*mapped)
            out[name] = _gather_rate(table)
    return out


def data_path(stores: dict[str, Path], rounds: int = 6) -> dict[str, list[float]]:
    """Images/s of the loader alone (StoreLoader epochs, `kd`, batch 128, no model), alternating."""
    loaders = {d: StoreLoader(stores[d], variant="kd", batch_size=128) for d in ("float16", "int8")}
    out: dict[str, list[float]] = {d: [] for d in loaders}
    for r in range(rounds):
        for d in ("float16", "int8") if r % 2 == 0 else ("int8", "float16"):
            t0, n = time.perf_counter(), 0
            for batch in loaders[d]:
                n += len(batch.labels)
                batch.target.logits.sum()
            out[d].append(n / (time.perf_counter() - t0))
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--only-data-path", action="store_true", help="only the loader's data path (no training)")
    p.add_argument("--json", default=str(HERE / "results" / "int8_speed.json"))
    args = p.parse_args()
    root, _, stores = build_stores()  # stores_by_the_byte.py's default stores (made if missing)
    load_before = os.getloadavg()
    if args.only_data_path:
        path = data_path(stores)
        result = {"data_path_images_per_s": path, "median": {k: float(np.median(v)) for k, v in path.items()}}
        result.update(machine_record(load_before), command=" ".join(sys.argv))
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result, indent=1))
        return
    speed: dict[str, list[float]] = {"float16": [], "int8": []}
    for r in range(args.rounds):
        for dtype in ("float16", "int8") if r % 2 == 0 else ("int8", "float16"):
            speed[dtype] += _train(stores[dtype], root / "speed" / f"{dtype}-{r}", args.epochs)
    result = {
        "train_images_per_s": speed,
        "train_median": {k: float(np.median(v)) for k, v in speed.items()},
        "train_ratio_int8_over_float16": float(np.median(speed["int8"]) / np.median(speed["float16"])),
        "gather_rows_per_s": {f"{c} classes": gathers(c) for c in (10, 1000)},
    }
    result.update(machine_record(load_before), command=" ".join(sys.argv))
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
