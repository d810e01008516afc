"""Where the time goes in two figures of the first GPU run (benchmarks/gpu.py), in one short run.

    python3 benchmarks/gpu_probe.py OUT              # on the GPU machine (carry .gpu-bundle)
    .venv/bin/python benchmarks/gpu_probe.py OUT --rehearse

1. cifar_resnet8's offline-KD step against the unguided one (batch 512, data and teacher rows on
   the device): images/s over 60 steps timed with one sync, eager and with --compile, and the
   profiler's kernels of 20 steps (kernel count and device time per step, the top kernels).
2. The resnet152@224 cache pass: the whole `cache` of 2x the images of the first run, FFCV's
   decoding of that store's JPEGs alone (no model), and the cache's own inference pass run as
   `cache` runs it and in variants (no chunks, batch 512, the bare loop), each twice.

Writes OUT/probe.json after every part.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gpu  # noqa: E402 - benchmarks/gpu.py: its datasets, store and run helpers
import numpy as np  # noqa: E402
import torch  # noqa: E402


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def step_profile(work: Path, p: dict, store: str, variant: str, compile: bool) -> dict:
    from torch.profiler import ProfilerActivity, profile

    from kdstore.store.format import Store
    from kdstore.train import loop as train

    cfg = gpu.train_config(
        work,
        p,
        store,
        "cifar_resnet8",
        variant,
        epochs=1,
        tensorboard=False,
        compile=compile,
        agreement_samples=0,
        teacher_rows="device",
    )
    run = train.build_run(cfg, train.data_from_store(Store.open(store)), cfg.student, "student")
    order, local = run.rank_order(0), run.train_loader.batch_size
    batches = [
        (order[b * local : (b + 1) * local], x, y) for b, (x, y, _) in enumerate(run.loader.inner) if len(y) == local
    ]
    run.step.model.train()
    warm, timed, profiled = (20, 60, 20) if torch.cuda.is_available() else (2, 4, 2)
    # the epoch's gathered batches, cycled; each pass over them is its own epoch (the epoch's
    # augmentation parameters are drawn for exactly its batches)
    steps = [(i // len(batches), *batches[i % len(batches)]) for i in range(warm + timed + profiled)]
    for epoch, pos, x, y in steps[:warm]:
        run.raw_step(epoch, pos, x, y, cfg.lam)
    _sync()
    t0 = time.perf_counter()
    for epoch, pos, x, y in steps[warm : warm + timed]:
        run.raw_step(epoch, pos, x, y, cfg.lam)
    _sync()
    seconds = time.perf_counter() - t0
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=activities) as prof:
        for epoch, pos, x, y in steps[warm + timed :]:
            run.raw_step(epoch, pos, x, y, cfg.lam)
        _sync()
    events = prof.key_averages()
    on_device = [e for e in events if getattr(e, "self_device_time_total", 0) > 0]
    top = sorted(on_device, key=lambda e: e.self_device_time_total, reverse=True)[:12]
    return {
        "images_per_s": timed * local / seconds,
        "step_ms": seconds / timed * 1e3,
        "kernels_per_step": sum(e.count for e in on_device) / profiled,
        "device_ms_per_step": sum(e.self_device_time_total for e in on_device) / profiled / 1e3,
        "top_kernels": [[e.key[:90], e.count // profiled, round(e.self_device_time_total / profiled, 1)] for e in top],
    }


def cache_pass(store: str, p: dict, work: Path) -> dict:
    """The cache's own inference pass (score_beton) over the 224-px store, run as `cache` runs it
    and in variants, each twice (the second is warm): chunks flushed and post-processed, nothing
    kept, and at batch 512; and the bare loop (loader, forward, nothing else)."""
    from kdstore.data.beton import make_loader
    from kdstore.models.build import build_model, normalization
    from kdstore.passes.inference import ModelInput, ScorePass, clean_forward, score_beton, stored_outputs
    from kdstore.runtime.precision import for_device
    from kdstore.store.format import Store

    s = Store.open(store)
    device = torch.device(p["device"])
    model, _ = build_model("resnet152", s.num_classes, p["size_224"], "imagenet")
    model = for_device(model.eval(), device)
    mean, std = (torch.tensor(v, device=device) for v in normalization(model))
    inp = ModelInput(model=model, mean=mean, std=std, input_size=p["size_224"], device=device, amp=True)
    out: dict = {}
    n = len(s.train)
    for name, batch, chunks, post in (
        ("as_cache", p["cache_batch"], True, stored_outputs("float16")),
        ("no_chunks", p["cache_batch"], False, lambda o, labels: {}),
        ("batch512", 512, True, stored_outputs("float16")),
    ):
        rates = []
        for k in range(2):
            job = ScorePass(
                beton=s.beton("train"),
                batch_size=batch,
                workers=0,
                progress=False,
                positions=np.arange(n),
                chunk_dir=work / f"chunks-{name}-{k}" if chunks else None,
                post=post,
            )
            rates.append(score_beton(clean_forward(inp), job)["images_per_s"])
        out[name] = rates
    loader = make_loader(s.beton("train"), p["cache_batch"], 0, indices=np.arange(n))
    with torch.inference_mode():
        for k in range(2):
            _sync()
            t0 = time.perf_counter()
            for images, _, _ in loader:
                inp(images)
            _sync()
            out.setdefault("bare_loop", []).append(n / (time.perf_counter() - t0))
    return out


def decode_rate(store: str, p: dict) -> dict:
    """FFCV reading and decoding the store's training JPEGs into a device batch, no model."""
    from kdstore.data.beton import make_loader
    from kdstore.runtime.transfer import upload
    from kdstore.store.format import Store

    s = Store.open(store)
    device = torch.device(p["device"])
    loader = make_loader(s.beton("train"), p["cache_batch"], 0, indices=np.arange(len(s.train)))
    n, t0 = 0, None
    for images, _, _ in loader:
        upload(images, device)
        if t0 is None:  # the first batch pays the pipeline's compilation
            _sync()
            t0 = time.perf_counter()
            continue
        n += len(images)
    _sync()
    return {"images_per_s": n / (time.perf_counter() - t0), "images": n}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out")
    ap.add_argument("--rehearse", action="store_true")
    args = ap.parse_args()
    p = dict(gpu.REHEARSE if args.rehearse else gpu.FULL)
    p["n_224"] *= 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result: dict = {"preflight": gpu.preflight(p["device"]), "sizes": p}
    if not result["preflight"]["ok"]:
        (out / "probe.json").write_text(json.dumps(result, indent=1))
        sys.exit(f"preflight: {result['preflight']['missing']} is missing")
    gpu.register_datasets(p)

    def save(key: str, value) -> None:
        result[key] = value
        (out / "probe.json").write_text(json.dumps(result, indent=1, default=str))
        print(f"{key}: {json.dumps(value, default=str)[:600]}", flush=True)

    with tempfile.TemporaryDirectory(prefix="kdstore-probe-") as tmp:
        work = Path(tmp)
        store = gpu.cache_store(work, p, "c100", "gpubench", "cifar_resnet56", "auto", None, True, 1024)
        save("store", store)
        parts = [(f"step/{v}", step_profile, (work, p, store["path"], v, False)) for v in ("unguided", "kd")]
        big = gpu.cache_store(
            work, p, "r152-bf16", "gpubench-224", "resnet152", "imagenet", p["size_224"], True, p["cache_batch"]
        )
        save("cache224", big)
        if "error" not in big:
            parts += [
                ("decode224", decode_rate, (big["path"], p)),
                ("cache_pass224", cache_pass, (big["path"], p, work)),
            ]
        parts += [(f"step/{v}-compiled", step_profile, (work, p, store["path"], v, True)) for v in ("unguided", "kd")]
        for key, fn, fn_args in parts:
            try:
                save(key, fn(*fn_args))
            except Exception as e:  # noqa: BLE001 - one part's failure must not lose the others
                save(key, {"error": f"{type(e).__name__}: {str(e)[:300]}"})


if __name__ == "__main__":
    main()
