"""The paper's figures from runs and their store, drawn with matplotlib (Agg, no display).

convergence.png  val accuracy and val loss per epoch per variant, mean ± std over seeds (Figure 3)
curriculum.png   teacher confidence along the curriculum, and its distribution (Figure 1)
lambda.png       lambda per batch through the first epoch for the SR variants, as the runs logged it,
                 against the fixed lambda
pacing.png       the pacing function g(t) of every paced arm, as the runs logged it
agreement.png    top-1 agreement and KL with the teacher per epoch, on the training subset and validation"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kdstore.errors import KdstoreError
from kdstore.method.variants import VARIANTS
from kdstore.report.runs import RunRecord
from kdstore.store.format import Store

FIGSIZE = (12.0, 4.5)  # inches
DPI = 100  # -> 1200 x 450 pixels


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=FIGSIZE, dpi=DPI)
    return plt, fig, axes


# Distinct line styles and markers, so arms that coincide or share a colour stay apart.
STYLES = [
    ("-", "o"),
    ("--", "s"),
    (":", "^"),
    ("-.", "D"),
    ((0, (5, 1)), "v"),
    ((0, (3, 1, 1, 1)), "P"),
    ((0, (1, 1)), "X"),
]


def _style(i: int) -> dict:
    line, marker = STYLES[i % len(STYLES)]
    return {"linestyle": line, "marker": marker, "markersize": 4, "markevery": None}


def _integer_epochs(*axes) -> None:
    from matplotlib.ticker import MaxNLocator

    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _save(plt, fig, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path.name


def convergence(runs: list[RunRecord], path: Path) -> str:
    """Validation accuracy and loss per epoch per arm; the loss on a log scale, so one arm's
    early spike does not flatten the others."""
    plt, fig, (ax_acc, ax_loss) = _figure()
    by_variant: dict[str, list[RunRecord]] = {}
    for r in runs:
        by_variant.setdefault(r.arm, []).append(r)
    several = any(len(rs) > 1 for rs in by_variant.values())
    for i, (variant, rs) in enumerate(by_variant.items()):
        epochs = min(len(r.metrics) for r in rs)
        x = np.arange(1, epochs + 1)
        for ax, key in ((ax_acc, "val_acc"), (ax_loss, "val_loss")):
            values = np.array([[m[key] for m in r.metrics[:epochs]] for r in rs])  # (seeds, epochs)
            mean, std = values.mean(0), values.std(0, ddof=1) if len(rs) > 1 else np.zeros(epochs)
            (line,) = ax.plot(x, mean, label=variant + (f" (n={len(rs)})" if len(rs) > 1 else ""), **_style(i))
            if len(rs) > 1:
                ax.fill_between(x, mean - std, mean + std, alpha=0.15, color=line.get_color())
    ax_acc.set(
        xlabel="epoch",
        ylabel="val accuracy",
        title="validation accuracy" + (" (mean ± std over seeds)" if several else ""),
    )
    ax_loss.set(xlabel="epoch", ylabel="val loss (CE, log scale)", title="validation loss", yscale="log")
    _integer_epochs(ax_acc, ax_loss)
    ax_acc.legend(fontsize=8)
    return _save(plt, fig, path)


def curriculum_profile(store: Store, path: Path) -> str:
    """Confidence along the curriculum (the inverse is the same read backwards), and its histogram."""
    plt, fig, (ax_cl, ax_hist) = _figure()
    t = store.train
    rows = t.curriculum_positions()
    ax_cl.scatter(np.arange(len(rows)), t.confidence[rows], s=2, c=np.where(t.correct[rows], "tab:blue", "tab:red"))
    ax_cl.set(
        xlabel="position in the curriculum (easy to hard)",
        ylabel="teacher confidence",
        ylim=(0, 1.02),
        title="one descending trace per class: the order interleaves\nthe classes at equal within-class rank "
        "(class-stratified)",
    )
    bins = np.linspace(0, 1, 21)
    ax_hist.hist(
        [t.confidence[t.correct], t.confidence[~t.correct]],
        bins=bins,
        stacked=True,
        color=["tab:blue", "tab:red"],
        label=["right", "misclassified"],
    )
    ax_hist.set(
        xlabel="teacher confidence (max softmax)", ylabel="training samples", title="confidence of the teacher on train"
    )
    ax_hist.legend(fontsize=8)
    fig.suptitle(
        f"{store.attrs['teacher']} on {store.attrs['dataset']} (red: misclassified by the teacher, placed last in its "
        "class)"
    )
    return _save(plt, fig, path)


def lambda_profile(runs: list[RunRecord], path: Path) -> str | None:
    """λ per batch through the first epoch, and its range per epoch, as the SR runs logged them."""
    sr_runs: dict[str, RunRecord] = {}
    for r in runs:
        v = VARIANTS.get(r.summary["variant"])
        if v is not None and v.policy == "sr" and r.metrics and "lam" in r.metrics[0]:
            sr_runs.setdefault(r.arm, r)
    if not sr_runs:
        return None
    plt, fig, (ax, ax_epoch) = _figure()
    for i, (name, r) in enumerate(sr_runs.items()):
        lam = np.asarray(r.metrics[0]["lam"])
        ax.plot(
            np.arange(len(lam)),
            lam,
            label=f"{name} (seed {r.seed})",
            **{**_style(i), "markevery": max(1, len(lam) // 20)},
        )
        epochs = [m["epoch"] for m in r.metrics]
        (line,) = ax_epoch.plot(epochs, [m["lam_mean"] for m in r.metrics], label=name, **_style(i))
        ax_epoch.fill_between(
            epochs,
            [m["lam_min"] for m in r.metrics],
            [m["lam_max"] for m in r.metrics],
            alpha=0.15,
            color=line.get_color(),
        )
    fixed = {float(r.config.get("lam", 0.9)) for r in sr_runs.values()}
    for value in sorted(fixed):
        for a in (ax, ax_epoch):
            a.axhline(
                value, color="grey", linestyle="--", linewidth=1, label=f"fixed λ = {value:g} (kd)" if a is ax else None
            )
    ax.set(
        xlabel="batch in epoch 1",
        ylabel="λ",
        title="selective reliance: λ per batch in epoch 1 (as logged)",
        ylim=(-0.02, 1.02),
    )
    ax_epoch.set(xlabel="epoch", ylabel="λ mean (band: min-max)", title="λ per epoch", ylim=(-0.02, 1.02))
    _integer_epochs(ax_epoch)
    ax.legend(fontsize=8)
    return _save(plt, fig, path)


def pacing_profile(runs: list[RunRecord], path: Path) -> str | None:
    """g(t) per paced arm from the per-batch fractions its runs logged (the first seed's)."""
    paced: dict[str, RunRecord] = {}
    for r in runs:
        if any("pace" in m for m in r.metrics):
            paced.setdefault(r.arm, r)
    if not paced:
        return None
    plt, fig, (ax, ax_epoch) = _figure()
    for i, (name, r) in enumerate(paced.items()):
        g = np.concatenate([m["pace"] for m in r.metrics])
        # Arms with the same pacing coincide: later ones are drawn thinner and dashed on top.
        width = max(3.0 - 0.7 * i, 1.0)
        ax.plot(
            np.arange(len(g)) / len(g),
            g,
            label=name,
            linewidth=width,
            **{**_style(i), "markevery": max(1, len(g) // 12)},
        )
        ax_epoch.plot(
            [m["epoch"] for m in r.metrics],
            [float(np.mean(m["pace"])) for m in r.metrics],
            label=name,
            linewidth=width,
            **_style(i),
        )
    ax.set(
        xlabel="fraction of training (step / total steps)",
        ylabel="g(t): fraction of the order used",
        title="pacing function",
        ylim=(0, 1.02),
    )
    ax_epoch.set(xlabel="epoch", ylabel="mean g over the epoch", title="data available per epoch", ylim=(0, 1.02))
    _integer_epochs(ax_epoch)
    ax.legend(fontsize=8)
    ax_epoch.legend(fontsize=8)
    return _save(plt, fig, path)


def agreement_profile(runs: list[RunRecord], path: Path) -> str | None:
    """Agreement (left) and KL(teacher || student) (right) per epoch per arm, mean over seeds;
    solid: validation, dashed: the clean training subset. A gap that opens between the two is a
    student fitting a fixed teacher rather than its function."""
    by_arm: dict[str, list[RunRecord]] = {}
    for r in runs:
        if r.metrics and "agree_val" in r.metrics[0]:
            by_arm.setdefault(r.arm, []).append(r)
    if not by_arm:
        return None
    plt, fig, (ax_agree, ax_kl) = _figure()
    for i, (arm, rs) in enumerate(by_arm.items()):
        epochs = min(len(r.metrics) for r in rs)
        x = np.arange(1, epochs + 1)
        color = f"C{i % 10}"
        for ax, key in ((ax_agree, "agree"), (ax_kl, "kl")):
            for split, line in (("val", "-"), ("train", "--")):
                if all(f"{key}_{split}" in r.metrics[0] for r in rs):
                    mean = np.mean([[m[f"{key}_{split}"] for m in r.metrics[:epochs]] for r in rs], 0)
                    ax.plot(
                        x,
                        mean,
                        color=color,
                        linestyle=line,
                        marker=STYLES[i % len(STYLES)][1],
                        markersize=4,
                        label=f"{arm} ({split})",
                    )
    ax_agree.set(
        xlabel="epoch", ylabel="top-1 agreement with the teacher", title="agreement (solid: val, dashed: train subset)"
    )
    ax_kl.set(xlabel="epoch", ylabel="KL(teacher ‖ student), τ = 1", title="KL to the teacher", yscale="log")
    _integer_epochs(ax_agree, ax_kl)
    ax_agree.legend(fontsize=8)
    return _save(plt, fig, path)


def write_figures(runs: list[RunRecord], out: Path) -> list[str]:
    """Draw what the runs allow; the store-based figures need the runs' store to be readable."""
    out = Path(out)
    written = [convergence(runs, out / "convergence.png")]
    for figure in (
        pacing_profile(runs, out / "pacing.png"),
        lambda_profile(runs, out / "lambda.png"),
        agreement_profile(runs, out / "agreement.png"),
    ):
        if figure:
            written.append(figure)
    store_path = runs[0].config.get("data", {}).get("store")
    if store_path:
        try:
            store = Store.open(store_path)
        except KdstoreError:
            return written
        written.append(curriculum_profile(store, out / "curriculum.png"))
    return written
