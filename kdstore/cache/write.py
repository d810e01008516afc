"""`kdstore cache`: run the teacher once over a dataset and write a store.

The store is built in a staging directory beside --out and renamed into place only when its
manifest has been written, so --out holds either the previous complete store or the new one."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdstore.cache.add_views import add_views
from kdstore.cache.config import CacheConfig
from kdstore.cache.estimate import Estimate, estimate, real_sizes, show, with_teacher
from kdstore.cache.staging import STATE, Staging
from kdstore.data.augment import augmentation_for
from kdstore.data.beton import fingerprint_beton, write_beton
from kdstore.data.datasets import ImageDataset, ImageSplit, load_dataset
from kdstore.data.splits import holdout
from kdstore.errors import DiskError, KdstoreError
from kdstore.models.build import normalization
from kdstore.models.teachers import Teacher, load_teacher
from kdstore.options import differing, with_policy, write_json
from kdstore.passes.inference import (
    Forward,
    ModelInput,
    ScorePass,
    chunk_paths,
    clean_forward,
    column,
    keep_views,
    score_beton,
    stored_column,
    stored_outputs,
    teacher_input,
    views_forward,
)
from kdstore.runtime import distributed, interrupts
from kdstore.runtime.console import console, say
from kdstore.runtime.devices import resolve_device
from kdstore.runtime.files import free_mib
from kdstore.store.format import BETONS, H5_NAME, Split, Store, StoreAttrs, build_split, near_chance, write_teacher_h5
from kdstore.store.mixes import MixedViews, Mixing, PartnerSource, mixed_views
from kdstore.store.publish import check_out, claim, fresh_stage, publish, staging_dir
from kdstore.store.views import MIX_ARRAYS, STORED, Views, draw_params, storage_of
from kdstore.version import __version__

CHUNK_SAMPLES = 2048  # teacher outputs are flushed to disk about this often (whole batches)


def _stage_state(cfg: CacheConfig, meta: dict[str, Any], digest: str, dataset: ImageDataset) -> dict[str, Any]:
    """What a partial cache depends on; --resume continues only a cache started with the same: the
    options whose `resume` policy is `recorded` as given, those `resolved` as what they resolved to."""
    recorded = {name: getattr(cfg, name) for name in with_policy(CacheConfig, "resume", "recorded")}
    resolved = {
        "dataset": dataset.name,
        "train_size": len(dataset.train),
        "val_size": len(dataset.val),
        "teacher": meta,
        "checkpoint_sha256": digest,
        "kdstore_version": __version__,
    }
    return {**recorded, **resolved}


def _prepare_stage(staging: Staging, state: dict[str, Any], resume: bool) -> bool:
    """Create (or, with resume, reopen) the staging directory; True when resuming. A resume that
    cannot continue says in one line why it starts again."""
    stage = staging.root
    if resume:
        recorded = staging.state() if stage.is_dir() else None
        if recorded is not None:
            if recorded != state:
                raise KdstoreError(
                    f"--resume: the partial cache at {stage} was started with different "
                    f"{', '.join(differing(recorded, state))}; rerun without --resume"
                )
            return True
        why = "there is none" if not stage.exists() else "it holds no record of its options (an older kdstore's?)"
        say(f"--resume: no partial cache to continue at {stage} ({why}); starting from the beginning")
    fresh_stage(stage)
    write_json(staging.books / STATE, state)
    return False


@dataclass(kw_only=True)
class _Cache:
    """One cache as it runs: its options, process group, data, teacher and staging directory."""

    cfg: CacheConfig
    ctx: distributed.Context
    device: torch.device
    out: Path
    stage: Path
    dataset: ImageDataset
    teacher: Teacher
    image_size: int
    plan: str = ""  # --budget's plan, recorded in teacher.h5 (budget.record)
    image_bytes: float | None = None  # one image in a .beton, as the estimate measured it (its writers)

    @property
    def staging(self) -> Staging:
        return Staging(self.stage)

    def chunk_dir(self, pass_name: str, rank: int) -> Path:
        return self.staging.books / f"chunks-{pass_name}-r{rank}of{self.ctx.world}"

    def split(self, name: str) -> ImageSplit:
        return self.dataset.train if name == "train" else self.dataset.val


Inputs = tuple[ImageDataset, Teacher, int]  # the dataset, the teacher (on the host), the stored image size


def _inputs(cfg: CacheConfig) -> Inputs:
    """The dataset (its held-out part with --split-part holdout), the teacher (on the host) and
    the stored image size."""
    assert cfg.dataset is not None  # validate(): --dataset, or --extend (not here)
    dataset = load_dataset(cfg.dataset, Path(cfg.data_root) if cfg.data_root else None, cfg.image_size)
    image_size = int(dataset.train.get(0).shape[0])
    if cfg.topk >= dataset.num_classes:
        raise KdstoreError(f"--topk {cfg.topk} must be below the {dataset.num_classes} classes")
    teacher = load_teacher(cfg.teacher_spec, dataset.num_classes, image_size)
    if cfg.split_part == "holdout":
        if not teacher.split:
            raise KdstoreError(
                f"--split-part holdout: checkpoint {cfg.checkpoint} was not trained with --split, so nothing was held "
                "out"
            )
        dataset.train = holdout(dataset.train, teacher.split)
    return dataset, teacher, image_size


def _start(
    cfg: CacheConfig,
    ctx: distributed.Context,
    device: torch.device,
    out: Path,
    inputs: Inputs,
) -> _Cache:
    """The staging directory (reopened by --resume) for the dataset and teacher of `inputs`."""
    dataset, teacher, image_size = inputs
    stage = staging_dir(out)
    state = {**_stage_state(cfg, teacher.meta, teacher.checkpoint_sha256, dataset), "processes": ctx.world}
    distributed.agree(ctx, "the cache's inputs", json.dumps(state, sort_keys=True))
    if ctx.main and _prepare_stage(Staging(stage), state, cfg.resume):
        console.print(f"resuming the partial cache in {stage}")
    distributed.barrier(ctx)
    return _Cache(
        cfg=cfg, ctx=ctx, device=device, out=out, stage=stage, dataset=dataset, teacher=teacher, image_size=image_size
    )


def _write_betons(job: _Cache) -> None:
    """Both .beton files (main rank; kept from an earlier run of a resumed cache), written before
    the teacher touches the device, so FFCV's writer never forks a process that holds a device."""
    interrupts.phase("betons")
    for name in ("train", "val"):
        beton = job.stage / BETONS[name]
        if job.ctx.main and not job.staging.reusable(beton):
            tmp = job.stage / f".{beton.name}.tmp"
            with console.status(f"writing {beton.name} ({len(job.split(name))} images)"):
                write_beton(job.split(name), tmp, job.cfg.workers, job.image_bytes)
            os.replace(tmp, beton)
            job.staging.seal(beton)
    distributed.barrier(job.ctx)


