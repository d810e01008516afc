"""What a run keeps in its directory and reads back: metrics.jsonl and the per-epoch checkpoint
(save_epoch), a student scorer's orders, summary.json, and the checkpoint `--resume` restores."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from kdstore.errors import KdstoreError
from kdstore.method.orderings import Scores
from kdstore.models.checkpoints import load_checkpoint, save_checkpoint
from kdstore.options import PROVENANCE_KEYS, differing, with_policy, write_json
from kdstore.runtime.console import say
from kdstore.runtime.files import writing
from kdstore.train.build import Run
from kdstore.train.config import TrainConfig


def open_run(run: Run) -> int:
    """A run's directory made ready (main rank): the checkpoint restored under --resume, then
    config.json and metrics.jsonl (the history so far) written. Returns the epoch to start from."""
    start = 0
    if run.cfg.resume:
        start, run.history = restore(run.out / "checkpoint.pt", run)
    if run.ctx.main:
        run.out.mkdir(parents=True, exist_ok=True)
        (run.out / STOPPED).unlink(missing_ok=True)
        with writing(run.out / "config.json"):
            write_json(run.out / "config.json", run.config)
        with writing(run.out / "metrics.jsonl"):
            (run.out / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in run.history))
    return start


STOPPED = "stopped.json"  # a run stopped because its loss diverged: when, and its last epoch's row


def diverged(run: Run, row: dict[str, Any]) -> str | None:
    """Why the run must stop after this epoch (its training loss is not finite), else None."""
    loss = row.get("train_loss")
    if loss is None or math.isfinite(loss):
        return None
    return f"the training loss is {loss} at epoch {row['epoch']}"


def save_stopped(run: Run, row: dict[str, Any], reason: str) -> Path:
    """stopped.json (main rank): why and when the run stopped, with the epoch's row; the
    checkpoint and metrics.jsonl keep the last finite epoch."""
    path = run.out / STOPPED
    if run.ctx.main:
        with writing(path):
            write_json(
                path, {"reason": reason, "epoch": row["epoch"], "arm": run.cfg.arm, "seed": run.cfg.seed, "row": row}
            )
    return path


def save_epoch(run: Run, row: dict[str, Any]) -> None:
    """After an epoch (main rank): its metrics line, a student scorer's curriculum, the checkpoint."""
    out = run.out
    with writing(out / "metrics.jsonl"), open(out / "metrics.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    scores = run.loader.plan.scores if run.loader.plan is not None else None
    if scores is not None and scores.computed:  # the store holds the teacher's scores; save the run's own
        _save_scores(out, row["epoch"], scores, run.loader.sample_id)
    meta = {
        **run.meta,
        "kind": run.kind,
        "class_names": run.data.meta.get("class_names", []),
        "dataset": run.data.meta.get("dataset", ""),
        "split": run.data.meta.get("split"),
        "normalize_mean": list(run.data.mean),
        "normalize_std": list(run.data.std),
    }
    save_checkpoint(
        out / "checkpoint.pt",
        {
            "state_dict": run.model.state_dict(),
            "optimizer": run.step.optimizer.state_dict(),
            "scheduler": run.step.scheduler.state_dict(),
            "epoch": row["epoch"],
            "meta": meta,
            "config": json.loads(json.dumps(run.config)),
            "history": json.loads(json.dumps(run.history)),
            "rng": {"torch": torch.get_rng_state()},
            "loader": run.loader.state_dict(),
            **({"loss": run.step.loss.state_dict()} if run.step.loss is not None and _learns(run.step.loss) else {}),
        },
    )


def _learns(loss: nn.Module | None) -> bool:
    """Whether a run's distillation loss has learnt parameters (ctkd), kept in its checkpoint."""
    return loss is not None and any(True for _ in loss.parameters())


def summarize(run: Run, model_name: str, seconds: float) -> dict[str, Any]:
    """summary.json (main rank) and the closing line."""
    history = run.history
    summary = {
        "variant": run.variant.name,
        "arm": run.cfg.arm,
        "kind": run.kind,
        "model": model_name,
        "epochs": run.cfg.epochs,
        "seed": run.cfg.seed,
        "final_val_acc": history[-1]["val_acc"],
        "best_val_acc": max(r["val_acc"] for r in history),
        "final_val_loss": history[-1]["val_loss"],
        "seconds": seconds,
        "images_per_s": float(np.median([r["images_per_s"] for r in history])),
        **{k: v for k, v in run.data.meta.items() if k not in ("class_names", "identity")},
        "processes": run.ctx.world,
        "views": run.loader.views_used,
    }
    if run.ctx.main:
        with writing(run.out / "summary.json"):
            write_json(run.out / "summary.json", summary)
        say(
            f"{run.label} {model_name}: val acc {summary['final_val_acc']:.2%} (best {summary['best_val_acc']:.2%}), "
            f"{seconds:.1f} s; wrote {run.out}"
        )
    return summary


def _scores_path(out: Path, epoch: int) -> Path:
    return out / "orders" / f"epoch-{epoch:03d}.npz"


def _save_scores(out: Path, epoch: int, scores: Scores, sample_id: np.ndarray) -> None:
    """orders/epoch-NNN.npz: the curriculum (sample ids) and confidences (by .beton position) used in epoch NNN."""
    path = _scores_path(out, epoch)
    with writing(path):
        path.parent.mkdir(exist_ok=True)
        _savez(path, sample_id, scores)


def _savez(path: Path, sample_id: np.ndarray, scores: Scores) -> None:
    np.savez(
        path,
        curriculum=sample_id[scores.curriculum_positions],
        confidence=scores.confidence,
        source=np.array(scores.source),
    )


# What may differ between a run and its resumption: the options that say how it runs (their
# `resume` policy), the loader it ended up with, and the versions and command line it ran with.
RESUMABLE_CHANGES = frozenset(with_policy(TrainConfig, "resume", "may_change")) | {"loader_used", *PROVENANCE_KEYS}


def restore(path: Path, run: Run) -> tuple[int, list[dict[str, Any]]]:
    """Load a per-epoch checkpoint into the run's model, optimiser, learning-rate schedule and loader; refuses
    one from a different run. Returns the epoch to start from and the history so far."""
    ckpt = load_checkpoint(path)
    needed = {"config", "state_dict", "optimizer", "scheduler", "epoch", "rng"}
    if not isinstance(ckpt, dict) or not needed <= set(ckpt):
        raise KdstoreError(f"--resume: {path} is not a per-epoch checkpoint of `kdstore train` (a bare state dict?)")
    saved = ckpt.get("config", {})
    changed = differing(
        TrainConfig.recorded(saved) if isinstance(saved, dict) else {}, run.config, ignore=RESUMABLE_CHANGES
    )
    if changed:
        raise KdstoreError(f"--resume: {path} was saved by a run with different {', '.join(changed)}")
    try:
        run.model.load_state_dict(ckpt["state_dict"])
        run.step.optimizer.load_state_dict(ckpt["optimizer"])
        run.step.scheduler.load_state_dict(ckpt["scheduler"])
        if _learns(run.step.loss):
            assert run.step.loss is not None
            run.step.loss.load_state_dict(ckpt["loss"])
    except (RuntimeError, ValueError, KeyError) as e:
        raise KdstoreError(
            f"--resume: {path} holds other weights than this run's model ({str(e).splitlines()[0][:120]})"
        ) from None
    torch.set_rng_state(ckpt["rng"]["torch"])
    state = ckpt.get("loader")
    if state is None:  # saved before the loader kept its own state: the epoch and augmentation's
        state = {**run.loader.state_dict(), "epoch": int(ckpt["epoch"]), "batch": 0}
        state.update(augment=ckpt["rng"].get("augment"), scores=None)
    run.loader.load_state_dict(state)
    return int(ckpt["epoch"]), list(ckpt.get("history", []))
