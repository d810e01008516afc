"""Terminal rendering of library results with rich."""
from __future__ import annotations

import numpy as np
from rich.table import Table

from kdstore.progress import console
from kdstore.store import Store


def render_store(store: Store) -> None:
    a = store.attrs
    size = sum(p.stat().st_size for p in store.path.iterdir() if p.is_file())
    info = Table(title=f"store {store.path}", show_header=False)
    rows = [
        ("dataset", a["dataset"]), ("classes", str(a["num_classes"])),
        ("train / val samples", f"{len(store.train)} / {len(store.val)}"),
        ("image size", f"{a['image_size']} px"), ("teacher", f"{a['teacher']} (stem {a['teacher_stem']}, input {a['input_size']} px)"),
        ("teacher train / val acc", f"{a['teacher_train_acc']:.2%} / {a['teacher_val_acc']:.2%}"),
        ("checkpoint sha256", a["checkpoint_sha256"] or "-"), ("dataset fingerprint", a["dataset_fingerprint"][:16] + "…"),
        ("store size", f"{size / 2**20:.1f} MiB"), ("created", a["created"]), ("kdstore", a["kdstore_version"]),
    ]
    for k, v in rows:
        info.add_row(k, v)
    console.print(info)
    counts, edges = np.histogram(store.train.confidence, bins=10, range=(0.0, 1.0))
    hist = Table(title="teacher confidence on train (max softmax)")
    hist.add_column("confidence")
    hist.add_column("samples", justify="right")
    hist.add_column("")
    width = 40
    for c, lo, hi in zip(counts, edges[:-1], edges[1:]):
        hist.add_row(f"{lo:.1f}-{hi:.1f}", str(int(c)), "█" * int(round(width * c / max(counts.max(), 1))))
    console.print(hist)


def render_results(summary: dict) -> None:
    from kdstore.report import table_rows

    header, body = table_rows(summary)
    table = Table(title="students per variant (mean ± std over seeds)")
    for i, h in enumerate(header):
        table.add_column(h, justify="left" if i == 0 else "right")
    for row in body:
        table.add_row(*row)
    console.print(table)
