"""Terminal rendering of library results with rich."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from rich.table import Table

from kdstore.cache.config import CacheConfig
from kdstore.method.sparse_targets import at_bytes, bytes_per_view, fidelity
from kdstore.report.tables import table_rows
from kdstore.runtime.console import console
from kdstore.store.format import Store, near_chance
from kdstore.store.quantized import stored_dtype


def render_remote(found: dict[str, Any]) -> None:
    """`kdstore inspect URL`: a remote store's MANIFEST, file sizes and teacher.h5's attributes."""
    a, manifest = found["attrs"], found["manifest"]
    info = Table(title=f"store {found['url']} (remote: the images not downloaded)", show_header=False)
    rows = [
        ("dataset", str(a.get("dataset", "-"))),
        ("classes", str(a.get("num_classes", "-"))),
        ("teacher", f"{a.get('teacher', '-')} (input {a.get('input_size', '-')} px)"),
        ("teacher train / val acc", f"{a.get('teacher_train_acc', 0):.2%} / {a.get('teacher_val_acc', 0):.2%}"),
        ("logits", found["logits_dtype"]),
        ("views", str(found["views"]) if found["views"] else "none"),
        ("schema", str(manifest.get("schema_version", "-"))),
        ("created", str(manifest.get("created", "-"))),
        ("kdstore", str(a.get("kdstore_version", "-"))),
        *((name, f"{size / 2**20:,.1f} MiB") for name, size in found["sizes"].items()),
        ("store size", f"{sum(found['sizes'].values()) / 2**20:,.1f} MiB"),
    ]
    for row in rows:
        info.add_row(*row)
    console.print(info)
    if found["card"]:
        console.print(f"its card ({found['url']}/README.md):\n{found['card']}", markup=False, highlight=False)


def render_store(store: Store) -> None:
    a = store.attrs
    size = sum(p.stat().st_size for p in store.path.iterdir() if p.is_file())
    info = Table(title=f"store {store.path}", show_header=False)
    rows = [
        ("dataset", a["dataset"]),
        ("classes", str(a["num_classes"])),
        ("train / val samples", f"{len(store.train)} / {len(store.val)}"),
        ("image size", f"{a['image_size']} px"),
        ("teacher", f"{a['teacher']} (stem {a['teacher_stem']}, input {a['input_size']} px)"),
        ("teacher train / val acc", f"{a['teacher_train_acc']:.2%} / {a['teacher_val_acc']:.2%}"),
        ("checkpoint sha256", a["checkpoint_sha256"] or "-"),
        ("dataset fingerprint", a["dataset_fingerprint"][:16] + "…"),
        ("store size", f"{size / 2**20:.1f} MiB"),
        (
            "logits",
            f"{stored_dtype(store.train.logits)} ({store.train.logits.nbytes / max(1, len(store.train)):,.0f} B each)",
        ),
        ("created", store.manifest.get("created") or a.get("created", "-")),
        ("kdstore", a["kdstore_version"]),
    ]
    v = store.train.views
    if v is not None:
        kept = {
            "logits": "full logits",
            "topk": f"top-{v.topk} logits",
            "sample": f"{v.sample} sampled class ids per view at τ = {v.sample_tau:g}",
        }
        rows.append(("views", f"{v.count} per training image ({v.augmentation}, seed {v.seed}), {kept[v.storage]}"))
    if "merged_from" in a:
        rows.append(("merged from", ", ".join(f"{m['path']} ({m['teacher']})" for m in json.loads(a["merged_from"]))))
    for k, v in rows:
        info.add_row(k, v)
    console.print(info)
    warning = near_chance(a)
    if warning:
        console.print(f"[bold yellow]warning:[/] {warning}", soft_wrap=True)
    counts, edges = np.histogram(store.train.confidence, bins=10, range=(0.0, 1.0))
    hist = Table(title="teacher confidence on train (max softmax)")
    hist.add_column("confidence")
    hist.add_column("samples", justify="right")
    hist.add_column("")
    width = 40
    for c, lo, hi in zip(counts, edges[:-1], edges[1:]):
        hist.add_row(f"{lo:.1f}-{hi:.1f}", str(int(c)), "█" * int(round(width * c / max(counts.max(), 1))))
    console.print(hist)
    render_fidelity(store)


FIDELITY_ROWS = 2048  # clean training rows the fidelity table is measured on


def render_fidelity(store: Store) -> None:
    """Full, top-k and sampled storage at equal bytes per view, measured on the store's clean
    training logits (every store holds them in full): what each keeps of the teacher."""
    v = store.train.views
    c = store.num_classes
    if v is not None and v.sample:
        sample, tau = v.sample, v.sample_tau
        topk = max(1, min(c - 1, at_bytes("topk", bytes_per_view("sample", sample, c), c)))
    else:
        topk = v.topk if v is not None and v.topk else min(10, c - 1)
        sample, tau = max(1, at_bytes("sample", bytes_per_view("topk", topk, c), c)), CacheConfig.sample_tau
    rows = np.asarray(store.train.logits[: min(FIDELITY_ROWS, len(store.train))], dtype=np.float32)
    table = Table(
        title=f"what a view keeps of the teacher's softmax at τ = {tau:g} (measured on {len(rows)} clean training "
        f"rows, as stored: {stored_dtype(store.train.logits)})"
    )
    for col in ("storage", "bytes / view", "KL(stored ‖ full), one view", "bias: KL(full ‖ E\\[stored])"):
        table.add_column(col, justify="left" if col == "storage" else "right")
    for r in fidelity(rows, tau, topk, sample):
        bias = "0 (E\\[q] = p)" if str(r["storage"]).endswith("sampled ids") else f"{r['bias']:.2g}"
        table.add_row(str(r["storage"]), str(r["bytes"]), f"{r['kl_view']:.2g}", bias)
    console.print(table)


def render_results(summary: dict) -> None:
    header, body = table_rows(summary)
    table = Table(title="students per variant (mean ± std over seeds)")
    for i, h in enumerate(header):
        table.add_column(h, justify="left" if i == 0 else "right")
    for row in body:
        table.add_row(*row)
    console.print(table)


def render_bench(r: dict) -> None:
    t = Table(
        title=f"kdstore bench on {r['device_name']} ({r['device']}), batch {r['config']['batch_size']}, "
        f"{r['teacher']['model']}@{r['teacher']['input_size']} -> {r['student']['model']}"
    )
    for col in ("mode", "images/s", "step (ms): median [p10-p90]", "data wait", "peak memory"):
        t.add_column(col, justify="left" if col == "mode" else "right")
    for mode, m in r["modes"].items():
        t.add_row(
            mode,
            f"{m['images_per_s']:,.0f}",
            f"{m['step_ms_median']:.1f} [{m['step_ms_p10']:.1f}-{m['step_ms_p90']:.1f}]",
            f"{m['data_wait_frac']:.1%}",
            f"{m['peak_memory_bytes'] / 2**20:,.0f} MiB",
        )
    t.caption = f"peak memory: {r['memory_kind']}; {r['config']['steps']} timed steps per mode"
    console.print(t)
    for name, p in r["paired"].items():
        if p["within_noise"]:
            a, b = name.split("_vs_")
            console.print(
                f"[bold yellow]warning:[/] {a} vs {b}: {p['median']:.3f}x, within the noise of the per-step times "
                f"(p10-p90 {p['p10']:.3f}-{p['p90']:.3f}x); take more --steps on an idle machine",
                soft_wrap=True,
            )
    f, c, b = r["flops_per_image"], r["cache"], r["break_even"]
    s = Table(show_header=False, title="offline KD against online KD")
    rows = [
        (
            "offline / unguided throughput (paired, p10-p90)",
            f"{r['paired']['offline_vs_unguided']['median']:.3f}x "
            f"({r['paired']['offline_vs_unguided']['p10']:.3f}-{r['paired']['offline_vs_unguided']['p90']:.3f})",
        ),
        ("online / offline step time (measured)", f"{r['online_offline_ratio']:.2f}x"),
        (
            "FLOP limit (teacher fwd + student step) / student step",
            f"{f['limit']:.2f}x  ({f['teacher_forward'] / 1e9:.3f} + {f['student_step'] / 1e9:.3f} GFLOP per image)",
        ),
        ("measured / limit", f"{r['ratio_vs_flop_limit']:.2f}"),
        (
            "cache pass vs bare teacher forward",
            f"{c['cache_images_per_s']:,.0f} vs {c['teacher_forward_images_per_s']:,.0f} images/s "
            f"({c['cache_vs_forward']:.2f}x)",
        ),
        ("cache time for this store", f"{b['cache_seconds']:.1f} s"),
        ("break-even", f"{b['break_even_epochs']:.2f} student epochs"),
        (
            f"six-variant sweep, {b['sweep_epochs']} epochs each",
            f"online {b['sweep_seconds_online'] / 60:.1f} min, offline {b['sweep_seconds_offline'] / 60:.1f} min "
            f"({b['sweep_speedup']:.2f}x)",
        ),
    ]
    for k, v in rows:
        s.add_row(k, v)
    console.print(s)
    if r["config"].get("json"):
        console.print(f"wrote {r['config']['json']}", soft_wrap=True)
