"""Sweeps resume; every reported number is recomputed from the metrics files; figures exist."""

import json
import math
import shutil

import numpy as np
import pytest
from PIL import Image

from kdstore.errors import KdstoreError
from kdstore.report import sweep
from kdstore.report import tables as report
from kdstore.report.sweep import SweepConfig
from kdstore.train.config import TrainConfig

pytestmark = pytest.mark.slow  # caches, trains or kills processes: the full suite only


@pytest.fixture(scope="module")
def swept(digits_store, tmp_path_factory):
    """unguided and kd-cl-sr at seeds 0 and 1, with the sweep killed at its third run and resumed."""
    out = tmp_path_factory.mktemp("sweep")
    base = TrainConfig(out=str(out), store=str(digits_store), epochs=1, batch_size=256, progress=False)
    real_run = sweep.train.run
    calls = []

    def killed_at_third(cfg, *args, **kwargs):
        calls.append(cfg.out)
        if len(calls) == 3:
            (out / "kd-cl-sr-s0").mkdir(parents=True, exist_ok=True)
            (out / "kd-cl-sr-s0" / "metrics.jsonl").write_text('{"partial": true}\n')  # what a kill leaves
            raise KeyboardInterrupt
        return real_run(cfg, *args, **kwargs)

    sweep.train.run = killed_at_third
    try:
        with pytest.raises(KeyboardInterrupt):
            sweep.run(SweepConfig(variants="unguided,kd-cl-sr", seeds="0,1", base=base))
        finished_mtime = (out / "unguided-s1" / "metrics.jsonl").stat().st_mtime_ns
        calls.clear()
        summary = sweep.run(SweepConfig(variants="unguided,kd-cl-sr", seeds="0,1", base=base))
    finally:
        sweep.train.run = real_run
    return out, summary, calls, finished_mtime


def test_sweep_resumes_without_redoing_finished_runs(swept):
    out, _, calls, finished_mtime = swept
    assert [p.split("/")[-1] for p in calls] == ["kd-cl-sr-s0", "kd-cl-sr-s1"]
    assert (out / "unguided-s1" / "metrics.jsonl").stat().st_mtime_ns == finished_mtime
    rows = [json.loads(line) for line in (out / "kd-cl-sr-s0" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and "partial" not in rows[0]


def test_results_json_recomputed_from_metrics(swept):
    out, _, _, _ = swept
    results = json.loads((out / "report" / "results.json").read_text())
    final = {}
    for d in out.iterdir():
        if d.name == "report":
            continue
        rows = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
        final[d.name] = (rows[-1]["val_acc"], max(r["val_acc"] for r in rows), rows[-1]["val_loss"])
    by_variant = {r["variant"]: r for r in results["rows"]}
    assert list(by_variant) == ["unguided", "kd-cl-sr"]
    for variant, row in by_variant.items():
        for i, key in enumerate(("final_val_acc", "best_val_acc", "final_val_loss")):
            vals = [final[f"{variant}-s0"][i], final[f"{variant}-s1"][i]]
            assert row[key]["mean"] == pytest.approx(sum(vals) / 2)
            assert row[key]["std"] == pytest.approx(abs(vals[0] - vals[1]) / math.sqrt(2))
    d = [final[f"kd-cl-sr-s{s}"][0] - final[f"unguided-s{s}"][0] for s in (0, 1)]
    diff = by_variant["kd-cl-sr"]["diff_vs_baseline"]
    half = 12.7062047 * np.std(d, ddof=1) / math.sqrt(2)  # t(0.975, 1 dof)
    assert diff["mean"] == pytest.approx(np.mean(d)) and diff["n"] == 2
    assert diff["ci95"] == pytest.approx([np.mean(d) - half, np.mean(d) + half])
    assert by_variant["unguided"]["diff_vs_baseline"] is None
    md = (out / "report" / "results.md").read_text()
    assert "| kd-cl-sr |" in md and f"{100 * by_variant['kd-cl-sr']['final_val_acc']['mean']:.2f}" in md
    assert (out / "report" / "results.csv").read_text().startswith("variant,n,final_val_acc_mean")


def test_figures_open_at_the_expected_size(swept):
    out, _, _, _ = swept
    for name in ("convergence.png", "curriculum.png", "lambda.png"):
        with Image.open(out / "report" / name) as im:
            assert im.size == (1200, 450), name


def test_report_refuses_mixed_stores(swept, tmp_path):
    out, _, _, _ = swept
    other = tmp_path / "other"
    shutil.copytree(out / "unguided-s0", other)
    config = json.loads((other / "config.json").read_text())
    config["data"]["dataset_fingerprint"] = "0" * 64
    (other / "config.json").write_text(json.dumps(config))
    runs = report.find_runs([out / "kd-cl-sr-s0", other])
    with pytest.raises(KdstoreError, match="different stores"):
        report.summarize(runs)
    assert len(report.summarize(runs, allow_mixed=True)["rows"]) == 2


def test_variant_and_seed_parsing():
    assert sweep.parse_variants("paper") == ["unguided", "kd", "kd-cl", "kd-icl", "kd-cl-sr", "kd-icl-sr"]
    assert sweep.parse_variants("all") == [*sweep.parse_variants("paper"), "random-cl"]
    assert sweep.parse_variants("kd-cl',kd") == ["kd-icl", "kd"]
    assert sweep.parse_seeds("0, 1,2") == [0, 1, 2]
    with pytest.raises(KdstoreError, match="unknown variant"):
        sweep.parse_variants("kd,nope")
    with pytest.raises(KdstoreError, match="integers"):
        sweep.parse_seeds("a,b")


def test_losses_are_arms_with_the_options_meant_for_them():
    base = TrainConfig(out="x", loss_options="beta=4,gamma=3")
    configs = sweep.arms(base, ["unguided", "kd-cl-sr"], losses=["kd", "dkd", "dist"])
    assert [c.arm for c in configs] == ["unguided", "kd-cl-sr", "kd-cl-sr+dkd", "kd-cl-sr+dist"]
    assert [c.loss_options for c in configs] == ["", "", "beta=4", "beta=4,gamma=3"]
    sweep._check_losses(base, configs)
    odd = TrainConfig(out="x", loss_options="temp=2")
    with pytest.raises(KdstoreError, match="--loss-options temp=2: no swept loss takes it"):
        sweep._check_losses(odd, sweep.arms(odd, ["kd"], losses=["kd", "dkd"]))
    with pytest.raises(KdstoreError, match="--losses: unknown dkdd"):
        sweep.parse_choices("kd,dkdd", sweep.LOSSES, "--losses")
