"""`kdstore` commands. Each one parses its options into a config and calls the library."""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Any, Callable

import click

from kdstore.cache import write as cache_lib
from kdstore.cache.config import CacheConfig
from kdstore.cli.render import render_bench, render_remote, render_results, render_store
from kdstore.demo import digits as demo_lib
from kdstore.errors import KdstoreError
from kdstore.options import click_options, fields_of, from_dict, given, with_policy
from kdstore.report import sweep as sweep_lib
from kdstore.report import tables as report_lib
from kdstore.report.sweep import SweepConfig
from kdstore.runtime import allocator, interrupts
from kdstore.store import merge as merge_lib
from kdstore.store import remote as remote_lib
from kdstore.store.format import Store
from kdstore.store.merge import MergeConfig
from kdstore.store.remote import PullConfig, PushConfig
from kdstore.store.verification import verify as verify_store
from kdstore.train import bench as bench_lib
from kdstore.train import eval_checkpoint as eval_lib
from kdstore.train import loop as train_lib
from kdstore.train import teacher as teacher_lib
from kdstore.train.bench import BenchConfig
from kdstore.train.config import TrainConfig
from kdstore.train.eval_checkpoint import EvalConfig
from kdstore.train.loop import RUN_RECORD
from kdstore.train.teacher import TeacherConfig


