"""`kdstore bench`: offline KD against online KD and unguided training, on the same batches.

Three modes run one after another in one process, each from the same initial student and on the
same batches: (a) `unguided` student steps, (b) `offline` KD steps with logits from the store,
(c) `online` KD steps with the teacher in eval and inference mode on every (augmented) batch.
Each mode is a run as `train` builds it (train.build_run), so bench times the step train runs.
Timing follows airbench: warm-up steps excluded, device synchronised, median over steps; every
batch goes to all three modes in turn, so that all three see the same machine."""

from __future__ import annotations

import copy
import itertools
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import psutil
import torch
import torch.nn as nn

from kdstore.data.beton import epoch_of, make_loader, read_int_fields, workers_problem
from kdstore.data.in_memory import LOADERS
from kdstore.errors import KdstoreError
from kdstore.loader.source import TrainData, data_from_store
from kdstore.loader.teacher_targets import online_teacher
from kdstore.models.build import STEMS, build_model
from kdstore.models.teachers import Teacher, TeacherSpec, load_teacher
from kdstore.options import opt, path_problems, to_dict, write_json
from kdstore.passes.inference import ModelInput
from kdstore.runtime.devices import DEVICES, resolve_device
from kdstore.runtime.precision import for_device
from kdstore.store.format import Store
from kdstore.train.config import TrainConfig
from kdstore.train.loop import build_run

MODES = ("unguided", "offline", "online")


@dataclass(frozen=True, kw_only=True)
class BenchConfig:
    """`kdstore bench`: the store, the student and teacher, and how long to time each mode;
    `kdstore.bench.run(cfg)` runs it and returns every mode's figures."""

    store: str = opt(help="Store written by `kdstore cache`.", required=True, path=True)
    student: str = opt(TrainConfig.student, "Any timm model name.")
    teacher: str | None = opt(help="timm name of the teacher for the online mode (default: the store's).")
    checkpoint: str | None = opt(help="Teacher weights for the online mode.", path=True)
    input_size: int | None = opt(help="Teacher input size (default: the store's).")
    stem: str | None = opt(help="Stem of a timm ResNet teacher (default: the store's).", choices=STEMS)
    batch_size: int = opt(TrainConfig.batch_size, "Batch size.")
    steps: int = opt(20, "Timed steps per mode.")
    warmup: int = opt(3, "Untimed steps per mode (loader compilation, allocator warm-up).")
    block: int = opt(5, "Steps of each mode run alone, for its data wait and peak memory.")
    workers: int = opt(TrainConfig.workers, "FFCV decoding threads; 0: one per core.")
    device: str = opt("auto", "auto: cuda when available, else cpu.", choices=DEVICES)
    tau: float = opt(TrainConfig.tau, "KD temperature.")
    lam: float = opt(TrainConfig.lam, "KD weight.")
    sweep_epochs: int = opt(30, "Epochs per run of the six-variant sweep in the break-even estimate.")
    amp: bool = opt(True, "Mixed precision on CUDA, as `train` (ignored on the CPU).")
    loader: str = opt(
        TrainConfig.loader, "Where batches come from, as `train --loader` (device, ffcv, auto).", choices=LOADERS
    )
    compile: bool = opt(False, "torch.compile the students, as `train --compile`.")
    json: str | None = opt(help="Write every figure as JSON here.", path=True)

    def validate(self) -> None:
        wrong = path_problems(self)
        if wrong:
            raise KdstoreError(wrong[0])
        if workers_problem(self.workers):
            raise KdstoreError(workers_problem(self.workers))
        for name, least in (("batch_size", 1), ("steps", 1), ("sweep_epochs", 1), ("block", 1)):
            if getattr(self, name) < least:
                raise KdstoreError(f"--{name.replace('_', '-')} must be >= {least}, got {getattr(self, name)}")
        if self.warmup < 0:
            raise KdstoreError(f"--warmup must be >= 0, got {self.warmup}")
        if self.batch_size < 2:
            raise KdstoreError(
                f"--batch-size must be >= 2 (BatchNorm cannot train on one sample), got {self.batch_size}"
            )
        if self.input_size is not None and self.input_size < 8:
            raise KdstoreError(f"--input-size must be >= 8 pixels, got {self.input_size}")
        for name in ("tau", "lam"):
            value = getattr(self, name)
            if (
                not (math.isfinite(value) and value >= 0)
                or (name == "tau" and value == 0)
                or (name == "lam" and value > 1)
            ):
                raise KdstoreError(f"--{name} is out of range: {value}")