def _passes(job: _Cache, inp: ModelInput) -> tuple[dict[str, tuple[str, Forward]], MixedViews | None]:
    """Passes over the images: each split's clean images, then (--views K) K augmented views of
    every training image, drawn up front so that every rank and a resumed pass see the same."""
    cfg, device = job.cfg, job.device
    clean = clean_forward(inp)
    passes = {"train": ("train", clean), "val": ("val", clean)}
    if not cfg.views:
        return passes, None
    augmentation = augmentation_for(job.image_size)
    params = draw_params(augmentation, len(job.dataset.train), cfg.views, job.image_size, cfg.views_seed)
    keep = keep_views(cfg.topk, cfg.sample, cfg.sample_tau, cfg.views_seed)
    source = PartnerSource(
        beton=job.stage / BETONS["train"], device=device, mean=inp.mean, std=inp.std, workers=cfg.workers
    )
    mixed = mixed_views(cfg.mix, cfg.mix_alpha, cfg.views_seed, params, augmentation, job.image_size, source)
    mixing = Mixing(mixed, device, "auto", mixed.partners) if mixed.mix else None
    passes["views"] = ("train", views_forward(inp, params, augmentation, keep, mixing))
    return passes, mixed


def _score(job: _Cache, passes: dict[str, tuple[str, Forward]]) -> dict[str, float]:
    """Every pass, each rank its shard, flushed in chunks; returns each pass's images/s."""
    cfg, ctx = job.cfg, job.ctx
    speed = {}
    for pass_name, (split_name, forward) in passes.items():
        lo, hi = distributed.shard(len(job.split(split_name)), cfg.batch_size, ctx.rank, ctx.world)
        interrupts.phase("views" if pass_name == "views" else "teacher")
        label = f"teacher on {split_name}" + (f" ({cfg.views} views)" if pass_name == "views" else "")
        job_pass = ScorePass(
            beton=job.stage / BETONS[split_name],
            batch_size=cfg.batch_size,
            workers=cfg.workers,
            label=label,
            progress=cfg.progress and ctx.main,
            chunk_dir=job.chunk_dir(pass_name, ctx.rank),
            positions=np.arange(lo, hi),
            post=stored_outputs(cfg.stored_dtype),
            chunk_samples=CHUNK_SAMPLES,
        )
        speed[pass_name] = score_beton(forward, job_pass)["images_per_s"] * ctx.world
        distributed.barrier(ctx)
    return speed


