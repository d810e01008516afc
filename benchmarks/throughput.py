"""Throughput of offline KD vs online KD vs unguided, for the three pairs of the bench issue.

    .venv/bin/python benchmarks/throughput.py [--device cpu|cuda] [--steps 10] [--batch-size 32]

Teachers are randomly initialised (speed does not depend on the weights). Stores are cached on a
subset of the real CIFAR-10 JPEGs (enough images for warm-up + timed steps). Each pair's full
`kdstore bench` JSON goes to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from common import WORK, cifar10_subset

from kdstore.cache import write as cache
from kdstore.cache.config import CacheConfig
from kdstore.train import bench

PAIRS = [  # (name, teacher, teacher stem, teacher input, student)
    ("r32x4-r8x4", "cifar_resnet32x4", "cifar", 32, "cifar_resnet8x4"),
    ("r152c-r18c", "resnet152", "cifar", 32, "resnet18"),
    ("r152i224-r18c", "resnet152", "imagenet", 224, "resnet18"),
]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="auto")
    p.add_argument("--steps", type=int, default=18)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--only", nargs="*", help="pair names to run")
    args = p.parse_args()
    per_class = max(20, (args.steps + args.warmup) * args.batch_size // 10 + 10)
    folder = cifar10_subset(per_class, 20)
    results = Path(__file__).parent / "results"
    results.mkdir(exist_ok=True)
    for name, teacher, stem, size, student in PAIRS:
        if args.only and name not in args.only:
            continue
        store = WORK / "stores" / f"{name}-{per_class}"
        if not (store / "MANIFEST.json").is_file():
            cache.run(
                CacheConfig(
                    allow_untrained=True,
                    dataset=f"imagefolder:{folder}",
                    teacher=teacher,
                    stem=stem,
                    input_size=size,
                    out=str(store),
                    batch_size=args.batch_size,
                    device=args.device,
                    overwrite=True,
                )
            )
        r = bench.run(
            bench.BenchConfig(
                store=str(store),
                student=student,
                batch_size=args.batch_size,
                steps=args.steps,
                warmup=args.warmup,
                device=args.device,
                json=str(results / f"throughput-{name}-{r_dev(args.device)}.json"),
            )
        )
        print(
            json.dumps(
                {
                    "pair": name,
                    "images_per_s": {m: round(v["images_per_s"], 1) for m, v in r["modes"].items()},
                    "offline_vs_unguided": round(r["offline_vs_unguided"], 3),
                    "ratio_vs_flop_limit": round(r["ratio_vs_flop_limit"], 3),
                    "cache_vs_forward": round(r["cache"]["cache_vs_forward"], 3),
                }
            )
        )


def r_dev(device: str) -> str:
    import torch

    return "cuda" if device == "cuda" or (device == "auto" and torch.cuda.is_available()) else "cpu"


if __name__ == "__main__":
    main()
