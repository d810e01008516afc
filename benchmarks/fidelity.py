"""What a store keeps of its teacher (issue 16), on the real CIFAR-10 images, CPU-sized:
online KD against stores of K views holding full logits, top-k logits, sampled class ids at the
bytes of top-k, and mixed (mixup) views; then a longer ("patient") schedule for the best stored arm.

    .venv/bin/python benchmarks/fidelity.py [--train-per-class 1000] [--test-per-class 200] [--views 4]
        [--topk 2] [--seeds 0,1,2] [--teacher-epochs 12] [--student-epochs 8] [--patient-epochs 16]

For each arm: final val accuracy over seeds (paired by seed against online KD), the student's
top-1 agreement and KL with the teacher on the training subset and on validation (the last
epoch's, from metrics.jsonl), the bytes per training sample the teacher.h5 spends on its views,
and the cache time. Results: benchmarks/results/fidelity.json and a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from common import WORK, cifar10_subset, train_teacher

from kdstore.cache import write as cache
from kdstore.cache.config import CacheConfig
from kdstore.method.sparse_targets import at_bytes, bytes_per_view
from kdstore.report.tables import t_critical_95
from kdstore.store.format import Store
from kdstore.train import loop as train
from kdstore.train.config import TrainConfig


def _views_bytes(store: Path) -> float:
    """teacher.h5's views bytes per training sample (logits, top-k arrays or sampled ids; without the parameters)."""
    v = Store.open(store).train.views
    arrays = [
        a
        for a in (v.logits, v.topk_values, v.topk_indices, v.fill, v.sample_ids, v.mix_partner, v.mix_lam, v.mix_box)
        if a is not None
    ]
    return sum(a.nbytes for a in arrays) / len(v.params)