def _splits(job: _Cache, passes: list[str], mixed: MixedViews | None) -> dict[str, Split]:
    """The main rank joins the chunks every rank flushed, in rank order, one chunk at a time."""
    cfg = job.cfg
    chunks = {p: [path for r in range(job.ctx.world) for path in chunk_paths(job.chunk_dir(p, r))] for p in passes}
    splits = {
        name: build_split(
            stored_column(chunks[name], "logits"),
            column(chunks[name], "labels"),
            column(chunks[name], "sample_id"),
            column(chunks[name], "confidence"),
            column(chunks[name], "correct"),
            with_orders=name == "train",
        )
        for name in ("train", "val")
    }
    if mixed is not None:
        if not np.array_equal(column(chunks["views"], "sample_id"), splits["train"].sample_id):
            raise KdstoreError("internal error: the views pass visited the training images in another order")
        stored: dict[str, Any] = {
            k: stored_column(chunks["views"], k) for k in STORED[storage_of(cfg.topk, cfg.sample)]
        }
        mix: dict[str, Any] = {k: getattr(mixed, k) for k in ("mix", "mix_alpha", *MIX_ARRAYS)}
        splits["train"].views = Views(
            augmentation=mixed.augmentation,
            seed=cfg.views_seed,
            params=mixed.params,
            sample_tau=cfg.sample_tau if cfg.sample else 0.0,
            **mix,
            **stored,
        )
    return splits


def _attrs(job: _Cache, splits: dict[str, Split], fingerprint: str) -> StoreAttrs:
    cfg, meta, split = job.cfg, job.teacher.meta, job.teacher.split
    mean_t, std_t = normalization(job.teacher.model)
    return StoreAttrs(
        kdstore_version=__version__,
        teacher=meta["model"],
        teacher_stem=meta["stem"],
        checkpoint_sha256=job.teacher.checkpoint_sha256,
        pretrained=bool(cfg.pretrained or cfg.pretrained_file),
        input_size=int(meta["input_size"]),
        image_size=job.image_size,
        dataset=job.dataset.name,
        num_classes=job.dataset.num_classes,
        class_names=list(job.dataset.class_names),
        dataset_fingerprint=fingerprint,
        teacher_train_acc=float(splits["train"].correct.mean()),
        teacher_val_acc=float(splits["val"].correct.mean()),
        normalize_mean=list(mean_t),
        normalize_std=list(std_t),
        split_part=cfg.split_part,
        split_fraction=float(split["fraction"]) if split else 0.0,
        split_seed=int(split["seed"]) if split else -1,
        split_members_sha256=split["members_sha256"] if split else "",
    )


def _write_h5(job: _Cache, splits: dict[str, Split], speed: dict[str, float]) -> None:
    """teacher.h5 in the staging directory (main rank), sealed, with what the manifest will record
    of the pass: a cache killed from here on resumes by publishing it."""
    stage = job.stage
    with console.status("fingerprinting the images"):
        parts = [fingerprint_beton(stage / BETONS[name]) for name in ("train", "val")]
    fingerprint = hashlib.sha256("".join(parts).encode()).hexdigest()
    attrs = _attrs(job, splits, fingerprint)
    extra = {"budget_plan": job.plan} if job.plan else {}
    with console.status(f"writing {H5_NAME}"):
        write_teacher_h5(stage / H5_NAME, splits, {**attrs.as_dict(), **extra}, job.cfg.stored_dtype)
    job.staging.seal(stage / H5_NAME)
    job.staging.finish({"dataset_fingerprint": fingerprint, "teacher_images_per_s": speed["train"]})


