"""Results across runs: per arm (variant, pacing, scorer), mean ± std over seeds and the paired
difference to a baseline arm (`unguided` by default).
A run directory is what `kdstore train` writes (config.json, metrics.jsonl, summary.json)."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

import numpy as np

from kdstore.errors import KdstoreError
from kdstore.method.variants import VARIANTS
from kdstore.options import write_json
from kdstore.report.figures import write_figures
from kdstore.report.runs import RunRecord, find_runs, load_run  # noqa: F401 - load_run, find_runs: report's API


def t_critical_95(dof: int) -> float:
    """Two-sided 95% Student-t critical value."""
    from scipy.stats import t

    return float(t.ppf(0.975, dof))


def mean_std(values: list[float]) -> tuple[float, float]:
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0


def paired_diff(a: dict[int, float], b: dict[int, float]) -> dict[str, Any] | None:
    """Mean of a - b over the seeds both have, with a 95% t-interval (None with no shared seed)."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None
    d = np.asarray([a[s] - b[s] for s in seeds])
    mean = float(d.mean())
    if len(d) < 2:
        return {"mean": mean, "ci95": [math.nan, math.nan], "n": 1}
    half = t_critical_95(len(d) - 1) * float(d.std(ddof=1)) / math.sqrt(len(d))
    return {"mean": mean, "ci95": [mean - half, mean + half], "n": len(d)}


def run_figures(run: RunRecord) -> dict[str, float]:
    """The per-run numbers of the table, recomputed from metrics.jsonl."""
    if not run.metrics:
        raise KdstoreError(f"{run.path}/metrics.jsonl holds no epoch")
    acc = [m["val_acc"] for m in run.metrics]
    last = run.metrics[-1]
    return {
        "final_val_acc": acc[-1],
        "best_val_acc": max(acc),
        "final_val_loss": last["val_loss"],
        "images_per_s": float(np.median([m["images_per_s"] for m in run.metrics])),
        **{key: last[key] for key in AGREEMENT if key in last},
    }


# Agreement with the teacher at the end of training (agreement.py), when the runs measured it.
AGREEMENT = ("agree_train", "agree_val", "kl_train", "kl_val")


def _store_key(run: RunRecord) -> str:
    data = run.config.get("data", {})
    return f"{data.get('dataset_fingerprint', '')}|{data.get('teacher', '')}"


BASELINE = "unguided"  # the arm every other is compared with unless told otherwise


def summarize(runs: list[RunRecord], allow_mixed: bool = False, baseline: str = BASELINE) -> dict[str, Any]:
    """Per-arm statistics over seeds, each arm paired by seed against `baseline`; refuses runs
    from different stores unless allowed."""
    stores = sorted({_store_key(r) for r in runs})
    if len(stores) > 1 and not allow_mixed:
        raise KdstoreError(
            f"runs come from {len(stores)} different stores (dataset or teacher differ); pass --allow-mixed to "
            "tabulate them together"
        )
    by_variant: dict[str, list[RunRecord]] = {}
    for r in runs:
        by_variant.setdefault(r.arm, []).append(r)
    rank = {v: i for i, v in enumerate(VARIANTS)}
    order = sorted(by_variant, key=lambda arm: (rank.get(by_variant[arm][0].summary["variant"], len(rank)), arm))
    figures = {r.path: run_figures(r) for r in runs}
    base = {r.seed: figures[r.path]["final_val_acc"] for r in by_variant.get(baseline, [])}
    rows = []
    for v in order:
        rs = by_variant[v]
        seeds = sorted({r.seed for r in rs})
        if len(seeds) != len(rs):
            raise KdstoreError(f"variant {v} has more than one run for the same seed")
        final = {r.seed: figures[r.path]["final_val_acc"] for r in rs}
        row: dict[str, Any] = {
            "variant": v,
            "seeds": [r.seed for r in rs],
            "n": len(rs),
            "runs": [str(r.path) for r in rs],
        }
        for key in ("final_val_acc", "best_val_acc", "final_val_loss", "images_per_s", *AGREEMENT):
            vals = [figures[r.path][key] for r in rs if key in figures[r.path]]
            if len(vals) == len(rs):
                m, sd = mean_std(vals)
                row[key] = {"mean": m, "std": sd, "values": vals}
        row["diff_vs_baseline"] = paired_diff(final, base) if v != baseline and base else None
        rows.append(row)
    return {"rows": rows, "baseline": baseline, "runs": [str(r.path) for r in runs]}