def paired(a: dict[int, float], b: dict[int, float]) -> dict:
    d = np.array([a[s] - b[s] for s in sorted(set(a) & set(b))])
    half = t_critical_95(len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d)) if len(d) > 1 else float("nan")
    return {"mean": float(d.mean()), "ci95": [float(d.mean() - half), float(d.mean() + half)], "n": int(len(d))}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--train-per-class", type=int, default=1000)
    p.add_argument("--test-per-class", type=int, default=200)
    p.add_argument("--views", type=int, default=4)
    p.add_argument(
        "--topk",
        type=int,
        default=2,
        help="k of the top-k arm: with 10 classes, full fp16 logits take 20 bytes, top-2 16",
    )
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--teacher-epochs", type=int, default=12)
    p.add_argument("--student-epochs", type=int, default=8)
    p.add_argument("--patient-epochs", type=int, default=16)
    args = p.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    spec = f"imagefolder:{cifar10_subset(args.train_per_class, args.test_per_class)}"
    root = WORK / f"fidelity-{args.train_per_class}-{args.test_per_class}-t{args.teacher_epochs}"
    checkpoint = str(train_teacher(root, spec, "cifar_resnet20", args.teacher_epochs, progress=False))
    sample = at_bytes("sample", bytes_per_view("topk", args.topk, 10), 10)  # sampled ids at top-k's bytes
    stores = {
        "full-logit views": {"views": args.views},
        f"top-{args.topk} views": {"views": args.views, "topk": args.topk},
        f"{sample} sampled ids per view": {"views": args.views, "sample": sample, "sample_tau": 4.0},
        "mixup views (full logits)": {"views": args.views, "mix": "mixup"},
    }
    cache_s, views_bytes = {}, {}
    for name, kw in stores.items():
        path = root / "stores" / name.split()[0]
        timing = path.parent / f"{path.name}.seconds"
        if not (path / "MANIFEST.json").is_file():
            t0 = time.perf_counter()
            cache.run(
                CacheConfig(dataset=spec, out=str(path), checkpoint=checkpoint, overwrite=True, progress=False, **kw)
            )
            timing.write_text(f"{time.perf_counter() - t0}\n")
        cache_s[name], views_bytes[name] = float(timing.read_text()), _views_bytes(path)
        stores[name] = path
    base = TrainConfig(
        out="",
        student="cifar_resnet8",
        variant="kd",
        epochs=args.student_epochs,
        batch_size=128,
        lr=0.05,
        progress=False,
        tensorboard=False,
    )
    arms = {"online KD": ("online", stores["full-logit views"], args.student_epochs)}
    arms.update({name: ("offline", path, args.student_epochs) for name, path in stores.items()})
    results: dict[str, dict] = {}

    def run_arm(name: str, mode: str, store: Path, epochs: int) -> None:
        finals, last_rows, ips = {}, [], []
        for seed in seeds:
            out = root / "runs" / f"{name.replace(' ', '_')}-e{epochs}-s{seed}"
            if not (out / "summary.json").is_file():
                cfg = replace(
                    base,
                    store=str(store),
                    out=str(out),
                    seed=seed,
                    epochs=epochs,
                    overwrite=True,
                    view_mode="clean" if mode == "online" else "auto",
                )
                if mode == "online":
                    train.run_online(cfg, Store.open(store), checkpoint=checkpoint)
                else:
                    train.run(cfg)
            summary = json.loads((out / "summary.json").read_text())
            finals[seed] = summary["final_val_acc"]
            ips.append(summary["images_per_s"])
            last_rows.append(json.loads((out / "metrics.jsonl").read_text().splitlines()[-1]))
        results[name] = {
            "epochs": epochs,
            "final_val_acc": finals,
            "mean": float(np.mean(list(finals.values()))),
            "std": float(np.std(list(finals.values()), ddof=1)) if len(finals) > 1 else 0.0,
            **{
                k: float(np.mean([r[k] for r in last_rows])) for k in ("agree_train", "agree_val", "kl_train", "kl_val")
            },
            "images_per_s_median": float(np.median(ips)),
            "views_bytes_per_sample": views_bytes.get(name, 0.0),
            "cache_seconds": cache_s.get(name),
        }

    for name, (mode, store, epochs) in arms.items():
        run_arm(name, mode, store, epochs)
    best = max((n for n in stores), key=lambda n: results[n]["mean"])
    run_arm(f"{best}, patient ({args.patient_epochs} epochs)", "offline", stores[best], args.patient_epochs)
    results[f"{best}, patient ({args.patient_epochs} epochs)"].update(
        views_bytes_per_sample=views_bytes[best], cache_seconds=cache_s[best]
    )
    for r in results.values():
        r["vs_online"] = paired(r["final_val_acc"], results["online KD"]["final_val_acc"])
    teacher_acc = json.loads((root / "teacher" / "summary.json").read_text())["final_val_acc"]
    out = Path(__file__).parent / "results" / "fidelity.json"
    out.write_text(json.dumps({"args": vars(args), "teacher_val_acc": teacher_acc, "arms": results}, indent=2) + "\n")
    print(f"teacher cifar_resnet20 val acc {teacher_acc:.2%}; students cifar_resnet8, seeds {seeds}")
    print(
        "| arm | epochs | final val acc, mean ± std | per seed | Δ vs online KD, pts [95% CI] | agreement train / val "
        "| KL(T‖S) train / val "
        "| views bytes / sample | cache s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        d = r["vs_online"]
        diff = (
            "-"
            if name == "online KD"
            else f"{100 * d['mean']:+.2f} [{100 * d['ci95'][0]:+.2f}, {100 * d['ci95'][1]:+.2f}]"
        )
        cache_text = "-" if r["cache_seconds"] is None else f"{r['cache_seconds']:.0f}"
        print(
            f"| {name} | {r['epochs']} | {100 * r['mean']:.2f} ± {100 * r['std']:.2f} | "
            f"{', '.join(f'{100 * v:.2f}' for v in r['final_val_acc'].values())} | {diff} | "
            f"{100 * r['agree_train']:.1f} / "
            f"{100 * r['agree_val']:.1f} | {r['kl_train']:.3f} / {r['kl_val']:.3f} | "
            f"{r['views_bytes_per_sample']:.0f} | {cache_text} |"
        )


if __name__ == "__main__":
    main()