def _publish(job: _Cache, finished: dict[str, Any]) -> Store:
    """The manifest, every check, and the rename into place (main rank; the books and the teacher
    outputs' chunks go just before the rename)."""
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return publish(job.stage, job.out, {**finished, "created": created})


def _estimate(cfg: CacheConfig, device: torch.device, inputs: Inputs, setup_s: float, timed: bool) -> Estimate:
    """The cache's estimate (estimate.py), printed; a cache that cannot fit the disk is refused.
    `timed`: with the teacher timed here (a cache on CUDA times it once its .beton files are
    written, so that FFCV's writer never forks a process that holds CUDA)."""
    interrupts.phase("estimate")
    dataset, teacher, image_size = inputs
    est = estimate(cfg, dataset, image_size, setup_s, teacher if timed else None, device)
    show(
        est,
        f"{'dry run (nothing written)' if cfg.dry_run else 'estimate'}: {dataset.name} "
        f"({len(dataset.train)}+{len(dataset.val)} images) through {teacher.meta['model']} on {device.type} "
        f"into {cfg.out_path}",
    )
    est.check_fits(cfg.out_path)
    return est


def dry_run(cfg: CacheConfig) -> Estimate:
    """`cache --dry-run`: the estimate of the cache `cfg` asks for, with the teacher timed on its
    device, and nothing written; refused in one line when it cannot fit the disk."""
    check_out(cfg.out_path, cfg.overwrite, cfg.read_paths)
    device = resolve_device(cfg.device)
    t0 = time.perf_counter()
    inputs = _inputs(cfg)
    return _estimate(cfg, device, inputs, time.perf_counter() - t0, timed=True)


def run(cfg: CacheConfig) -> Path:
    """Write the store; returns its path.

    The store is built in OUT's hidden sibling `.NAME.partial`; a cache killed part-way leaves it
    there, and `resume=True` continues from the last flushed chunk of teacher outputs.
    """
    cfg.validate()
    if cfg.extend:
        return add_views(cfg)
    if not cfg.budget:
        cfg = dataclasses.replace(cfg, logits_dtype=cfg.stored_dtype)
    if cfg.dry_run:
        dry_run(cfg)
        return cfg.out_path
    out = claim(cfg.out_path, cfg.overwrite, cfg.read_paths)
    if cfg.resume and staging_dir(out).is_dir():
        Staging(staging_dir(out)).state()  # a record that cannot be read is refused before any work
    # Under torchrun, rank 0 writes the .beton files and the store; every rank scores a shard.
    ctx, device = distributed.init(resolve_device(cfg.device))
    if cfg.budget and ctx.world > 1:
        raise KdstoreError(
            "--budget plans in one process: run `kdstore cache --budget ... --dry-run` and give the storage it chose "
            "(--logits-dtype, --topk or --sample, --views) to the cache under torchrun"
        )
    t_start = time.perf_counter()
    inputs = _inputs(cfg)
    est = _estimate(cfg, device, inputs, time.perf_counter() - t_start, device.type != "cuda") if ctx.main else None
    cfg = dataclasses.replace(cfg, **est.choices) if est is not None else cfg
    job = _start(cfg, ctx, device, out, inputs)
    _keep_plan(job, est.plan if est is not None else "")
    job.image_bytes = est.image_bytes if est is not None else None
    kept = f"the partial cache is kept in {job.stage}"
    try:
        store, est = _build(job, est)
    except KeyboardInterrupt:
        raise KdstoreError(f"interrupted; {kept}: rerun with --resume to continue") from None
    except DiskError as e:
        raise DiskError(f"{e}; {kept}: free space there and rerun with --resume") from None
    except OSError as e:
        where = e.filename or job.stage
        raise DiskError(
            f"{where}: could not be written ({e.strerror or e}; {free_mib(Path(where)):.1f} MiB free there); {kept}: "
            "rerun with --resume once it can be"
        ) from None
    except BaseException:
        if ctx.main:
            shutil.rmtree(job.stage, ignore_errors=True)
        raise
    if store is not None:
        _report(out, store, est, time.perf_counter() - t_start)
    return out


