"""The paper's figures from runs and their store, drawn with matplotlib (Agg, no display).

convergence.png  val accuracy and val loss per epoch per variant, mean ± std over seeds (Figure 3)
curriculum.png   teacher confidence along the curriculum and the inverse curriculum (Figure 1)
lambda.png       lambda per batch through the first epoch for the SR variants
pacing.png       the pacing function g(t) of every paced arm, as the runs logged it
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .errors import KdstoreError
from .pacing import PacingParams
from .reliance import POLICIES, batch_means
from .schedule import Schedule, Scores
from .store import Store
from .variants import VARIANTS

if TYPE_CHECKING:
    from .report import Run

FIGSIZE = (12.0, 4.5)  # inches
DPI = 100  # -> 1200 x 450 pixels


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=FIGSIZE, dpi=DPI)
    return plt, fig, axes


def _save(plt, fig, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path.name


def convergence(runs: list["Run"], path: Path) -> str:
    plt, fig, (ax_acc, ax_loss) = _figure()
    by_variant: dict[str, list["Run"]] = {}
    for r in runs:
        by_variant.setdefault(r.variant, []).append(r)
    for variant, rs in by_variant.items():
        epochs = min(len(r.metrics) for r in rs)
        x = np.arange(1, epochs + 1)
        for ax, key in ((ax_acc, "val_acc"), (ax_loss, "val_loss")):
            values = np.array([[m[key] for m in r.metrics[:epochs]] for r in rs])  # (seeds, epochs)
            mean, std = values.mean(0), values.std(0, ddof=1) if len(rs) > 1 else np.zeros(epochs)
            ax.plot(x, mean, label=f"{variant} (n={len(rs)})")
            ax.fill_between(x, mean - std, mean + std, alpha=0.2)
    ax_acc.set(xlabel="epoch", ylabel="val accuracy", title="validation accuracy (mean ± std over seeds)")
    ax_loss.set(xlabel="epoch", ylabel="val loss (CE)", title="validation loss")
    ax_acc.legend(fontsize=8)
    return _save(plt, fig, path)


def curriculum_profile(store: Store, path: Path) -> str:
    plt, fig, (ax_cl, ax_inv) = _figure()
    t = store.train
    for ax, ids, title in ((ax_cl, t.curriculum, "curriculum (easy to hard)"), (ax_inv, t.inverse, "inverse curriculum (hard to easy)")):
        rows = t.positions(ids)
        ax.scatter(np.arange(len(rows)), t.confidence[rows], s=2, c=np.where(t.correct[rows], "tab:blue", "tab:red"))
        ax.set(xlabel="position in order", ylabel="teacher confidence", title=title, ylim=(0, 1.02))
    fig.suptitle("teacher confidence along the curriculum (red: misclassified by the teacher)")
    return _save(plt, fig, path)


def lambda_profile(store: Store, runs: list["Run"], path: Path) -> str | None:
    sr_runs = {}
    for r in runs:
        v = VARIANTS.get(r.summary["variant"])
        if v is not None and v.policy == "sr":
            sr_runs.setdefault(r.variant, r)
    if not sr_runs:
        return None
    plt, fig, (ax, ax_conf) = _figure()
    t = store.train
    scores = Scores(t.confidence, t.positions(t.curriculum))
    for name, r in sr_runs.items():
        v, c = VARIANTS[r.summary["variant"]], r.config
        batch = int(c["batch_size"])
        params = PacingParams(c.get("pacing_a", 0.8), c.get("pacing_b", 0.2), c.get("pacing_growth", 2.0), c.get("pacing_step_length"))
        schedule = Schedule(v.ordering, c.get("pacing", "none"), params, t.labels, batch, len(t), int(c["epochs"]), int(c["seed"]), scores)
        order = schedule.order(0)  # the first epoch's visiting order, scored by the store's teacher
        lam = POLICIES[v.policy](t.confidence[order], batch, float(r.config["lam"]), float(t.confidence.max()))
        ax.plot(np.arange(len(lam)), lam, label=name)
        means = batch_means(t.confidence[order], batch)
        ax_conf.plot(np.arange(len(means)), means, label=name)
    ax.set(xlabel="batch in epoch", ylabel="λ", title="selective reliance: λ per batch", ylim=(-0.02, 1.02))
    ax_conf.set(xlabel="batch in epoch", ylabel="mean teacher confidence", title="batch mean confidence")
    ax.legend(fontsize=8)
    return _save(plt, fig, path)


def pacing_profile(runs: list["Run"], path: Path) -> str | None:
    """g(t) per paced arm from the per-batch fractions its runs logged (the first seed's)."""
    paced: dict[str, "Run"] = {}
    for r in runs:
        if any("pace" in m for m in r.metrics):
            paced.setdefault(r.variant, r)
    if not paced:
        return None
    plt, fig, (ax, ax_epoch) = _figure()
    for name, r in paced.items():
        g = np.concatenate([m["pace"] for m in r.metrics])
        ax.plot(np.arange(len(g)) / len(g), g, label=name)
        ax_epoch.plot([m["epoch"] for m in r.metrics], [float(np.mean(m["pace"])) for m in r.metrics], marker="o", label=name)
    ax.set(xlabel="fraction of training (step / total steps)", ylabel="g(t): fraction of the order used", title="pacing function", ylim=(0, 1.02))
    ax_epoch.set(xlabel="epoch", ylabel="mean g over the epoch", title="data available per epoch", ylim=(0, 1.02))
    ax.legend(fontsize=8)
    return _save(plt, fig, path)


def write_figures(runs: list["Run"], out: Path) -> list[str]:
    """Draw what the runs allow; the store-based figures need the runs' store to be readable."""
    out = Path(out)
    written = [convergence(runs, out / "convergence.png")]
    pace = pacing_profile(runs, out / "pacing.png")
    if pace:
        written.append(pace)
    store_path = runs[0].config.get("data", {}).get("store")
    if store_path:
        try:
            store = Store.open(store_path)
        except KdstoreError:
            return written
        written.append(curriculum_profile(store, out / "curriculum.png"))
        lam = lambda_profile(store, runs, out / "lambda.png")
        if lam:
            written.append(lam)
    return written
