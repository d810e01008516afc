"""The methods' table on the real CIFAR-10 images (issue 32's evidence), from one store with
replayed views: every distillation loss alone (`kd` variant) and with selective reliance
(`kd-cl-sr`), `unguided` as the floor, 3 seeds; and `kd` from an int8 store against the float16
one, the same seeds. One prepared script for one lent GPU (or a tiny rehearsal on the CPU).

    cp ../shared/data/cifar10-jpeg.tar.gz .gpu-data/     # here, once (.gpu-data is git-ignored)
    bash benchmarks/gpu_bundle.sh                        # FFCV for the GPU machine
    python3 benchmarks/methods.py OUT                    # on the GPU machine (device tool: carry
                                                         #   .gpu-bundle and .gpu-data)
    .venv/bin/python benchmarks/methods.py OUT --rehearse   # the same steps, tiny, on the CPU
    tar -xzf OUT/records.tgz -C R && .venv/bin/python -m kdstore report R/runs --baseline kd --out R/report

Steps, each skipped when a previous call finished it (the work directory, .methods-work/ under
the repository, survives between calls on a machine that stays warm): unpack the images; train
the teacher (`kdstore teacher`, cifar_resnet20); cache it twice with `--views V` (float16 and
int8 logits); then the student runs (cifar_resnet8), `--jobs` processes at once on the one GPU,
seed by seed (so that a budget that runs out leaves whole seeds). Every finished run's
config.json, summary.json and metrics.jsonl are packed in OUT/records.tgz (runs/, runs-int8/ for
the int8 store's), with the teacher's and the stores' records, and OUT/methods.json says what ran
and how long each step took. The report (scipy's t-interval) is made here, from the archive."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for extra in (ROOT / ".gpu-bundle" / "site", ROOT):
    if extra.is_dir() and str(extra) not in sys.path:
        sys.path.insert(0, str(extra))

LOSSES = ("kd", "dkd", "dist", "nkd", "wttm", "ctkd", "mlkd")
FULL = dict(
    train_per_class=5000,
    test_per_class=1000,
    teacher_epochs=30,
    teacher_batch=256,
    teacher_lr=0.1,
    epochs=10,
    batch=256,
    lr=0.1,
    views=4,
    jobs=8,
)
REHEARSE = dict(
    train_per_class=40,
    test_per_class=10,
    teacher_epochs=1,
    teacher_batch=64,
    teacher_lr=0.1,
    epochs=1,
    batch=64,
    lr=0.1,
    views=2,
    jobs=2,
)


def child_env() -> dict[str, str]:
    """This process's environment with the repository and the FFCV bundle first on PYTHONPATH."""
    path = os.pathsep.join(p for p in sys.path[:2] + [os.environ.get("PYTHONPATH", "")] if p)
    return {**os.environ, "PYTHONPATH": path}