def flop_counts(
    teacher: nn.Module, student: nn.Module, teacher_input: int, student_input: int, num_classes: int
) -> dict[str, float]:
    """FLOPs per image (torch.utils.flop_counter): teacher forward, and one student training step
    (forward + backward); the FLOP limit of the online/offline time ratio is their sum over the
    student step."""
    from torch.utils.flop_counter import FlopCounterMode

    batch = 2  # BatchNorm in training mode needs more than one sample
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        was_training = teacher.training
        teacher.eval()
        teacher(torch.randn(batch, 3, teacher_input, teacher_input))
        teacher.train(was_training)
    teacher_fwd = counter.get_total_flops() / batch
    s = copy.deepcopy(student).train()
    with FlopCounterMode(display=False) as counter:
        out = s(torch.randn(batch, 3, student_input, student_input))
        nn.functional.cross_entropy(out, torch.zeros(batch, dtype=torch.long) % num_classes).backward()
    student_step = counter.get_total_flops() / batch
    return {
        "teacher_forward": teacher_fwd,
        "student_step": student_step,
        "limit": (teacher_fwd + student_step) / student_step,
    }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _memory_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


class _Runner:
    """One mode's run exactly as `kdstore train` builds it (train.build_run: the student, its
    optimiser and schedule, the loaders --loader picks, the epoch's augmentation drawn up front,
    the teacher targets); `step(epoch, pos, images, labels)` is one step of that run."""

    def __init__(
        self,
        mode: str,
        cfg: BenchConfig,
        data: TrainData,
        teacher: nn.Module | None,
        input_size: int,
        device: torch.device,
        out: Path,
    ) -> None:
        n = len(read_int_fields(data.train_beton)["sample_id"])
        epochs = math.ceil((cfg.warmup + cfg.steps + cfg.block) * cfg.batch_size / n) + 1
        train_cfg = TrainConfig(
            out=str(out),
            store=cfg.store,
            variant="unguided" if mode == "unguided" else "kd",
            student=cfg.student,
            batch_size=cfg.batch_size,
            epochs=epochs,
            tau=cfg.tau,
            lam=cfg.lam,
            workers=cfg.workers,
            device=cfg.device,
            amp=cfg.amp,
            compile=cfg.compile,
            loader=cfg.loader,
            view_mode="clean",
            agreement_samples=0,
            progress=False,
            tensorboard=False,
        )
        online = (
            online_teacher(teacher, input_size, device, cfg.amp) if mode == "online" and teacher is not None else None
        )
        self.run = build_run(train_cfg, data, cfg.student, "student", teacher=online)
        self.lam = cfg.lam

    def step(self, epoch: int, pos: np.ndarray, images: torch.Tensor, labels: torch.Tensor) -> None:
        """One step of the run on a raw batch: its assembly by the run's loader (augmentation,
        teacher targets), then the optimiser step."""
        self.run.raw_step(epoch, pos, images, labels, self.lam)

    def batches(self) -> Iterator[tuple[int, np.ndarray, torch.Tensor, torch.Tensor]]:
        """(epoch, positions, images, labels) of this run's loader, epoch after epoch, forever."""
        inner = self.run.loader.inner  # the raw batches: each mode assembles its own
        for epoch in itertools.count():
            order, size = self.run.rank_order(epoch), self.run.loader.batch_size
            inner.next_epoch = epoch
            for b, (images, labels, _) in enumerate(inner):
                yield epoch, order[b * size : b * size + len(labels)], images, labels


def run_alone(
    mode: str, cfg: BenchConfig, data: TrainData, teacher: nn.Module, input_size: int, device: torch.device, out: Path
) -> dict[str, Any]:
    """One mode alone with its own loader, as a real run would be: the fraction of step time spent
    waiting for data, and peak memory (CUDA max allocated, with the teacher on the device only in
    the online mode; or the process RSS on the CPU)."""
    if mode == "online":
        for_device(teacher, device)
    _memory_reset(device)
    runner = _Runner(mode, cfg, data, teacher if mode == "online" else None, input_size, device, out)
    batches = runner.batches()
    wait = busy = 0.0
    rss = 0
    for step in range(cfg.warmup + cfg.block):
        _sync(device)
        t0 = time.perf_counter()
        epoch, pos, images, labels = next(batches)
        t1 = time.perf_counter()
        runner.step(epoch, pos, images, labels)
        _sync(device)
        if step >= cfg.warmup:
            wait, busy = wait + t1 - t0, busy + time.perf_counter() - t0
            rss = max(rss, psutil.Process().memory_info().rss)
    peak = int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else rss
    del runner, batches
    teacher.to("cpu")
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {"data_wait_frac": wait / busy, "peak_memory_bytes": peak}


