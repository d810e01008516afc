"""The documentation's figures drawn from the library itself (run by `make docs`):

- figures/pacing.png: every pacing function of `kdstore.method.pacing.PACINGS` at the default
  a and b, the fraction of the curriculum order a batch draws from over training."""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from kdstore.method.pacing import PACINGS, PacingParams, fractions  # noqa: E402

HERE = Path(__file__).resolve().parent


def pacing(path: Path, total: int = 1000) -> None:
    params = PacingParams()
    steps = np.arange(total)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    for name in PACINGS:
        g = fractions(name, steps, total, params)
        if g is None:
            g = np.ones(total)  # no pacing: every batch draws from the whole order
        ax.plot(steps / total, g, label=name, lw=1.6 if name != "none" else 1.0, ls="-" if name != "none" else ":")
    ax.axvline(params.a, color="0.75", lw=0.8, ls="--", zorder=0)
    ax.text(params.a - 0.01, 0.03, f"a = {params.a}", color="0.35", fontsize=8, ha="right")
    ax.axhline(params.b, color="0.75", lw=0.8, ls="--", zorder=0)
    ax.text(0.01, params.b - 0.05, f"b = {params.b}", color="0.35", fontsize=8)
    ax.set(
        xlabel="training progress t / T",
        ylabel="g(t): fraction of the order drawn from",
        title="Pacing functions (train --pacing NAME --pacing-a A --pacing-b B)",
        xlim=(0, 1),
        ylim=(0, 1.03),
    )
    ax.legend(ncol=2, fontsize=8, loc="center right", bbox_to_anchor=(1.0, 0.45))
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "figures"
    out.mkdir(parents=True, exist_ok=True)
    pacing(out / "pacing.png")
    print(f"wrote {out / 'pacing.png'}")


if __name__ == "__main__":
    main()
