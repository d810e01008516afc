"""`cache --views K` against the bare teacher forwards it needs, on the real CIFAR-10 images,
in one run (issue 26, item 8).

The bare forwards: the same teacher (a random-weight cifar_resnet20: speed does not depend on
the weights) in eval and inference mode over the training images decoded once into one uint8
tensor, normalised, in batches of the cache's batch size: 1 + K passes over the training split
and one over the validation split, nothing else. The cache: `kdstore cache --views K` of the same
images, timed whole (its .beton writing included) and pass by pass (each teacher pass's own
seconds); with --compare-8 also `cache-8`, the same cache scoring 8 views per forward as it did
before. Alternating bare / cache / cache / bare (with --compare-8: bare / cache / cache-8 /
bare / cache-8 / cache); each figure is scored images per second (N_train x (1 + K) + N_val
over the seconds).

    .venv/bin/python benchmarks/views_cache.py [--train-per-class 1000] [--views 8] [--compare-8] [--json F]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import timm
import torch
from common import WORK, cifar10_subset, machine_record

import kdstore.models  # noqa: F401 - registers cifar_resnet20 in timm's registry
from kdstore.cache import write as cache
from kdstore.cache.config import CacheConfig
from kdstore.data.augment import normalize
from kdstore.data.in_memory import ResidentSplit
from kdstore.models.build import normalization_for
from kdstore.passes import inference

TEACHER = "cifar_resnet20"


def bare(images: dict[str, torch.Tensor], passes: dict[str, int], batch: int) -> float:
    """Seconds of the bare forwards: `passes[split]` passes over each split's images."""
    torch.manual_seed(0)
    model = timm.create_model(TEACHER, num_classes=10).eval()
    mean, std = (torch.tensor(v) for v in normalization_for(TEACHER))
    t0 = time.perf_counter()
    with torch.inference_mode():
        for split, x in images.items():
            for _ in range(passes[split]):
                for lo in range(0, len(x), batch):
                    model(normalize(x[lo : lo + batch], mean, std))
    return time.perf_counter() - t0


def cached(root: Path, out: Path, views: int, batch: int, group: int | None = None) -> dict[str, float]:
    """Seconds of `cache --views K`, whole and per teacher pass (with `group` views per forward on
    the CPU instead of kdstore's own choice: the figure before issue 26's change was 8)."""
    passes: list[float] = []
    real = cache.score_beton
    own = dict(inference.VIEWS_PER_FORWARD)
    if group is not None:
        inference.VIEWS_PER_FORWARD["cpu"] = group

    def timed(forward, job):
        t0 = time.perf_counter()
        result = real(forward, job)
        passes.append(time.perf_counter() - t0)
        return result

    cache.score_beton = timed
    try:
        t0 = time.perf_counter()
        cache.run(
            CacheConfig(
                dataset=f"imagefolder:{root}",
                out=str(out),
                teacher=TEACHER,
                allow_untrained=True,
                views=views,
                batch_size=batch,
                overwrite=True,
                progress=False,
            )
        )
        total = time.perf_counter() - t0
    finally:
        cache.score_beton = real
        inference.VIEWS_PER_FORWARD.update(own)
    return {"total": total, "passes": sum(passes), "per_pass": passes}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train-per-class", type=int, default=1000)
    ap.add_argument("--views", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=CacheConfig.batch_size)
    ap.add_argument("--compare-8", action="store_true", help="Also time the cache scoring 8 views per forward.")
    ap.add_argument("--json", default=str(Path(__file__).parent / "results" / "views_cache.json"))
    args = ap.parse_args()
    root = cifar10_subset(args.train_per_class, 100)
    work = WORK / f"views-cache-{args.train_per_class}"
    first = cached(root, work / "store", args.views, args.batch_size)  # warm-up, and the .betons to decode
    split = {s: ResidentSplit(work / "store" / f"{s}.beton", torch.device("cpu"), 0) for s in ("train", "val")}
    images = {s: split[s].images for s in split}
    counts = {"train": 1 + args.views, "val": 1}
    scored = sum(len(images[s]) * counts[s] for s in images)
    load_before = os.getloadavg()
    runs = []
    order = (
        ("bare", "cache", "cache-8", "bare", "cache-8", "cache")
        if args.compare_8
        else ("bare", "cache", "cache", "bare")
    )
    for who in order:
        if who == "bare":
            seconds = {"total": bare(images, counts, args.batch_size)}
            seconds["passes"] = seconds["total"]
        else:
            group = 8 if who == "cache-8" else None
            seconds = cached(root, work / "store", args.views, args.batch_size, group)
        runs.append({"who": who, **seconds, "scored_per_s": scored / seconds["passes"]})
        print(f"{who:7} {scored / seconds['passes']:8,.0f} scored img/s in its passes, {seconds['total']:.1f} s whole")
    bare_rate = np.mean([r["scored_per_s"] for r in runs if r["who"] == "bare"])
    passes_rate = np.mean([r["scored_per_s"] for r in runs if r["who"] == "cache"])
    whole_rate = np.mean([scored / r["total"] for r in runs if r["who"] == "cache"])
    before = [r["scored_per_s"] for r in runs if r["who"] == "cache-8"]
    summary = {
        "cache_8_per_forward_passes_scored_per_s": float(np.mean(before)) if before else None,
        "bare_scored_per_s": float(bare_rate),
        "cache_passes_scored_per_s": float(passes_rate),
        "cache_whole_scored_per_s": float(whole_rate),
        "passes_over_bare": float(passes_rate / bare_rate),
        "whole_over_bare": float(whole_rate / bare_rate),
    }
    print(json.dumps(summary, indent=1))
    result = {
        **machine_record(load_before),
        "train_images": len(images["train"]),
        "val_images": len(images["val"]),
        "views": args.views,
        "batch_size": args.batch_size,
        "warm_up_cache": first,
        "runs": runs,
        "summary": summary,
    }
    Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