def run_modes(
    cfg: BenchConfig, data: TrainData, teacher: nn.Module, input_size: int, device: torch.device, out: Path
) -> dict[str, Any]:
    """Time the modes on the same batches: every batch from one loader is given to all three
    modes in turn, the order cycling through all six permutations, so that drift in the machine's
    speed and the disturbance after a switch of mode hit every mode alike. Data wait and memory
    come from a short run of each mode alone."""
    alone = {m: run_alone(m, cfg, data, teacher, input_size, device, out) for m in MODES}
    for_device(teacher, device)
    runners = {m: _Runner(m, cfg, data, teacher if m == "online" else None, input_size, device, out) for m in MODES}
    batches = runners[MODES[0]].batches()
    orders = list(itertools.permutations(MODES))
    step_s: dict[str, list[float]] = {m: [] for m in MODES}
    for i in range(cfg.warmup + cfg.steps):
        epoch, pos, images, labels = next(batches)
        images, labels = images.clone(), labels.clone()  # FFCV reuses its buffers
        for mode in orders[i % len(orders)]:
            _sync(device)
            t0 = time.perf_counter()
            runners[mode].step(epoch, pos, images, labels)
            _sync(device)
            if i >= cfg.warmup:
                step_s[mode].append(time.perf_counter() - t0)
    out_modes = {}
    for mode in MODES:
        step = np.array(step_s[mode])
        p10, p90 = np.percentile(step, [10, 90]) * 1e3
        out_modes[mode] = {
            "images_per_s": float(np.median(cfg.batch_size / step)),
            "step_ms_median": float(np.median(step) * 1e3),
            "step_ms_p10": float(p10),
            "step_ms_p90": float(p90),
            "step_ms": [round(t * 1e3, 3) for t in step_s[mode]],
            "timed_steps": int(len(step)),
            **alone[mode],
            "loader": runners[mode].run.config["loader_used"],
            "amp": runners[mode].run.config["amp"],
        }
    return out_modes


def paired_speed(modes: dict[str, Any], faster: str, slower: str) -> dict[str, Any]:
    """Throughput of `faster` over `slower` from the per-step times of the same batches: the
    median ratio and its 10th-90th percentile spread; `within_noise` when the spread includes 1."""
    ratio = np.array(modes[slower]["step_ms"]) / np.maximum(np.array(modes[faster]["step_ms"]), 1e-9)
    p10, median, p90 = (float(v) for v in np.percentile(ratio, [10, 50, 90]))
    return {"median": median, "p10": p10, "p90": p90, "within_noise": bool(p10 <= 1.0 <= p90)}


def measure_cache(
    cfg: BenchConfig, teacher: nn.Module, store: Store, input_size: int, device: torch.device
) -> dict[str, float]:
    """The teacher pass as `cache` runs it (images from the .beton) against bare forwards of one
    fixed batch already on the device; images/s, medians over timed batches."""
    inp = ModelInput(
        model=teacher,
        mean=torch.tensor(store.attrs["normalize_mean"], device=device),
        std=torch.tensor(store.attrs["normalize_std"], device=device),
        input_size=input_size,
        device=device,
        amp=cfg.amp,
    )
    teacher.eval()
    n = min(len(store.train), (cfg.warmup + cfg.steps) * cfg.batch_size)
    loader = make_loader(store.beton("train"), cfg.batch_size, cfg.workers, indices=np.arange(n), drop_last=True)
    size = int(store.attrs["image_size"])
    fixed = torch.randint(0, 256, (cfg.batch_size, size, size, 3), dtype=torch.uint8, device=device)
    pass_s, bare_s = [], []
    with torch.inference_mode(), epoch_of(loader) as batches:
        # Interleaved: a cache-pass batch (read from the .beton, as `cache` does), then a bare
        # forward of a batch already on the device.
        for step in range(len(loader)):
            _sync(device)
            t0 = time.perf_counter()
            images, _, _ = next(batches)
            inp(images).cpu()
            _sync(device)
            t1 = time.perf_counter()
            inp(fixed)
            _sync(device)
            if step >= min(cfg.warmup, len(loader) - 1):
                pass_s.append(t1 - t0)
                bare_s.append(time.perf_counter() - t1)
    cache_ips = float(np.median(cfg.batch_size / np.array(pass_s)))
    bare_ips = float(np.median(cfg.batch_size / np.array(bare_s)))
    return {
        "cache_images_per_s": cache_ips,
        "teacher_forward_images_per_s": bare_ips,
        "cache_vs_forward": cache_ips / bare_ips,
    }