def _pct(stat: dict[str, Any]) -> str:
    if len(stat["values"]) < 2:
        return f"{100 * stat['mean']:.2f}"
    return f"{100 * stat['mean']:.2f} ± {100 * stat['std']:.2f}"


def table_rows(summary: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The results table as strings (shared by the markdown file and the terminal)."""
    agreement = all("agree_val" in r for r in summary["rows"])
    header = [
        "variant",
        "final val acc (%)",
        "best val acc (%)",
        "val loss",
        f"Δ vs {summary['baseline']} (pts, 95% CI)",
        "seeds",
    ]
    if agreement:
        header[5:5] = ["agreement train / val (%)", "KL(T‖S) train / val"]
    body = []
    for r in summary["rows"]:
        d = r["diff_vs_baseline"]
        if d is None:
            diff = "-"
        elif d["n"] < 2:
            diff = f"{100 * d['mean']:+.2f} (1 seed)"
        else:
            diff = f"{100 * d['mean']:+.2f} [{100 * d['ci95'][0]:+.2f}, {100 * d['ci95'][1]:+.2f}]"
        loss = r["final_val_loss"]
        loss_text = f"{loss['mean']:.3f}" + (f" ± {loss['std']:.3f}" if r["n"] > 1 else "")
        cells = [r["variant"], _pct(r["final_val_acc"]), _pct(r["best_val_acc"]), loss_text, diff, str(r["n"])]
        if agreement:
            train = r.get("agree_train")
            cells[5:5] = [
                (f"{_pct(train)} / " if train else "- / ") + _pct(r["agree_val"]),
                (f"{r['kl_train']['mean']:.3f} / " if "kl_train" in r else "- / ") + f"{r['kl_val']['mean']:.3f}",
            ]
        body.append(cells)
    return header, body


def write_report(summary: dict[str, Any], out: Path | str, runs: list[RunRecord] | None = None) -> None:
    """results.md (like the paper's Table 2), results.csv and results.json under `out`; with
    `runs`, also the figures (convergence.png, and curriculum.png and lambda.png from the store)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    header, body = table_rows(summary)
    md = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join(row) + " |" for row in body
    ]
    (out / "results.md").write_text(
        "\n".join(md) + f"\n\nMean ± std over seeds; Δ is paired by seed against `{summary['baseline']}`.\n"
    )
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(
        [
            "variant",
            "n",
            "final_val_acc_mean",
            "final_val_acc_std",
            "best_val_acc_mean",
            "best_val_acc_std",
            "final_val_loss_mean",
            "final_val_loss_std",
            "diff_vs_baseline",
            "diff_ci95_low",
            "diff_ci95_high",
        ]
    )
    for r in summary["rows"]:
        d = r["diff_vs_baseline"] or {"mean": "", "ci95": ["", ""]}
        w.writerow(
            [
                r["variant"],
                r["n"],
                r["final_val_acc"]["mean"],
                r["final_val_acc"]["std"],
                r["best_val_acc"]["mean"],
                r["best_val_acc"]["std"],
                r["final_val_loss"]["mean"],
                r["final_val_loss"]["std"],
                d["mean"],
                d["ci95"][0],
                d["ci95"][1],
            ]
        )
    (out / "results.csv").write_text(buf.getvalue())
    if runs:
        summary["figures"] = write_figures(runs, out)
    write_json(out / "results.json", summary)
