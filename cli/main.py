"""`kdstore` commands. Each one parses its options into a config and calls the library."""
from __future__ import annotations

import functools
import sys
from typing import Any, Callable

import click

from kdstore.errors import KdstoreError

DEVICES = click.Choice(["auto", "cpu", "cuda"])


def _friendly(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a KdstoreError (bad input) or an OSError (the environment) into one line on stderr and exit status 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except KdstoreError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
        except OSError as e:  # the environment: a full disk, a read-only or missing directory, a file where a directory goes
            where = f"{e.filename}: " if e.filename else ""
            click.echo(f"error: {where}{e.strerror or e}", err=True)
            sys.exit(2)

    return wrapper


def _train_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Options shared by `train` and `teacher` (one loop serves both)."""
    options = [
        click.option("--out", required=True, type=click.Path(), help="Run directory (config.json, metrics.jsonl, summary.json, checkpoint.pt)."),
        click.option("--stem", type=click.Choice(["auto", "cifar", "imagenet"]), default="auto", show_default=True, help="Stem of timm ResNets on small images; auto = cifar at 64 px and below."),
        click.option("--pretrained", is_flag=True, help="Start from timm's pretrained weights."),
        click.option("--epochs", type=int, default=30, show_default=True),
        click.option("--batch-size", type=int, default=128, show_default=True),
        click.option("--lr", type=float, default=0.05, show_default=True, help="Peak SGD learning rate (cosine to 0)."),
        click.option("--weight-decay", type=float, default=5e-4, show_default=True),
        click.option("--label-smoothing", type=float, default=0.0, show_default=True),
        click.option("--seed", type=int, default=0, show_default=True),
        click.option("--workers", type=int, default=2, show_default=True, help="FFCV decoding threads."),
        click.option("--device", type=DEVICES, default="auto", show_default=True),
        click.option("--no-augment", is_flag=True, help="Disable random crop + flip."),
        click.option("--overwrite", is_flag=True, help="Replace a finished run in --out."),
        click.option("--resume", is_flag=True, help="Continue from --out/checkpoint.pt (saved after every epoch)."),
        click.option("--no-progress", is_flag=True, help="No progress bars."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _schedule_options(many: bool) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Pacing and scorer options of `train` (one value) and `sweep` (comma-separated lists)."""
    from kdstore.pacing import PACINGS
    from kdstore.schedule import SCORERS

    listed = " (comma-separated: each is a sweep arm)" if many else ""
    options = [
        click.option("--pacing", default="none", show_default=True,
                     help=f"{' | '.join(PACINGS)}: draw each batch from the easiest g(t) of the order{listed}."),
        click.option("--pacing-a", type=float, default=0.8, show_default=True, help="Fraction of training after which all data is used."),
        click.option("--pacing-b", type=float, default=0.2, show_default=True, help="Fraction of the order used at the start."),
        click.option("--pacing-growth", type=float, default=2.0, show_default=True, help="fixed-exp: growth factor per stair."),
        click.option("--pacing-step-length", type=int, help="fixed-exp: steps per stair (default: reach all data at a)."),
        click.option("--scorer", default="teacher", show_default=True,
                     help=f"{' | '.join(SCORERS)}: who scores the curriculum (student: its own snapshots){listed}."),
        click.option("--rescore-every", type=int, default=1, show_default=True, help="scorer student: rebuild the curriculum every E epochs."),
        click.option("--views", type=str if many else click.Choice(["auto", "replay", "clean"]), default="auto", show_default=True,
                     help=f"replay: augment with the store's views and distil from their logits; clean: the clean-image logits; auto: replay when the store has views{listed}."),
    ]

    def apply(fn: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed(options):
            fn = option(fn)
        return fn

    return apply


def _train_config(**kw: Any):
    from kdstore.train import TrainConfig

    kw["augment"] = not kw.pop("no_augment")
    kw["progress"] = not kw.pop("no_progress")
    return TrainConfig(**kw)


@click.group()
@click.version_option(package_name="kdstore")
def cli() -> None:
    """Offline knowledge distillation: cache a teacher once, train students from the store."""


@cli.command()
@click.option("--dataset", required=True, help="digits, cifar10, cifar100 or imagefolder:PATH.")
@click.option("--out", required=True, type=click.Path(), help="Store directory to create.")
@click.option("--teacher", help="timm model name (default: the checkpoint's model).")
@click.option("--checkpoint", type=click.Path(), help="Teacher weights saved by kdstore (or a plain state dict).")
@click.option("--pretrained", is_flag=True, help="Use timm's pretrained weights for the teacher.")
@click.option("--pretrained-file", type=click.Path(), help="A local timm/torchvision weights file for --pretrained.")
@click.option("--stem", type=click.Choice(["auto", "cifar", "imagenet"]), help="Stem of a timm ResNet teacher (default: checkpoint's, else auto).")
@click.option("--input-size", type=int, help="Teacher input size in pixels (images are resized); default: native.")
@click.option("--image-size", type=int, help="Size images are stored at (imagefolder); default: the first image's.")
@click.option("--batch-size", type=int, default=256, show_default=True)
@click.option("--workers", type=int, default=2, show_default=True)
@click.option("--device", type=DEVICES, default="auto", show_default=True)
@click.option("--data-root", type=click.Path(), help="Where torchvision datasets live (default ~/.cache/kdstore/data).")
@click.option("--logits-dtype", type=click.Choice(["float16", "float32"]), default="float16", show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace an existing store at --out (only once the new one is complete).")
@click.option("--resume", is_flag=True, help="Continue a killed cache (same options) from its last flushed chunk.")
@click.option("--split-part", type=click.Choice(["all", "holdout"]), default="all", show_default=True,
              help="holdout: score only the training samples the teacher's --split held out.")
@click.option("--views", type=int, default=0, show_default=True, help="Also store K augmented views per training image with the teacher's logits on each.")
@click.option("--topk", type=int, default=0, show_default=True, help="Keep only the k largest logits of each view (0: all).")
@click.option("--views-seed", type=int, default=0, show_default=True, help="Seed of the views' augmentation parameters.")
@click.option("--no-progress", is_flag=True)
@_friendly
def cache(no_progress: bool, **kw: Any) -> None:
    """Run the teacher once and write a store (FFCV images + teacher.h5)."""
    from kdstore.cache import CacheConfig, run

    run(CacheConfig(progress=not no_progress, **kw))


@cli.command()
@click.option("--store", required=True, type=click.Path(), help="Store written by `kdstore cache`.")
@click.option("--variant", default="kd", show_default=True, help="unguided, kd, kd-cl, kd-icl (kd-cl'), kd-cl-sr, kd-icl-sr (kd-cl'-sr), random-cl.")
@click.option("--student", default="cifar_resnet8", show_default=True, help="timm model name.")
@click.option("--tau", type=float, default=4.0, show_default=True, help="KD temperature.")
@click.option("--lam", type=float, default=0.9, show_default=True, help="KD weight of fixed-lambda variants.")
@click.option("--teacher-rows", type=click.Choice(["auto", "device", "mapped"]), default="auto", show_default=True,
              help="Where teacher rows are gathered: device (the table uploaded once), mapped (from the store's memory map); "
                   "auto: device on CUDA when the table fits a quarter of free memory, else mapped. Results are identical.")
@click.option("--verify", is_flag=True, help="First hash every store file against its manifest, as `kdstore verify` does "
              "(an open always checks teacher.h5's sha256; this also finds damaged .beton pixels).")
@_schedule_options(many=False)
@_train_options
@_friendly
def train(**kw: Any) -> None:
    """Train a student from a store (no teacher is loaded)."""
    from kdstore.train import run

    run(_train_config(**kw))


@cli.command()
@click.option("--model", required=True, help="timm model name of the teacher.")
@click.option("--dataset", required=True, help="digits, cifar10, cifar100 or imagefolder:PATH.")
@click.option("--data-root", type=click.Path())
@click.option("--image-size", type=int, help="Size images are stored at (imagefolder).")
@click.option("--input-size", type=int, help="Train at this size (e.g. 224 for an ImageNet-pretrained model); default native.")
@click.option("--pretrained-file", type=click.Path(), help="Local timm/torchvision weights file (implies --pretrained).")
@click.option("--head-lr", type=float, help="Learning rate of the new classifier head (default: --lr).")
@click.option("--freeze-epochs", type=int, default=0, show_default=True, help="Train only the head for this many first epochs.")
@click.option("--no-amp", is_flag=True, help="No mixed precision on CUDA.")
@click.option("--split", type=float, help="Train on this seeded, class-stratified fraction of the training set (e.g. 0.6).")
@click.option("--split-seed", type=int, default=0, show_default=True)
@_train_options
@_friendly
def teacher(model: str, dataset: str, data_root: str | None, image_size: int | None, split: float | None, split_seed: int,
            no_amp: bool, **kw: Any) -> None:
    """Train (or fine-tune with --pretrained) a teacher; its checkpoint.pt feeds `kdstore cache`."""
    from kdstore.teacher import run

    run(_train_config(student=model, variant="unguided", amp=not no_amp, **kw), dataset, data_root, image_size, split, split_seed)


@cli.command()
@click.argument("store", type=click.Path())
@_friendly
def inspect(store: str) -> None:
    """Summarise a store: dataset, teacher, sizes, accuracy, confidence histogram."""
    from cli.render import render_store

    from kdstore.store import Store

    render_store(Store.open(store))


@cli.command()
@click.argument("store", type=click.Path())
@_friendly
def verify(store: str) -> None:
    """Recompute the sha256 of every store file against its manifest."""
    from kdstore.store import verify as verify_store

    problems = verify_store(store)
    for line in problems:
        click.echo(f"mismatch: {line}", err=True)
    if problems:
        sys.exit(1)
    click.echo(f"{store}: all files match their recorded sha256")


@cli.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path())
@click.option("--out", type=click.Path(), help="Write results.md, results.csv and results.json here.")
@click.option("--allow-mixed", is_flag=True, help="Tabulate runs from different stores together.")
@click.option("--baseline", default="unguided", show_default=True, help="The arm every other is compared with, paired by seed (e.g. kd).")
@_friendly
def report(runs: tuple[str, ...], out: str | None, allow_mixed: bool, baseline: str) -> None:
    """Table of runs (or sweep directories): per arm, mean ± std over seeds."""
    from cli.render import render_results

    from kdstore import report as rep

    found = rep.find_runs(list(runs))
    summary = rep.summarize(found, allow_mixed, baseline)
    if out:
        rep.write_report(summary, out, found)
    render_results(summary)


@cli.command()
@click.option("--store", required=True, type=click.Path(), help="Store written by `kdstore cache`.")
@click.option("--student", default="cifar_resnet8", show_default=True, help="timm model name.")
@click.option("--variants", default="all", show_default=True, help="'all', 'paper' (the six) or a comma-separated list.")
@click.option("--seeds", default="0,1,2", show_default=True, help="Comma-separated seeds.")
@click.option("--tau", type=float, default=4.0, show_default=True)
@click.option("--lam", type=float, default=0.9, show_default=True)
@_schedule_options(many=True)
@_train_options
@_friendly
def sweep(variants: str, seeds: str, out: str, pacing: str, scorer: str, views: str, **kw: Any) -> None:
    """Every variant x pacing x scorer x seed from one store (resumable), then OUT/report."""
    from cli.render import render_results

    from kdstore import sweep as sweep_lib

    base = _train_config(out=out, **kw)
    render_results(sweep_lib.run(base, sweep_lib.parse_variants(variants), sweep_lib.parse_seeds(seeds), out,
                                 sweep_lib.parse_pacings(pacing), sweep_lib.parse_scorers(scorer), sweep_lib.parse_views(views)))


@cli.command()
@click.argument("stores", nargs=-1, required=True, type=click.Path())
@click.option("--out", required=True, type=click.Path(), help="The merged store to create.")
@click.option("--confidence", default="mean", show_default=True, help="Curriculum from the mean confidence, or from store N's (0, 1, ...).")
@click.option("--logits-dtype", type=click.Choice(["float16", "float32"]), default="float16", show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace an existing store at --out (only once the new one is complete).")
@_friendly
def merge(stores: tuple[str, ...], out: str, confidence: str, logits_dtype: str, overwrite: bool) -> None:
    """Combine stores of the same images from several teachers: mean logits as the KD target."""
    from kdstore.merge import run

    run(list(stores), out, confidence, logits_dtype, overwrite)


@cli.command()
@click.option("--store", required=True, type=click.Path(), help="Store written by `kdstore cache`.")
@click.option("--teacher", help="timm name of the teacher (default: the store's).")
@click.option("--checkpoint", type=click.Path(), help="Teacher weights (for the online-KD mode).")
@click.option("--input-size", type=int, help="Teacher input size (default: the store's).")
@click.option("--stem", type=click.Choice(["auto", "cifar", "imagenet"]))
@click.option("--student", default="cifar_resnet8", show_default=True)
@click.option("--batch-size", type=int, default=128, show_default=True)
@click.option("--steps", type=int, default=20, show_default=True, help="Timed steps per mode.")
@click.option("--warmup", type=int, default=3, show_default=True, help="Untimed steps per mode.")
@click.option("--block", type=int, default=5, show_default=True, help="Steps of each mode run alone, for its data wait and memory.")
@click.option("--workers", type=int, default=2, show_default=True)
@click.option("--device", type=DEVICES, default="auto", show_default=True)
@click.option("--sweep-epochs", type=int, default=30, show_default=True, help="Epochs per run in the sweep estimate.")
@click.option("--json", "json_path", type=click.Path(), help="Write every figure as JSON here.")
@_friendly
def bench(json_path: str | None, **kw: Any) -> None:
    """Speed of offline KD against online KD and unguided training, on the same batches."""
    from cli.render import render_bench

    from kdstore.bench import BenchConfig, run

    render_bench(run(BenchConfig(json=json_path, **kw)))


@cli.command()
@click.option("--out", default="demo-out", show_default=True, type=click.Path())
@click.option("--no-progress", is_flag=True)
@_friendly
def demo(out: str, no_progress: bool) -> None:
    """Teacher, cache and all six variants on the embedded digits data; prints the results."""
    from cli.render import render_results

    from kdstore import demo as demo_lib

    render_results(demo_lib.run(out, progress=not no_progress))


def main() -> None:
    cli(prog_name="kdstore")


def distill_cache() -> None:
    cache(prog_name="distill-cache")


def distill_train() -> None:
    train(prog_name="distill-train")
