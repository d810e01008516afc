"""GPU benchmark: one prepared script for one CUDA GPU, one attempt of under 10 minutes (start-up
and imports included), writing OUT/gpu.json and OUT/summary.txt after every section.

    bash benchmarks/gpu_bundle.sh                   # once, on a machine with `make setup` done
    python3 benchmarks/gpu.py OUT                   # on the GPU machine, from the repository root
    .venv/bin/python benchmarks/gpu.py OUT --rehearse   # the same steps, tiny, on the CPU

The GPU machine has Python 3.12 and torch but no FFCV: the script puts `.gpu-bundle/site` (FFCV
built by gpu_bundle.sh, with its libraries) and the repository on sys.path itself. Everything
is synthetic and needs no network: random-weight models (speed does not depend on weights) and
seeded images.

First a **preflight**: every import the run needs (FFCV and its compiled library, numba, cv2,
h5py, timm, tensorboard, kdstore) and CUDA, in seconds; a missing piece is one line and
OUT/gpu.json says which. Then the sections, in order of value, each given at most the time left
of --budget-s (default 360 s; the planned schedule is printed first and fits it by the sections'
own estimates); a section that overruns is stopped and says so, and every later one still runs
if it fits:

  store       a CIFAR-100-shaped store (50,000 + 10,000 images of 32 px, 100 classes), cached with
              a cifar_resnet56 teacher in bf16 (in a child process: no fork after CUDA here)
  sync        the steady-state steps of `train`'s own epoch loop (loader, id check, step, sums)
              under torch.cuda.set_sync_debug_mode("error"): kd, kd-cl-sr and unguided
  pytest_gpu  tests/train/test_gpu.py, the CUDA-only tests, in a child pytest
  fit         `train` runs of 3 epochs at batch 512 (images/s of the training pass, synchronised
              before its time is read; evaluation and checkpoint seconds apart): every student with
              offline KD and unguided, data on the device; cifar_resnet8 streamed by FFCV
              (the training step replayed from a CUDA graph, the default; cifar_resnet8's kd and
              unguided again with the eager step)
  together    cifar_resnet8 students trained together from the store: 4 stacked, 4 in turn, 16 stacked
              (`sweep --concurrent N --stack on|off`)
  ceiling     the same step on batches already gathered on the device, one sync at the end
  cache224    the cache pass of resnet152 at 224 px over 224-px JPEGs: bf16, and fp32 with TF32 off
              (in child processes)
  bench       `kdstore bench` for the pairs that carry the targets: cifar_resnet8 with a
              cifar_resnet56 teacher, resnet18 with resnet152 at 224 px
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for extra in (ROOT / ".gpu-bundle" / "site", ROOT):
    if extra.is_dir() and str(extra) not in sys.path:
        sys.path.insert(0, str(extra))

import numpy as np  # noqa: E402
import torch  # noqa: E402

STUDENTS = ("cifar_resnet8", "cifar_resnet20", "resnet18")
# bench pairs that carry the targets: offline/online against the FLOP limit, small and large teacher
BENCH_PAIRS = (("cifar_resnet8", "cifar_resnet56", "auto", None), ("resnet18", "resnet152", "imagenet", 224))
FULL = dict(
    device="cuda",
    n_train=50_000,
    n_val=10_000,
    classes=100,
    batch=512,
    fit_epochs=3,
    bench_steps=20,
    bench_warmup=5,
    bench_block=5,
    n_224=8192,
    size_224=224,
    cache_batch=256,
)
REHEARSE = dict(
    device="cpu",
    n_train=1536,
    n_val=256,
    classes=10,
    batch=64,
    fit_epochs=2,
    bench_steps=2,
    bench_warmup=1,
    bench_block=1,
    n_224=96,
    size_224=72,
    cache_batch=32,
)


def register_datasets(p: dict) -> None:
    """`gpubench` (32-px, raw pixels) and `gpubench-224` (smooth images stored as JPEG, like
    ImageNet's) in kdstore's dataset registry; images are made from their index on demand."""
    from PIL import Image

    from kdstore.data import datasets

    def small(n: int, offset: int) -> datasets.ImageSplit:
        labels = (np.arange(n, dtype=np.int64) * 7919 + offset) % p["classes"]
        noise = np.random.default_rng(offset).integers(0, 256, (4096, 32, 32, 3), dtype=np.uint8)
        return datasets.ImageSplit(
            get=lambda i: noise[(i * 31 + labels[i]) % len(noise)], labels=labels, sample_ids=np.arange(n) + offset
        )

    def large(n: int, offset: int) -> datasets.ImageSplit:
        size = p["size_224"]
        labels = (np.arange(n, dtype=np.int64) * 7919 + offset) % p["classes"]

        def get(i: int) -> np.ndarray:
            coarse = np.random.default_rng([offset, i]).integers(0, 256, (8, 8, 3), dtype=np.uint8)
            return np.asarray(Image.fromarray(coarse).resize((size, size), Image.BICUBIC))

        return datasets.ImageSplit(get=get, labels=labels, sample_ids=np.arange(n) + offset)

    names = [f"c{k}" for k in range(p["classes"])]
    datasets.DATASETS["gpubench"] = lambda root, size=None: datasets.ImageDataset(
        "gpubench", names, small(p["n_train"], 0), small(p["n_val"], 10**7)
    )
    datasets.DATASETS["gpubench-224"] = lambda root, size=None: datasets.ImageDataset(
        "gpubench-224", names, large(p["n_224"], 0), large(max(64, p["n_224"] // 16), 10**7)
    )


PREFLIGHT_MODULES = (
    "ffcv",
    "ffcv._libffcv",
    "ffcv.writer",
    "ffcv.loader",
    "numba",
    "cv2",
    "h5py",
    "timm",
    "tensorboard",
    "click",
    "rich",
    "matplotlib",
    "psutil",
    "kdstore",
    "kdstore.data.beton",
    "kdstore.train.loop",
    "kdstore.cache.write",
    "kdstore.train.bench",
)


def preflight(device: str) -> dict:
    """Import everything the run needs and check the device; {"ok": False, "missing": ...} names
    the first thing that fails, in seconds, before any section starts."""
    import importlib

    t0 = time.perf_counter()
    versions: dict = {}
    for name in PREFLIGHT_MODULES:
        try:
            module = importlib.import_module(name)
        except Exception as e:  # noqa: BLE001 - any import failure is named in one line
            return {"ok": False, "missing": name, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
        versions[name] = getattr(module, "__version__", None)
    if device == "cuda" and not torch.cuda.is_available():
        return {"ok": False, "missing": "CUDA", "error": "torch sees no CUDA device"}
    cuda = torch.cuda.is_available()
    return {
        "ok": True,
        "seconds": time.perf_counter() - t0,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "versions": {k: v for k, v in versions.items() if v},
        "ffcv": sys.modules["ffcv"].__file__,
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "cuda": torch.version.cuda if cuda else None,
        "tf32": {"matmul": torch.backends.cuda.matmul.allow_tf32, "cudnn_conv": torch.backends.cudnn.allow_tf32},
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "argv": sys.argv,
    }


def child_env() -> dict[str, str]:
    """The environment of a child process: this one's, with the repository and the bundle first on
    PYTHONPATH (as this script put them on sys.path)."""
    path = os.pathsep.join(p for p in sys.path[:2] + [os.environ.get("PYTHONPATH", "")] if p)
    return {**os.environ, "PYTHONPATH": path}


def cache_child(spec: str) -> None:
    """`gpu.py --cache-child JSON`: one `kdstore cache` in a fresh process (its FFCV writer never
    forks a process that holds CUDA), printing its figures as the last line."""
    args = json.loads(spec)
    p = args.pop("sizes")
    register_datasets(p)
    if not args["amp"] and torch.cuda.is_available():  # fp32 means fp32: no TF32 in the convolutions
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    from kdstore.cache import write as cache
    from kdstore.cache.config import CacheConfig

    t0 = time.perf_counter()
    cache.run(CacheConfig(allow_untrained=True, device=p["device"], overwrite=True, progress=False, **args))
    manifest = json.loads((Path(args["out"]) / "MANIFEST.json").read_text())
    tf32 = {"matmul": torch.backends.cuda.matmul.allow_tf32, "cudnn_conv": torch.backends.cudnn.allow_tf32}
    print(
        json.dumps(
            {
                "path": args["out"],
                "seconds": time.perf_counter() - t0,
                "amp": args["amp"],
                "tf32": tf32,
                "teacher_images_per_s": manifest["teacher_images_per_s"],
            }
        )
    )


def cache_store(
    work: Path,
    p: dict,
    name: str,
    dataset: str,
    teacher: str,
    stem: str,
    input_size: int | None,
    amp: bool,
    batch: int,
    timeout: float = 600,
) -> dict:
    """A store cached by a child process (cache_child), stopped at `timeout`."""
    import subprocess

    spec = {
        "sizes": p,
        "dataset": dataset,
        "out": str(work / "stores" / name),
        "teacher": teacher,
        "stem": stem,
        "input_size": input_size,
        "amp": amp,
        "batch_size": batch,
    }
    env = child_env()
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "unused", "--cache-child", json.dumps(spec)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=max(1.0, timeout),
    )
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        return {"error": f"cache exited {proc.returncode}: {(proc.stderr.strip().splitlines() or ['-'])[-1][:300]}"}
    return json.loads(lines[-1])


def train_config(work: Path, p: dict, store: str, student: str, variant: str, loader: str = "device", **kw):
    from kdstore.train.config import TrainConfig

    out = Path(tempfile.mkdtemp(dir=work, prefix=f"run-{student}-{variant}-{loader}-"))
    return TrainConfig(
        out=str(out),
        store=store,
        variant=variant,
        student=student,
        batch_size=p["batch"],
        loader=loader,
        device=p["device"],
        progress=False,
        overwrite=True,
        **kw,
    )


def sync_check(work: Path, p: dict, store: str, student: str, variant: str) -> dict:
    """One epoch of `train`'s own loop; from its 4th batch to its last but one, any host sync
    raises (the hook runs before each step). The epoch's end (sums, evaluation) may sync."""
    from kdstore.runtime.console import images_progress
    from kdstore.store.format import Store
    from kdstore.train import loop as train

    if not torch.cuda.is_available():
        return {"checked": False, "why": "no CUDA device"}
    cfg = train_config(
        work, p, store, student, variant, teacher_rows="device", epochs=1, agreement_samples=0, tensorboard=False
    )
    last = []

    def hook(epoch: int, b: int, ids: np.ndarray, lam: float) -> None:
        if b == 3:
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("error")
        if b == last[0] - 1:
            torch.cuda.set_sync_debug_mode("default")

    run = train.build_run(cfg, train.data_from_store(Store.open(store)), student, "student", hook=hook)
    last.append(len(run.train_loader))
    try:
        with images_progress(False) as bar:
            train.run_epoch(run, 0, bar)
        return {"checked": True, "steps_checked": max(0, last[0] - 4), "host_syncs": 0}
    except RuntimeError as e:
        return {
            "checked": True,
            "host_syncs": ">=1",
            "error": str(e).splitlines()[0][:300],
            "where": [line.strip() for line in traceback.format_exc().splitlines() if "kdstore" in line][-4:],
        }
    finally:
        torch.cuda.set_sync_debug_mode("default")


def fit_speed(
    work: Path, p: dict, store: str, student: str, variant: str, loader: str, options: dict | None = None
) -> dict:
    """A `train` run; per epoch: images/s of the training pass, evaluation and checkpoint seconds
    (the first epoch includes cuDNN's autotuning and the graph's capture: the figure is the
    median of the others). `options`: more of train's (cuda_graph=False: the eager step)."""
    from kdstore.store.format import Store
    from kdstore.train import loop as train

    cfg = train_config(work, p, store, student, variant, loader, epochs=p["fit_epochs"], **(options or {}))
    saves: list[float] = []
    plain = train.save_epoch

    @functools.wraps(plain)
    def timed(run, row):
        t0 = time.perf_counter()
        plain(run, row)
        saves.append(time.perf_counter() - t0)

    train.save_epoch = timed
    try:
        train.fit(cfg, train.data_from_store(Store.open(store)), student, "student")
    finally:
        train.save_epoch = plain
    rows = [json.loads(line) for line in (Path(cfg.out) / "metrics.jsonl").read_text().splitlines()]
    steady = rows[1:] or rows
    return {
        "images_per_s": float(np.median([r["images_per_s"] for r in steady])),
        "per_epoch_images_per_s": [r["images_per_s"] for r in rows],
        "train_seconds": [r["seconds"] for r in rows],
        "eval_seconds": [r["eval_seconds"] for r in rows],
        "checkpoint_seconds": saves,
        "data_wait_frac": [r["data_wait_frac"] for r in rows],
        "loader_used": json.loads((Path(cfg.out) / "config.json").read_text())["loader_used"],
        "cuda_graph": cfg.cuda_graph,
    }


def together(work: Path, p: dict, store: str, student: str, n: int, stack: str) -> dict:
    """`sweep --concurrent n --stack STACK` as the library runs it: n students of `student` (kd,
    kd-cl-sr, unguided and kd-cl in turn, seeds 0, 1, ...) from one store in one process; the
    students' images trained on over the seconds of their training passes (a stacked epoch's pass
    counted once), and the wall time."""
    from kdstore.train.concurrent import fit_together

    variants = ("kd", "kd-cl-sr", "unguided", "kd-cl")
    cfgs = [
        train_config(work, p, store, student, variants[i % 4], epochs=p["fit_epochs"], seed=i // 4, tensorboard=False)
        for i in range(n)
    ]
    t0 = time.perf_counter()
    fit_together(cfgs, stack=stack)
    wall = time.perf_counter() - t0
    rows = [json.loads(line) for c in cfgs for line in (Path(c.out) / "metrics.jsonl").read_text().splitlines()]
    images = sum(r["images_per_s"] * r["seconds"] for r in rows)
    by_epoch: dict[int, list[dict]] = {}
    for r in rows:
        by_epoch.setdefault(r["epoch"], []).append(r)
    seconds = sum(
        max(r["seconds"] for r in e) if "stacked" in e[0] else sum(r["seconds"] for r in e) for e in by_epoch.values()
    )
    return {
        "students": n,
        "stack": stack,
        "stacked_epochs": sum("stacked" in e[0] for e in by_epoch.values()),
        "images_per_s_in_all": images / seconds,
        "wall_seconds": wall,
        "epochs": p["fit_epochs"],
    }


def ceiling(work: Path, p: dict, store: str, student: str) -> dict:
    """The offline-KD step alone: an epoch's full batches gathered on the device first, then
    stepped through with one sync at the end."""
    from kdstore.store.format import Store
    from kdstore.train import loop as train

    cfg = train_config(work, p, store, student, "kd", epochs=1, tensorboard=False)
    run = train.build_run(cfg, train.data_from_store(Store.open(store)), student, "student")
    order, local = run.rank_order(0), run.train_loader.batch_size
    batches = [
        (order[b * local : (b + 1) * local], x, y) for b, (x, y, _) in enumerate(run.loader.inner) if len(y) == local
    ]
    run.step.model.train()
    warm = 3
    for pos, x, y in batches[:warm]:
        run.raw_step(0, pos, x, y, cfg.lam)
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for pos, x, y in batches[warm:]:
        run.raw_step(0, pos, x, y, cfg.lam)
    sync()
    seconds = time.perf_counter() - t0
    return {"images_per_s": (len(batches) - warm) * local / seconds, "steps": len(batches) - warm}


def bench_pair(p: dict, store: str, student: str, teacher: str, stem: str, input_size: int | None) -> dict:
    from kdstore.train import bench
    from kdstore.train.bench import BenchConfig

    r = bench.run(
        BenchConfig(
            store=store,
            student=student,
            teacher=teacher,
            stem=stem,
            input_size=input_size,
            batch_size=p["batch"],
            steps=p["bench_steps"],
            warmup=p["bench_warmup"],
            block=p["bench_block"],
            device=p["device"],
            loader="device",
        )
    )
    keep = (
        "images_per_s",
        "step_ms_median",
        "step_ms_p10",
        "step_ms_p90",
        "data_wait_frac",
        "peak_memory_bytes",
        "loader",
        "amp",
    )
    return {
        "modes": {m: {k: v[k] for k in keep} for m, v in r["modes"].items()},
        "offline_vs_unguided": r["offline_vs_unguided"],
        "online_offline_ratio": r["online_offline_ratio"],
        "flops_per_image": r["flops_per_image"],
        "ratio_vs_flop_limit": r["ratio_vs_flop_limit"],
        "paired": r["paired"],
        "cache": r["cache"],
    }


def gpu_tests(timeout: float = 240) -> dict:
    """tests/train/test_gpu.py (the CUDA-only tests; they skip elsewhere), in a child pytest."""
    import subprocess

    env = child_env()
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/train/test_gpu.py"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=max(1.0, timeout),
    )
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    return {
        "returncode": proc.returncode,
        "result": lines[-1] if lines else "",
        "failures": [x for x in lines if x.startswith(("FAILED", "E "))][:10],
    }


class SectionTimeout(Exception):
    pass


def _alarm(signum, frame):  # noqa: ANN001 - signal handler
    raise SectionTimeout


class Sections:
    """Runs sections in order under a time budget: each is given at most the time left (a Python
    section is stopped by SIGALRM, a child process by its timeout), and every result, with the
    summary, is written as soon as it comes."""

    def __init__(self, out: Path, budget_s: float, result: dict) -> None:
        self.out, self.result = out, result
        self.t0 = time.perf_counter()
        self.deadline = self.t0 + budget_s

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def run(self, key: str, estimate_s: float, fn, *args, child: bool = False):
        """fn(*args), or fn(*args, timeout=left) for a section that runs a child process."""
        left = self.left()
        if left < min(estimate_s, 5.0) or left <= 1:
            self.result.setdefault("skipped", []).append(f"{key}: {left:.0f} s left, needs about {estimate_s:.0f}")
            print(f"[{time.perf_counter() - self.t0:6.1f} s] skip {key}", flush=True)
            return None
        t0 = time.perf_counter()
        signal.signal(signal.SIGALRM, _alarm)
        if not child:
            signal.setitimer(signal.ITIMER_REAL, left)
        try:
            value = fn(*args, timeout=left) if child else fn(*args)
        except (SectionTimeout, subprocess.TimeoutExpired):
            value = {"error": f"stopped at the budget's end after {time.perf_counter() - t0:.0f} s", "timed_out": True}
        except Exception as e:  # noqa: BLE001 - one failed section must not lose the others' figures
            value = {"error": f"{type(e).__name__}: {str(e)[:300]}", "where": traceback.format_exc().splitlines()[-6:]}
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        if isinstance(value, dict):
            value["section_seconds"] = time.perf_counter() - t0
            value["estimate_seconds"] = estimate_s
        node = self.result
        *path, last = key.split("/")
        for part in path:
            node = node.setdefault(part, {})
        node[last] = value
        self.write()
        print(f"[{time.perf_counter() - self.t0:6.1f} s] {key}: {_brief(value)}", flush=True)
        return value

    def write(self) -> None:
        self.result["elapsed_seconds"] = time.perf_counter() - self.t0
        (self.out / "gpu.json").write_text(json.dumps(self.result, indent=1, default=str))
        (self.out / "summary.txt").write_text("\n".join(summary(self.result)) + "\n")


def _brief(value) -> str:
    if not isinstance(value, dict):
        return str(value)[:120]
    if "error" in value:
        return "ERROR " + value["error"][:150]
    shown = {
        k: (round(v, 3) if isinstance(v, float) else v)
        for k, v in value.items()
        if isinstance(v, (int, float, str, bool)) and k != "path"
    }
    return json.dumps(shown)[:160]


def summary(r: dict) -> list[str]:
    def get(*path, fmt="{:,.0f}"):
        node = r
        for k in path:
            node = node.get(k) if isinstance(node, dict) else None
        return fmt.format(node) if isinstance(node, (int, float)) else "-"

    env = r.get("preflight") or {}
    lines = [
        f"kdstore GPU benchmark: {env.get('gpu') or 'CPU (rehearsal)'}, torch {env.get('torch')}, "
        f"{env.get('date')}; {r.get('elapsed_seconds', 0):.0f} s of the {r['schedule']['budget_s']:.0f} s budget"
    ]
    lines.append(
        f"store: {get('store', 'seconds', fmt='{:.1f}')} s, teacher pass {get('store', 'teacher_images_per_s')} img/s"
    )
    for key, v in r.get("sync", {}).items():
        lines.append(
            f"host syncs, steady-state steps of {key}: {v.get('host_syncs', v.get('why', v.get('error', '?')))}"
            + (f" ({v['error']})" if "error" in v and "host_syncs" in v else "")
        )
    lines.append(
        f"{'student':16} {'offline img/s':>14} {'unguided':>10} {'off/ung':>8} {'ceiling':>10} {'off/ceil':>9} "
        f"{'eval s':>7} {'ckpt s':>7}"
    )
    for s in STUDENTS:
        off, ung = (r.get("fit", {}).get(f"{s}-{m}") or {} for m in ("kd-device", "unguided-device"))
        ceil = r.get("ceiling", {}).get(s) or {}
        ratio = off.get("images_per_s", 0) / ung["images_per_s"] if ung.get("images_per_s") else None
        to_ceil = off.get("images_per_s", 0) / ceil["images_per_s"] if ceil.get("images_per_s") else None
        lines.append(
            f"{s:16} {off.get('images_per_s', float('nan')):>14,.0f} {ung.get('images_per_s', float('nan')):>10,.0f} "
            f"{ratio or float('nan'):>8.3f} {ceil.get('images_per_s', float('nan')):>10,.0f} "
            f"{to_ceil or float('nan'):>9.3f} "
            f"{np.median(off.get('eval_seconds', [np.nan])):>7.2f} "
            f"{np.median(off.get('checkpoint_seconds', [np.nan])):>7.2f}"
        )
    lines.append(
        f"cifar_resnet8 offline KD, data streamed by FFCV: {get('fit', 'cifar_resnet8-kd-ffcv', 'images_per_s')} img/s "
        f"(on the device: {get('fit', 'cifar_resnet8-kd-device', 'images_per_s')})"
    )
    lines.append(
        f"cifar_resnet8, graph step (default) / eager: kd {get('fit', 'cifar_resnet8-kd-device', 'images_per_s')} / "
        f"{get('fit', 'cifar_resnet8-kd-device-eager', 'images_per_s')} img/s, unguided "
        f"{get('fit', 'cifar_resnet8-unguided-device', 'images_per_s')} / "
        f"{get('fit', 'cifar_resnet8-unguided-device-eager', 'images_per_s')} img/s"
    )
    for key, what in (("x4", "4 stacked"), ("x4-in-turn", "4 in turn"), ("x16", "16 stacked")):
        lines.append(
            f"cifar_resnet8 students together, {what}: "
            f"{get('together', f'cifar_resnet8-{key}', 'images_per_s_in_all')} img/s in all "
            f"({get('together', f'cifar_resnet8-{key}', 'wall_seconds', fmt='{:.1f}')} s, "
            f"{get('together', f'cifar_resnet8-{key}', 'stacked_epochs')} epochs stacked)"
        )
    lines.append(
        f"resnet152@224 cache pass: bf16 {get('cache224', 'bf16', 'teacher_images_per_s')} img/s, "
        f"fp32 {get('cache224', 'fp32', 'teacher_images_per_s')} img/s"
    )
    for s, t, stem, size in BENCH_PAIRS:
        v = r.get("bench", {}).get(f"{s}-{t}-{stem}-{size or 'native'}")
        if v and "modes" in v:
            m = v["modes"]
            lines.append(
                f"bench {s} / {t} {stem} {size or ''}: img/s unguided {m['unguided']['images_per_s']:,.0f} offline "
                f"{m['offline']['images_per_s']:,.0f} online {m['online']['images_per_s']:,.0f}; online/offline "
                f"step time {v['online_offline_ratio']:.2f} = {v['ratio_vs_flop_limit']:.2f} of the FLOP limit "
                f"{v['flops_per_image']['limit']:.2f}"
            )
    lines.append(f"tests/train/test_gpu.py: {(r.get('pytest_gpu') or {}).get('result', '-')}")
    lines += [f"skipped: {s}" for s in r.get("skipped", [])]
    lines += [f"error in {k}" for k, v in _errors(r)]
    return lines


def _errors(node, prefix=""):
    if isinstance(node, dict):
        if "error" in node and "host_syncs" not in node:
            yield prefix, node
        for k, v in node.items():
            yield from _errors(v, f"{prefix}/{k}" if prefix else k)


def plan(p: dict) -> list[tuple[str, float, object, tuple, bool]]:
    """The sections in order of value: (key, estimate in seconds, function, its arguments after
    (work, p, store), whether it runs a child process). The estimates are what `--budget-s` is
    checked against; the store section comes first and is not listed."""
    steps: list[tuple[str, float, object, tuple, bool]] = []
    for variant in ("kd", "kd-cl-sr", "unguided"):
        steps.append((f"sync/cifar_resnet8-{variant}", 10, sync_check, ("cifar_resnet8", variant), False))
    steps.append(("pytest_gpu", 45, gpu_tests, (), True))
    for student in STUDENTS:
        steps.append((f"fit/{student}-kd-device", 15, fit_speed, (student, "kd", "device"), False))
    for variant in ("kd", "unguided"):  # issue 35: the graph step (above, the default) against the eager one
        eager = {"cuda_graph": False}
        steps.append(
            (
                f"fit/cifar_resnet8-{variant}-device-eager",
                15,
                fit_speed,
                ("cifar_resnet8", variant, "device", eager),
                False,
            )
        )
    # issue 35: students as one stacked network ("on": the stacked path on the CPU rehearsal too), in turn, and 16
    steps.append(("together/cifar_resnet8-x4", 30, together, ("cifar_resnet8", 4, "on"), False))
    steps.append(("together/cifar_resnet8-x4-in-turn", 30, together, ("cifar_resnet8", 4, "off"), False))
    steps.append(("together/cifar_resnet8-x16", 45, together, ("cifar_resnet8", 16, "on"), False))
    steps.append(("fit/cifar_resnet8-kd-ffcv", 20, fit_speed, ("cifar_resnet8", "kd", "ffcv"), False))
    for student in STUDENTS:
        steps.append((f"fit/{student}-unguided-device", 12, fit_speed, (student, "unguided", "device"), False))
        steps.append((f"ceiling/{student}", 8, ceiling, (student,), False))
    for name, amp in (("bf16", True), ("fp32", False)):
        steps.append(
            (
                f"cache224/{name}",
                35,
                cache_store,
                (f"r152-{name}", "gpubench-224", "resnet152", "imagenet", p["size_224"], amp, p["cache_batch"]),
                True,
            )
        )
    for student, teacher, stem, size in BENCH_PAIRS:
        scaled = size and p["size_224"] * size // 224
        steps.append(
            (
                f"bench/{student}-{teacher}-{stem}-{size or 'native'}",
                30,
                bench_pair,
                (student, teacher, stem, scaled),
                False,
            )
        )
    return steps


STORE_ESTIMATE_S = 30.0


def run_sections(s: Sections, work: Path, p: dict) -> None:
    store = s.run(
        "store",
        STORE_ESTIMATE_S,
        cache_store,
        work,
        p,
        "c100",
        "gpubench",
        "cifar_resnet56",
        "auto",
        None,
        True,
        1024,
        child=True,
    )
    if not store or "error" in store:
        s.result["fatal"] = "no store: nothing else can run"
        return
    for key, estimate, fn, args, child in plan(p):
        if fn is gpu_tests:
            s.run(key, estimate, fn, child=True)
        elif fn is cache_store:
            s.run(key, estimate, fn, work, p, *args, child=True)
        elif fn is bench_pair:
            s.run(key, estimate, fn, p, store["path"], *args)
        else:
            s.run(key, estimate, fn, work, p, store["path"], *args)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", help="Directory for gpu.json and summary.txt (created; nothing else is written there).")
    ap.add_argument(
        "--budget-s", type=float, default=360.0, help="Stop sections at this many seconds after the preflight."
    )
    ap.add_argument("--rehearse", action="store_true", help="Tiny sizes on the CPU: every step, no meaningful figure.")
    ap.add_argument("--work", help="Scratch directory for stores and runs (default: a temporary one, removed).")
    ap.add_argument("--cache-child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.cache_child:
        return cache_child(args.cache_child)
    p = REHEARSE if args.rehearse else FULL
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result: dict = {"sizes": p, "preflight": preflight(p["device"])}
    planned = STORE_ESTIMATE_S + sum(step[1] for step in plan(p))
    result["schedule"] = {
        "budget_s": args.budget_s,
        "planned_s": planned,
        "sections": [["store", STORE_ESTIMATE_S]] + [[k, e] for k, e, *_ in plan(p)],
    }
    print(
        f"schedule: {len(plan(p)) + 1} sections, {planned:.0f} s by their estimates, budget {args.budget_s:.0f} s",
        flush=True,
    )
    if not result["preflight"]["ok"]:
        (out / "gpu.json").write_text(json.dumps(result, indent=1, default=str))
        f = result["preflight"]
        sys.exit(f"preflight: {f['missing']} is missing ({f['error']})")
    register_datasets(p)
    with tempfile.TemporaryDirectory(prefix="kdstore-gpu-", dir=args.work) as tmp:
        s = Sections(out, args.budget_s, result)
        try:
            run_sections(s, Path(tmp), p)
        finally:
            result["total_seconds"] = time.perf_counter() - s.t0
            s.write()
    print("\n".join(summary(result)))


if __name__ == "__main__":
    main()
