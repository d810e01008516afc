"""Helpers the tests share: a synthetic ImageFolder, a resealed store, the real CIFAR-10 images,
the README's commands, a run's metrics without their timings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

# A metrics row's (or summary's) fields that say how long, not what was computed
TIMING = frozenset({"seconds", "images_per_s", "data_wait_frac", "eval_seconds"})


def student_config(out: Path, store, variant: str, seed: int, batch_size: int = 128, **kw):
    """A 2-epoch student run of `variant` from `store`, written to out/VARIANT-sSEED."""
    from kdstore.train.config import TrainConfig

    return TrainConfig(
        out=str(out / f"{variant}-s{seed}"),
        store=str(store),
        variant=variant,
        seed=seed,
        epochs=2,
        batch_size=batch_size,
        progress=False,
        **kw,
    )


def untimed(row: dict) -> dict:
    """A metrics row (or a summary) without its timings: what two equal runs must agree on."""
    return {k: v for k, v in row.items() if k not in TIMING}


def reseal(store: Path) -> None:
    """Record teacher.h5's new sha256 in the manifest: a store whose files agree with its manifest
    but whose content is wrong (as a faulty writer would make), for the checks behind the sha256."""
    import json

    from kdstore.runtime.hashing import sha256_file

    manifest = json.loads((store / "MANIFEST.json").read_text())
    manifest["sha256"]["teacher.h5"] = sha256_file(store / "teacher.h5")
    (store / "MANIFEST.json").write_text(json.dumps(manifest))


SHARED_CIFAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg.tar.gz"


def make_imagefolder(
    root: Path,
    classes: int = 3,
    train_per_class: int = 10,
    val_per_class: int = 4,
    size: int = 16,
    val_dir: str = "test",
) -> Path:
    """A learnable synthetic ImageFolder: class k is a bright square at a class-specific place."""
    rng = np.random.default_rng(0)
    for split, per_class in (("train", train_per_class), (val_dir, val_per_class)):
        for k in range(classes):
            d = root / split / f"class{k}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                img = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
                o = (k * size) // (classes + 1)
                img[o : o + size // 3, o : o + size // 3] = 255
                Image.fromarray(img).save(d / f"{i:03d}.png")
    return root


README = Path(__file__).resolve().parents[1] / "README.md"


def readme_commands(section: str | None = None) -> list[str]:
    """The README's indented `kdstore ...` lines (in `## section` only, if given), continuation
    lines (ending in \\) joined and trailing `# comments` dropped."""
    lines, joined, inside = README.read_text().splitlines(), [], section is None
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("## "):
            inside = section is None or line[3:].strip() == section
        elif inside and line.startswith("    kdstore "):
            text = line.strip()
            while text.endswith("\\") and i + 1 < len(lines):
                i += 1
                text = text[:-1] + " " + lines[i].strip()
            joined.append(text.split("  #")[0].strip())
        i += 1
    return joined