def _build(job: _Cache, est: Estimate | None) -> tuple[Store | None, Estimate | None]:
    """The passes (unless a resumed cache's teacher.h5 is written and intact), teacher.h5, and the
    store published; returns it (None on ranks other than the main one) and the estimate (timed
    here on CUDA)."""
    finished = _finished(job)
    if finished is None:
        _write_betons(job)
        interrupts.check()
        inp = teacher_input(job.teacher, job.device, job.cfg.amp)
        if est is not None and "teacher" not in est.seconds:  # CUDA: timed now that the .beton files are written
            est = _timed_now(job, est, inp)
        passes, mixed = _passes(job, inp)
        speed = _score(job, passes)
        interrupts.phase("publish")  # teacher.h5, the manifest, the rename
        if job.ctx.main:
            _write_h5(job, _splits(job, list(passes), mixed), speed)
            finished = job.staging.finished()
    if not job.ctx.main or finished is None:
        return None, est
    interrupts.check()  # a signal swallowed anywhere before: the partial is kept, not published
    return _publish(job, finished), est


def _finished(job: _Cache) -> dict[str, Any] | None:
    """A resumed cache whose teacher.h5 was written (and is intact): what its manifest records
    (on ranks other than the main one, {}), so that every rank skips the passes; else None."""
    finished = job.staging.finished() if job.ctx.main and job.staging.reusable(job.stage / H5_NAME) else None
    flag = torch.tensor([float(finished is not None)], device=job.device)
    if not distributed.all_reduce_sum(flag, job.ctx).item():
        return None
    if job.ctx.main:
        say(f"--resume: {H5_NAME} in {job.stage} is written and intact; publishing it")
    return finished if finished is not None else {}


def _keep_plan(job: _Cache, plan: str) -> None:
    """--budget's plan, kept in the staging directory: a resumed cache whose plan came out
    otherwise (its teacher outputs flushed in another storage) is refused."""
    job.plan = plan
    if not plan:
        return
    kept = job.staging.books / "budget-plan.json"
    if kept.is_file() and json.loads(kept.read_text())["chosen"] != json.loads(plan)["chosen"]:
        raise KdstoreError(
            f"--resume: --budget chose another storage than the partial cache at {job.stage} was flushed in; "
            "rerun without --resume"
        )
    kept.write_text(plan)


def _timed_now(job: _Cache, est: Estimate, inp: ModelInput) -> Estimate:
    """A cache on CUDA: the teacher timed (and --budget planned) on the .beton files just written."""
    est = with_teacher(est, inp, job.stage / BETONS["train"], job.cfg, job.dataset, job.image_size)
    job.cfg = dataclasses.replace(job.cfg, **est.choices)
    _keep_plan(job, est.plan)
    est.check_fits(job.out)
    say(
        f"estimate: the teacher's passes {est.seconds['teacher'] + est.seconds.get('views', 0):,.1f} s, "
        f"the whole cache {est.wall:,.1f} s ({est.teacher_images_per_s:,.0f} img/s)"
    )
    return est


def _report(out: Path, store: Store, est: Estimate | None, seconds: float) -> None:
    """The real figures beside the estimate, then the store's one line."""
    size = sum(p.stat().st_size for p in out.iterdir())
    if est is not None:
        show(est, f"store {out}: estimated and real", {**real_sizes(out), "seconds": seconds})
    attrs = StoreAttrs.of(store.attrs)
    warning = near_chance(store.attrs)
    if warning:
        console.print(f"[bold yellow]warning:[/] {warning}", soft_wrap=True)
    console.print(
        f"[bold]store[/] {out}: teacher {attrs.teacher} train acc {attrs.teacher_train_acc:.2%}, val acc "
        f"{attrs.teacher_val_acc:.2%}; "
        f"{len(store.train)}+{len(store.val)} images, {size / 2**20:.1f} MiB, {seconds:.1f} s",
        soft_wrap=True,
    )
