"""A store the size of ImageNet-1k: what `cache`, `train` and an open cost in memory and time.

Builds stores of 1,281,167 training and 50,000 validation samples with 1,000 classes, scored by a
cheap stand-in teacher (a linear layer on 8-px images: the store is what is measured, not the
teacher), one with no views and one with 4 top-10 views. Then, each in a child process (so that
every peak RSS is that command's own):

- cache: wall time, peak RSS of the main process and of FFCV's writer workers;
- open: `Store.open` time (teacher.h5's sha256 included) and the RSS it leaves;
- teacher-row lookup: rows/s of the pread gather `train` uses (targets.Rows, batches of 512
  random rows, warm and with the file evicted from the page cache), against numpy gathers from the
  memory map and h5py reading the same rows;
- train: one epoch, peak RSS per process, with 1 and with 2 torchrun processes; `unguided` (no
  teacher rows) is the reference the teacher's share is measured against.

    python benchmarks/imagenet_scale.py --work /tmp/kd-imagenet --json benchmarks/results/imagenet_scale.json

`--train-samples N` rehearses it small. Needs about 6 GB of disk under --work. The figures of
kdstore before issue 14 (whose cache cannot build this store: it ran out of 24 GB) were taken on
the same store rewritten in its schema 1:

    python benchmarks/imagenet_scale.py convert-to-schema1 /tmp/kdi/store /tmp/kdi-old/store
    PYTHONPATH=<checkout of 7d456ee> python benchmarks/imagenet_scale.py --work /tmp/kdi-old \
        --json benchmarks/results/imagenet_scale_before.json --stores no-views --stages open,train
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve()
N_VAL, CLASSES, SIZE = 50_000, 1000, 8


def register(n_train: int) -> None:
    """The stand-in dataset and teacher, in this process's registries (every child calls this)."""
    import timm.models
    import torch.nn as nn

    from kdstore.data import datasets

    def linear(pretrained: bool = False, num_classes: int = 1000, **kwargs) -> nn.Module:
        model = nn.Sequential(nn.Flatten(), nn.Linear(3 * SIZE * SIZE, num_classes))
        model.pretrained_cfg = {"mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25), "input_size": (3, SIZE, SIZE)}
        return model

    linear.__name__ = "bench_linear"
    if not timm.models.is_model("bench_linear"):
        timm.models.register_model(linear)

    def load(data_root, image_size=None):
        rng = np.random.default_rng(0)
        protos = rng.integers(0, 256, (CLASSES, SIZE, SIZE, 3), dtype=np.uint8)
        noise = rng.integers(0, 64, (4099, SIZE, SIZE, 3), dtype=np.uint8)

        def split(n: int, offset: int) -> datasets.ImageSplit:
            labels = (np.arange(n, dtype=np.int64) * 7919 + offset) % CLASSES
            return datasets.ImageSplit(
                get=lambda i: protos[labels[i]] ^ noise[(i + offset) % len(noise)],
                labels=labels,
                sample_ids=np.arange(n, dtype=np.int64),
            )

        return datasets.ImageDataset(
            "imagenet-sized", [f"c{k}" for k in range(CLASSES)], split(n_train, 0), split(N_VAL, 1)
        )

    datasets.DATASETS["imagenet-sized"] = load


def child_imports() -> dict:
    """The RSS of the imports alone (torch, FFCV, kdstore): the floor under every figure."""
    import psutil

    import kdstore.train  # noqa: F401

    return {"rss_after_imports_mib": psutil.Process().memory_info().rss / 2**20}


def peak_rss() -> dict[str, float]:
    return {
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "children_peak_rss_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    }


def child_cache(out: str, views: int, topk: int, n_train: int) -> dict:
    from kdstore.cache import write as cache

    register(n_train)
    t0 = time.perf_counter()
    cache.run(
        cache.CacheConfig(
            allow_untrained=True,
            dataset="imagenet-sized",
            teacher="bench_linear",
            out=out,
            batch_size=1024,
            views=views,
            topk=topk,
            progress=False,
        )
    )
    files = {p.name: p.stat().st_size for p in Path(out).iterdir()}
    return {"seconds": time.perf_counter() - t0, "files_bytes": files, "store_bytes": sum(files.values()), **peak_rss()}


def child_open(store: str) -> dict:
    import psutil

    from kdstore.runtime.hashing import sha256_file
    from kdstore.store.format import H5_NAME, Store

    t0 = time.perf_counter()
    sha256_file(Path(store) / H5_NAME)
    sha = time.perf_counter() - t0
    t0 = time.perf_counter()
    s = Store.open(store)
    opened = time.perf_counter() - t0
    return {
        "open_seconds": opened,
        "teacher_h5_sha256_seconds": sha,
        "rss_after_open_mib": psutil.Process().memory_info().rss / 2**20,
        "n_train": len(s.train),
        **peak_rss(),
    }


def _evict(path: Path) -> None:
    """Drop a file's pages from the page cache (what a cold start sees)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def child_lookup(store: str, batch: int = 512, batches: int = 400) -> dict:
    import h5py
    import psutil
    import torch

    from kdstore.store.format import H5_NAME, Store
    from kdstore.store.rows import Rows

    s = Store.open(store)
    rng = np.random.default_rng(0)
    n = len(s.train)
    idx = [rng.choice(n, batch, replace=False) for _ in range(batches)]
    out = {}
    for label, arrays in [("logits", (s.train.logits,))] + (
        [("views_topk", (s.train.views.topk_values, s.train.views.topk_indices, s.train.views.fill))]
        if s.train.views is not None
        else []
    ):
        for state in ("cold", "warm"):
            if state == "cold":
                _evict(Path(store) / H5_NAME)
            rows = [Rows(a, torch.device("cpu"), "mapped") for a in arrays]
            views = [rng.integers(0, 4, batch) for _ in range(batches)] if label != "logits" else None
            t0 = time.perf_counter()
            for b, i in enumerate(idx):
                for r in rows:
                    r(i) if views is None else r(i, views[b])
            seconds = time.perf_counter() - t0
            out[f"{label}_{state}_rows_per_s"] = batch * batches / seconds
    out["rss_after_lookups_mib"] = psutil.Process().memory_info().rss / 2**20
    # The alternatives measured against it: numpy gathers from the memory map, its pages dropped
    # every 4096 rows to bound the resident set, and h5py reading the same rows (what a background
    # reader thread would do).
    from kdstore.runtime.blocks import release_pages

    logits = s.train.logits
    t0 = time.perf_counter()
    for b, i in enumerate(idx):
        np.array(logits[i])
        if b % 8 == 7:
            release_pages(logits)
    out["map_gather_released_rows_per_s"] = batch * batches / (time.perf_counter() - t0)
    with h5py.File(Path(store) / H5_NAME, "r") as f:
        d = f["train/logits"]
        t0 = time.perf_counter()
        for i in idx[:50]:
            d[np.sort(i)]
        out["h5py_rows_per_s"] = batch * 50 / (time.perf_counter() - t0)
    return {**out, **peak_rss()}


def child_train(store: str, out: str, variant: str, n_train: int) -> dict:
    from kdstore.train import loop as train

    register(n_train)
    cfg = train.TrainConfig(
        out=out,
        store=store,
        variant=variant,
        student="bench_linear",
        epochs=1,
        batch_size=512,
        lr=0.01,
        workers=2,
        progress=False,
        overwrite=True,
    )
    t0 = time.perf_counter()
    summary = train.run(cfg)
    rank = int(os.environ.get("RANK", 0))
    row = {"rank": rank, "seconds": time.perf_counter() - t0, "images_per_s": summary["images_per_s"], **peak_rss()}
    Path(out, f"rss-rank{rank}.json").write_text(json.dumps(row))
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    return row


def convert_to_schema1(src: Path, dst: Path) -> None:
    """The store at `src` (schema 2) rewritten for kdstore before issue 14 (schema 1: every dataset
    chunked with fletcher32), with hard links to the same .beton files: how the `before` figures
    were measured on the same store (that code's own cache dies of memory at this size)."""
    import h5py

    from kdstore.runtime.hashing import sha256_file

    dst.mkdir(parents=True, exist_ok=True)
    for name in ("train.beton", "val.beton"):
        if not (dst / name).exists():
            os.link(src / name, dst / name)
    with h5py.File(src / "teacher.h5", "r") as f, h5py.File(dst / "teacher.h5", "w") as g:
        g.attrs.update({k: v for k, v in f.attrs.items()})
        g.attrs["schema_version"] = 1
        for split in ("train", "val"):
            for key, d in f[split].items():
                out = g.create_dataset(f"{split}/{key}", shape=d.shape, dtype=d.dtype, fletcher32=True, chunks=True)
                for lo in range(0, d.shape[0], 65536):
                    out[lo : lo + 65536] = d[lo : lo + 65536]
    manifest = json.loads((src / "MANIFEST.json").read_text())
    manifest.update(schema_version=1, sha256={**manifest["sha256"], "teacher.h5": sha256_file(dst / "teacher.h5")})
    (dst / "MANIFEST.json").write_text(json.dumps(manifest, indent=2))


def _child(args: list[str], torchrun: int = 0) -> dict:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if torchrun:
        exe = Path(sys.executable).parent / "torchrun"
        cmd = [str(exe), "--standalone", "--nproc_per_node", str(torchrun), str(HERE), *args]
    else:
        cmd = [sys.executable, str(HERE), *args]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args[:1])} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1]) if not torchrun else {}
    result["wall_seconds"] = time.perf_counter() - t0
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", required=True, type=Path)
    p.add_argument("--json", type=Path)
    p.add_argument("--train-samples", type=int, default=1_281_167)
    p.add_argument("--stores", default="no-views,views4-top10", help="which stores to build and measure")
    p.add_argument(
        "--stages", default="cache,open,lookup,train", help="which measurements to take (others are kept from --json)"
    )
    a = p.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    n = str(a.train_samples)
    stores = {"no-views": (a.work / "store", 0, 0), "views4-top10": (a.work / "store-v4", 4, 10)}
    stages = set(a.stages.split(","))
    result: dict = (
        json.loads(a.json.read_text())
        if a.json and a.json.is_file() and stages != {"cache", "open", "lookup", "train"}
        else {"stores": {}}
    )
    result.update(
        {
            "train_samples": a.train_samples,
            "val_samples": N_VAL,
            "classes": CLASSES,
            "image_size": SIZE,
            "cpus": os.cpu_count(),
            "date": time.strftime("%Y-%m-%d"),
        }
    )
    result.setdefault("load_before", {})[",".join(sorted(stages))] = os.getloadavg()[0]
    import torch

    result["torch"], result["threads"] = torch.__version__, torch.get_num_threads()
    result["imports"] = _child(["child-imports"])
    for name, (path, views, topk) in stores.items():
        if name not in a.stores.split(","):
            continue
        r: dict = result["stores"].get(name, {})
        if "cache" in stages:
            r["cache"] = _child(["child-cache", str(path), str(views), str(topk), n])
            print(name, "cache", r["cache"], flush=True)
        if "open" in stages:
            r["open"] = _child(["child-open", str(path)])
            print(name, "open", r["open"], flush=True)
        if "lookup" in stages:
            r["lookup"] = _child(["child-lookup", str(path)])
            print(name, "lookup", r["lookup"], flush=True)
        variants = ("unguided", "kd") if views == 0 else ("kd",)
        for variant in variants if "train" in stages else ():
            for procs in (1, 2):
                run_dir = a.work / f"run-{name}-{variant}-p{procs}"
                if procs == 1:
                    ranks = [_child(["child-train", str(path), str(run_dir), variant, n])]
                else:
                    wall = _child(["child-train", str(path), str(run_dir), variant, n], torchrun=procs)
                    ranks = [json.loads((run_dir / f"rss-rank{k}.json").read_text()) for k in range(procs)]
                    ranks[0]["wall_seconds"] = wall["wall_seconds"]
                r[f"train_{variant}_p{procs}"] = ranks
                print(name, variant, procs, ranks, flush=True)
        result["stores"][name] = r
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "convert-to-schema1":
        convert_to_schema1(Path(sys.argv[2]), Path(sys.argv[3]))
    elif len(sys.argv) > 1 and sys.argv[1].startswith("child-"):
        kind, rest = sys.argv[1], sys.argv[2:]
        if kind == "child-cache":
            row = child_cache(rest[0], int(rest[1]), int(rest[2]), int(rest[3]))
        elif kind == "child-open":
            row = child_open(rest[0])
        elif kind == "child-imports":
            row = child_imports()
        elif kind == "child-lookup":
            row = child_lookup(rest[0])
        else:
            row = child_train(rest[0], rest[1], rest[2], int(rest[3]))
        print(json.dumps(row))
    else:
        main()