def break_even(n_train: int, n_val: int, ips: dict[str, float], cache_ips: float, epochs: int) -> dict[str, float]:
    """When the cache has paid for itself, in student epochs; and a six-variant sweep's saving.

    The sweep has five KD variants and `unguided` (which needs no teacher either way)."""
    cache_s = (n_train + n_val) / cache_ips
    epoch = {m: n_train / ips[m] for m in MODES}
    saving_per_epoch = epoch["online"] - epoch["offline"]
    online_sweep = epochs * (5 * epoch["online"] + epoch["unguided"])
    offline_sweep = cache_s + epochs * (5 * epoch["offline"] + epoch["unguided"])
    return {
        "cache_seconds": cache_s,
        "epoch_seconds_online": epoch["online"],
        "epoch_seconds_offline": epoch["offline"],
        "break_even_epochs": cache_s / saving_per_epoch if saving_per_epoch > 0 else float("inf"),
        "sweep_epochs": epochs,
        "sweep_seconds_online": online_sweep,
        "sweep_seconds_offline": offline_sweep,
        "sweep_saving_seconds": online_sweep - offline_sweep,
        "sweep_speedup": online_sweep / offline_sweep,
    }


def _online_teacher(cfg: BenchConfig, store: Store, input_size: int) -> Teacher:
    """The teacher online KD runs: --teacher/--checkpoint, else the store's own model."""
    spec = TeacherSpec(
        teacher=cfg.teacher or (None if cfg.checkpoint else store.attrs["teacher"]),
        checkpoint=cfg.checkpoint,
        stem=cfg.stem or (None if cfg.checkpoint else store.attrs["teacher_stem"]),
        input_size=input_size,
    )
    return load_teacher(spec, store.num_classes, int(store.attrs["image_size"]))


def run(cfg: BenchConfig) -> dict[str, Any]:
    cfg.validate()
    store = Store.open(cfg.store)
    if cfg.batch_size > len(store.train):
        raise KdstoreError(
            f"--batch-size {cfg.batch_size} is larger than the store's {len(store.train)} training samples"
        )
    if cfg.json and Path(cfg.json).is_dir():
        raise KdstoreError(f"--json {cfg.json} is a directory; name a file")
    device = resolve_device(cfg.device)
    input_size = int(cfg.input_size or store.attrs["input_size"])
    loaded = _online_teacher(cfg, store, input_size)
    teacher, teacher_meta = loaded.model, loaded.meta
    torch.manual_seed(0)
    student, student_meta = build_model(cfg.student, store.num_classes, int(store.attrs["image_size"]))
    flops = flop_counts(teacher, student, input_size, int(store.attrs["image_size"]), store.num_classes)
    teacher.eval()
    # bench writes no run; train's checks want a directory
    with tempfile.TemporaryDirectory(prefix="kdstore-bench-") as tmp:
        modes = run_modes(cfg, data_from_store(store), teacher, input_size, device, Path(tmp) / "run")
    cache = measure_cache(cfg, for_device(teacher, device), store, input_size, device)
    ratio = modes["offline"]["images_per_s"] / modes["online"]["images_per_s"]
    memory_kind = "cuda max allocated" if device.type == "cuda" else "process RSS (includes the teacher bench holds)"
    result = {
        "config": to_dict(cfg),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "teacher": teacher_meta,
        "student": student_meta,
        "modes": modes,
        "offline_vs_unguided": modes["offline"]["images_per_s"] / modes["unguided"]["images_per_s"],
        "online_offline_ratio": ratio,
        "memory_kind": memory_kind,
        "paired": {
            "offline_vs_unguided": paired_speed(modes, "offline", "unguided"),
            "offline_vs_online": paired_speed(modes, "offline", "online"),
        },
        "flops_per_image": flops,
        "ratio_vs_flop_limit": ratio / flops["limit"],
        "cache": cache,
        "break_even": break_even(
            len(store.train),
            len(store.val),
            {m: modes[m]["images_per_s"] for m in MODES},
            cache["cache_images_per_s"],
            cfg.sweep_epochs,
        ),
    }
    if cfg.json:
        Path(cfg.json).parent.mkdir(parents=True, exist_ok=True)
        write_json(Path(cfg.json), result)
    return result


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "cpu"