def _friendly(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a KdstoreError (bad input) or an OSError (the environment) into one line on stderr and exit status 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except KdstoreError as e:
            click.echo(f"error: {e}", err=True)
            _exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            _exit(130)
        except (
            OSError
        ) as e:  # the environment: a full disk, a read-only or missing directory, a file where a directory goes
            where = f"{e.filename}: " if e.filename else ""
            click.echo(f"error: {where}{e.strerror or e}", err=True)
            _exit(2)

    return wrapper


def _exit(code: int) -> None:
    """Exit with `code`; a command stopped by a signal exits at once (interrupts.exit_now)."""
    if interrupts.interrupted():
        interrupts.exit_now(code)
    sys.exit(code)


CONFIG_MAX_BYTES = 1 << 20  # a run's config.json is a few KiB


def _train_config(values: dict[str, Any], config_file: str | None = None) -> TrainConfig:
    """A TrainConfig from the command line; with --config, a run's config.json (or any JSON file of
    train's options) gives every option the command line does not set. An unknown or misspelled
    key, or a value of the wrong type, is a one-line error."""
    if config_file is None:
        return TrainConfig(**values)
    try:
        with open(config_file, "rb") as f:
            text = f.read(CONFIG_MAX_BYTES + 1)  # bounded: /dev/zero or a huge file is refused, not read
        if len(text) > CONFIG_MAX_BYTES:
            raise KdstoreError(
                f"--config {config_file} is larger than {CONFIG_MAX_BYTES // 2**20} MiB: not a run's config.json"
            )
        saved = json.loads(text.decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise KdstoreError(f"--config {config_file} cannot be read ({type(e).__name__})") from None
    if not isinstance(saved, dict):
        raise KdstoreError(f"--config {config_file} is not a JSON object of train's options")
    explicit = given(values)
    from_file = from_dict(TrainConfig, saved, ignore=RUN_RECORD, where=f"--config {config_file}")
    return TrainConfig(
        **{**fields_of(TrainConfig, vars(from_file)), **{k: v for k, v in values.items() if k in explicit}}
    )


@click.group()
@click.version_option(package_name="kdstore")
def cli() -> None:
    """Offline knowledge distillation: cache a teacher once, train students from the store."""


@cli.command()
@click_options(CacheConfig)
@_friendly
def cache(**kw: Any) -> None:
    """Run the teacher once and write a store (FFCV images + teacher.h5)."""

    cache_lib.run(CacheConfig(**kw))


@cli.command()
@click.option(
    "--config", "config_file", type=click.Path(), help="A run's config.json: rerun it (options given here override it)."
)
@click_options(TrainConfig)
@_friendly
def train(config_file: str | None, **kw: Any) -> None:
    """Train a student from a store (no teacher is loaded)."""

    train_lib.run(_train_config(kw, config_file))


@cli.command()
@click_options(TeacherConfig, skip={"training"})
@click_options(TrainConfig, only=with_policy(TrainConfig, "teacher", True))
@_friendly
def teacher(**kw: Any) -> None:
    """Train (or fine-tune with --pretrained) a teacher; its checkpoint.pt feeds `kdstore cache`."""

    own = {k: kw.pop(k) for k in list(kw) if k in fields_of(TeacherConfig, kw)}
    teacher_lib.run(TeacherConfig(**own, training=TrainConfig(**kw)))


@cli.command("eval")
@click.argument("checkpoint", type=click.Path())
@click_options(EvalConfig, skip={"checkpoint"})
@_friendly
def eval_(checkpoint: str, **kw: Any) -> None:
    """Accuracy and loss of a teacher or student checkpoint on --dataset or a --store's images
    (optionally its logits, --logits FILE.npz)."""

    eval_lib.run(EvalConfig(checkpoint=checkpoint, **kw))


@cli.command()
@click.argument("store", type=click.Path())
@_friendly
def inspect(store: str) -> None:
    """Summarise STORE: dataset, teacher (with a warning when its accuracy is near chance),
    sizes, views, confidence histogram. STORE may be a URL (s3://, gs://, hf://, memory://, ...):
    its MANIFEST and teacher.h5's attributes are read without downloading the images."""

    if "://" in store:
        render_remote(remote_lib.describe(store))
    else:
        render_store(Store.open(store))


@cli.command()
@click.argument("store", type=click.Path())
@click.argument("url")
@click_options(PushConfig, skip={"store", "url"})
@_friendly
def push(store: str, url: str, **kw: Any) -> None:
    """Send STORE to URL (a path, file://, memory://, s3://, gs://, az://, hf://): verified first,
    its MANIFEST.json last; a stopped push resumes by itself."""

    remote_lib.push(PushConfig(store=store, url=url, **kw))


@cli.command()
@click.argument("url")
@click.argument("out", type=click.Path())
@click_options(PullConfig, skip={"url", "out"})
@_friendly
def pull(url: str, out: str, **kw: Any) -> None:
    """Fetch the store at URL into OUT: every file checked against the MANIFEST's sha256 as it
    lands, kept across a stopped pull, published atomically; --only teacher (or train,val) fetches
    those files when OUT holds the others."""

    remote_lib.pull(PullConfig(url=url, out=out, **kw))


@cli.command()
@click.argument("store", type=click.Path())
@_friendly
def verify(store: str) -> None:
    """Check STORE fully: the sha256 of every file against MANIFEST.json, the fletcher32
    checksums of teacher.h5's chunked arrays, every check an open runs (schema, shapes, .beton
    headers and image tables), and every large array read through (finite logits, class ids in
    range). Exit 1 with one line per problem."""

    problems = verify_store(store)
    for line in problems:
        click.echo(f"mismatch: {line}", err=True)
    if problems:
        sys.exit(1)
    click.echo(f"{store}: all files match their recorded sha256")


@cli.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path())
@click.option(
    "--out",
    type=click.Path(),
    help="Write results.md, results.csv, results.json and the figures (convergence.png, "
    "pacing.png, lambda.png, curriculum.png: each where the runs allow) here.",
)
@click.option("--allow-mixed", is_flag=True, help="Tabulate runs from different stores together.")
@click.option(
    "--baseline",
    default=report_lib.BASELINE,
    show_default=True,
    help="The arm every other is compared with, paired by seed (e.g. kd).",
)
@_friendly
def report(runs: tuple[str, ...], out: str | None, allow_mixed: bool, baseline: str) -> None:
    """Table of RUNS (run or sweep directories): per arm, mean ± std over seeds and the paired
    difference to --baseline; with --out, also the files and figures."""

    found = report_lib.find_runs(list(runs))
    summary = report_lib.summarize(found, allow_mixed, baseline)
    if out:
        report_lib.write_report(summary, out, found)
    render_results(summary)
    if out:
        click.echo(
            f"wrote {out} ({', '.join(['results.md', 'results.csv', 'results.json', *summary.get('figures', [])])})",
            err=True,
        )


@cli.command()
@click_options(SweepConfig, skip={"base"})
@click_options(TrainConfig, skip=set(with_policy(TrainConfig, "sweep", "arm", "off")))
@_friendly
def sweep(**kw: Any) -> None:
    """Every variant x pacing x scorer x seed from one store, each in OUT/ARM-sSEED, then OUT/report.
    Rerunning it keeps finished runs made with the same options and trains the rest."""

    own = {k: kw.pop(k) for k in list(kw) if k in fields_of(SweepConfig, kw)}
    summary = sweep_lib.run(SweepConfig(**own, base=TrainConfig(**kw)))
    render_results(summary)
    click.echo(
        f"wrote {Path(kw['out'])} (runs) and {Path(kw['out']) / 'report'} "
        f"({', '.join(['results.md', *summary.get('figures', [])])}, ...)",
        err=True,
    )


@cli.command()
@click.argument("stores", nargs=-1, required=True, type=click.Path())
@click_options(MergeConfig, skip={"stores"})
@_friendly
def merge(stores: tuple[str, ...], **kw: Any) -> None:
    """Combine stores of the same images from several teachers: mean logits as the KD target."""

    merge_lib.run(MergeConfig(stores=tuple(stores), **kw))


@cli.command()
@click_options(BenchConfig)
@_friendly
def bench(**kw: Any) -> None:
    """Speed of offline KD against online KD and unguided training, on the same batches."""

    render_bench(bench_lib.run(BenchConfig(**kw)))


@cli.command()
@click.option(
    "--out",
    default="demo-out",
    show_default=True,
    type=click.Path(),
    help="Directory for the teacher, the store and the runs.",
)
@click.option("--no-progress", is_flag=True, help="Turn off progress bars.")
@_friendly
def demo(out: str, no_progress: bool) -> None:
    """Teacher, cache and all six variants on the embedded digits data; prints the results."""

    render_results(demo_lib.run(out, progress=not no_progress))
    click.echo(
        f"wrote {out} (the teacher, the store, and the runs with their report in {Path(out) / 'runs' / 'report'})",
        err=True,
    )


def _terminate_like_ctrl_c() -> None:
    """SIGTERM (from `timeout`, a scheduler, `kill`) is handled as Ctrl-C is: a cache says in one
    line what it kept for --resume, and every command exits non-zero without a traceback."""

    interrupts.install()  # recorded too: an interrupt swallowed by a ctypes callback is raised at the next check


def _start() -> None:
    """What every entry point does first: signals handled, the C allocator set for long runs."""
    _terminate_like_ctrl_c()
    allocator.tune()  # fewer page faults per step on the CPU (runtime/allocator.py)


def main() -> None:
    _start()
    cli(prog_name="kdstore")


def distill_cache() -> None:
    _start()
    cache(prog_name="distill-cache")


def distill_train() -> None:
    _start()
    train(prog_name="distill-train")