def kdstore_cli(*args: str, log: Path, timeout: float) -> tuple[int, float]:
    """`python -m kdstore ARGS` in a child process (its output appended to `log`); (exit code, seconds)."""
    t0 = time.perf_counter()
    with open(log, "a") as out:
        out.write(f"$ kdstore {' '.join(args)}\n")
        out.flush()
        try:
            code = subprocess.run(
                [sys.executable, "-m", "kdstore", *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=child_env(),
                timeout=max(1.0, timeout),
                check=False,
            ).returncode
        except subprocess.TimeoutExpired:
            code = 124
    return code, time.perf_counter() - t0


def arms() -> list[tuple[str, str, str]]:
    """(run name, variant, loss): unguided, then every loss alone and with selective reliance."""
    out = [("unguided", "unguided", "kd")]
    for loss in LOSSES:
        for variant in ("kd", "kd-cl-sr"):
            out.append((variant if loss == "kd" else f"{variant}+{loss}", variant, loss))
    return out


def student_jobs(work: Path, seeds: list[int], only: set[str] | None, runs: str, int8: bool) -> list[dict]:
    """Every student run (or those of the arms in `only`), seed by seed; the int8 store's kd runs
    after each seed's table. Run directories are named ARM-sSEED with '+' written '_' (the
    device tool brings back no file whose name holds a '+'; the report reads the arm from the run)."""
    jobs = []
    for seed in seeds:
        for name, variant, loss in arms():
            if only is None or name in only:
                out = work / runs / f"{name.replace('+', '_')}-s{seed}"
                jobs.append(dict(out=out, store=work / "store", variant=variant, loss=loss, seed=seed))
        if int8:
            out = work / f"{runs}-int8" / f"kd-s{seed}"
            jobs.append(dict(out=out, store=work / "store-int8", variant="kd", loss="kd", seed=seed))
    return jobs


def train_args(job: dict, p: dict, device: str) -> list[str]:
    return [
        "train", "--store", str(job["store"]), "--out", str(job["out"]), "--student", "cifar_resnet8",
        "--variant", job["variant"], "--loss", job["loss"], "--seed", str(job["seed"]),
        "--epochs", str(p["epochs"]), "--batch-size", str(p["batch"]), "--lr", str(p["lr"]),
        "--device", device, "--workers", "2" if device == "cuda" else "1", "--no-progress", "--overwrite",
    ]  # fmt: skip


def run_students(jobs: list[dict], p: dict, device: str, deadline: float, log_dir: Path) -> list[dict]:
    """The runs not yet finished, `p["jobs"]` child processes at a time, started while the
    deadline allows; a run still going at the deadline is stopped (and left unfinished)."""
    todo = [j for j in jobs if not (j["out"] / "summary.json").is_file()]
    running: list[tuple[dict, subprocess.Popen, float, object]] = []
    done: list[dict] = []
    while todo or running:
        while todo and len(running) < p["jobs"] and time.time() < deadline:
            job = todo.pop(0)
            log = open(log_dir / f"{job['out'].parent.name}-{job['out'].name}.log", "w")
            proc = subprocess.Popen(
                [sys.executable, "-m", "kdstore", *train_args(job, p, device)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=child_env(),
            )
            running.append((job, proc, time.perf_counter(), log))
        if not todo or time.time() >= deadline:
            todo = [] if time.time() >= deadline else todo
        for item in list(running):
            job, proc, t0, log = item
            code = proc.poll()
            if code is None and time.time() >= deadline:
                proc.kill()
                code = proc.wait()
            if code is not None:
                log.close()  # type: ignore[attr-defined]
                running.remove(item)
                done.append({"run": f"{job['out'].parent.name}/{job['out'].name}", "exit": code,
                             "seconds": round(time.perf_counter() - t0, 1)})  # fmt: skip
        time.sleep(0.5)
    return done


def pack_records(work: Path, out: Path, runs: str) -> dict[str, int]:
    """The small files of every finished run, the teacher's and the stores' records, in one
    archive, OUT/records.tgz (the device tool brings back a limited number of files)."""
    import tarfile

    counts = {}
    with tarfile.open(out / "records.tgz", "w:gz") as tar:
        for group in (runs, f"{runs}-int8"):
            done = [r for r in sorted((work / group).glob("*")) if (r / "summary.json").is_file()]
            for run in done:
                for name in ("config.json", "summary.json", "metrics.jsonl"):
                    tar.add(run / name, arcname=f"{group}/{run.name}/{name}")
            counts[group] = len(done)
        for part in ("teacher", "store", "store-int8"):
            for name in ("config.json", "summary.json", "metrics.jsonl", "MANIFEST.json"):
                if (work / part / name).is_file():
                    tar.add(work / part / name, arcname=f"{part}/{name}")
    return counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--rehearse", action="store_true", help="tiny sizes, on the CPU")
    ap.add_argument("--data", type=Path, default=None, help="cifar10-jpeg.tar.gz (default: .gpu-data/ or ../shared)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--budget-s", type=float, default=540.0, help="wall-clock budget of this call")
    ap.add_argument("--epochs", type=int, default=None, help="student epochs (default: the size's)")
    ap.add_argument("--jobs", type=int, default=None, help="student runs at once (default: the size's)")
    ap.add_argument("--batch", type=int, default=None, help="student batch size (default: the size's)")
    ap.add_argument("--lr", type=float, default=None, help="student peak learning rate (default: the size's)")
    ap.add_argument("--arms", default="", help="only these arms (e.g. kd,kd+mlkd; default: all)")
    ap.add_argument("--runs", default="runs", help="the runs' directory under the work directory and in OUT")
    ap.add_argument("--no-int8", action="store_true", help="no int8 store and no int8 runs")
    args = ap.parse_args()
    start = time.time()
    deadline = start + args.budget_s
    p = dict(REHEARSE if args.rehearse else FULL)
    given = (("epochs", args.epochs), ("jobs", args.jobs), ("batch", args.batch), ("lr", args.lr))
    p.update({k: v for k, v in given if v is not None})
    device = "cpu" if args.rehearse else "cuda"
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    work = ROOT / (".methods-work-rehearse" if args.rehearse else ".methods-work")
    work.mkdir(exist_ok=True)
    log = out / "steps.log"
    record: dict = {"sizes": p, "device": device, "steps": {}, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}

    def save() -> None:
        record["elapsed_s"] = round(time.time() - start, 1)
        (out / "methods.json").write_text(json.dumps(record, indent=1))

    import torch

    record["machine"] = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "cpus": os.cpu_count(),
    }
    if device == "cuda" and not torch.cuda.is_available():
        record["error"] = "torch sees no CUDA device"
        save()
        sys.exit(record["error"])
    data = args.data or next(
        (c for c in (ROOT / ".gpu-data" / "cifar10-jpeg.tar.gz", ROOT.parent / "shared/data/cifar10-jpeg.tar.gz")
         if c.is_file()), None)  # fmt: skip
    if data is None:
        sys.exit("skipped: the real CIFAR-10 JPEGs are not in .gpu-data/ nor ../shared/data/")

    images = work / f"cifar10-{p['train_per_class']}-{p['test_per_class']}"
    t0 = time.perf_counter()
    if not (images / ".complete").is_file():
        from kdstore.data.datasets import unpack_imagefolder_subset

        unpack_imagefolder_subset(data, images, {"train": p["train_per_class"], "test": p["test_per_class"]})
        (images / ".complete").write_text("ok\n")
    record["steps"]["unpack"] = round(time.perf_counter() - t0, 1)
    save()
    spec = f"imagefolder:{images}"
    if not (work / "teacher" / "summary.json").is_file():
        code, secs = kdstore_cli(
            "teacher", "--model", "cifar_resnet20", "--dataset", spec, "--epochs", str(p["teacher_epochs"]),
            "--batch-size", str(p["teacher_batch"]), "--lr", str(p["teacher_lr"]), "--device", device,
            "--out", str(work / "teacher"), "--overwrite", "--no-progress",
            log=log, timeout=deadline - time.time(),
        )  # fmt: skip
        record["steps"]["teacher"] = {"exit": code, "seconds": round(secs, 1)}
        save()
        if code:
            sys.exit(f"teacher failed (exit {code}); see {log}")
    stores = [("store", [])] + ([] if args.no_int8 else [("store-int8", ["--logits-dtype", "int8"])])
    for name, extra in stores:
        if not (work / name / "MANIFEST.json").is_file():
            code, secs = kdstore_cli(
                "cache", "--checkpoint", str(work / "teacher" / "checkpoint.pt"), "--dataset", spec,
                "--views", str(p["views"]), *extra, "--device", device, "--out", str(work / name), "--overwrite",
                "--no-progress", log=log, timeout=deadline - time.time(),
            )  # fmt: skip
            record["steps"][name] = {"exit": code, "seconds": round(secs, 1)}
            save()
            if code:
                sys.exit(f"cache {name} failed (exit {code}); see {log}")
    seeds = [int(s) for s in args.seeds.split(",")]
    logs = out / "logs"
    logs.mkdir(exist_ok=True)
    t0 = time.perf_counter()
    only = {a.strip() for a in args.arms.split(",") if a.strip()} or None
    jobs = student_jobs(work, seeds, only, args.runs, not args.no_int8)
    finished = run_students(jobs, p, device, deadline - 15, logs)
    record["steps"]["students"] = {"seconds": round(time.perf_counter() - t0, 1), "runs": finished}
    record["copied"] = pack_records(work, out, args.runs)
    record["planned_runs"] = len(jobs)
    save()
    print(json.dumps({k: record[k] for k in ("steps", "copied", "planned_runs", "elapsed_s")}, default=str)[:3000])


if __name__ == "__main__":
    main()
