"""`bench` writes every figure; the FLOP limit matches a hand count. No test asserts a speed."""

import json

import pytest
import torch.nn as nn
from click.testing import CliRunner

from kdstore.cli.main import cli
from kdstore.train import bench
from kdstore.train.bench import break_even, flop_counts

pytestmark = pytest.mark.slow  # caches, trains or kills processes: the full suite only


def test_flop_limit_by_hand():
    # teacher on 3x8x8: conv 3->8 (3x3, pad 1): 2 * 8*8*8 outputs * 27 = 27,648; linear 512->10: 2*512*10 = 10,240
    teacher = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.Flatten(), nn.Linear(512, 10))
    # student 192->16->10: forward 2*192*16 + 2*16*10 = 6,464; backward: weight grads 6,144 + 320,
    # input grad of the second layer 320 (none for the first: the images need no gradient) = 6,784
    student = nn.Sequential(nn.Flatten(), nn.Linear(192, 16), nn.ReLU(), nn.Linear(16, 10))
    f = flop_counts(teacher, student, 8, 8, 10)
    assert f["teacher_forward"] == 37_888
    assert f["student_step"] == 13_248
    assert f["limit"] == pytest.approx((37_888 + 13_248) / 13_248)


def test_break_even_arithmetic():
    ips = {"unguided": 1000.0, "offline": 1000.0, "online": 500.0}
    b = break_even(n_train=1000, n_val=0, ips=ips, cache_ips=2000.0, epochs=10)
    # cache 0.5 s; an epoch costs 2 s online, 1 s offline -> paid back after 0.5 epochs
    assert b["cache_seconds"] == 0.5 and b["break_even_epochs"] == 0.5
    assert b["sweep_seconds_online"] == 10 * (5 * 2.0 + 1.0)
    assert b["sweep_seconds_offline"] == 0.5 + 10 * (5 * 1.0 + 1.0)


def test_paired_speed_reports_the_spread_and_flags_noise():
    # Per-step times of the same batches: offline takes 10 ms on every step; unguided 9, 10, 11, ... ms.
    modes = {
        "offline": {"step_ms": [10.0] * 5},
        "unguided": {"step_ms": [9.0, 10.0, 11.0, 12.0, 8.0]},
        "online": {"step_ms": [30.0, 31.0, 29.0, 30.0, 30.0]},
    }
    noisy = bench.paired_speed(modes, "offline", "unguided")  # ratios 0.9 1.0 1.1 1.2 0.8
    assert (
        noisy["median"] == pytest.approx(1.0)
        and noisy["p10"] == pytest.approx(0.84)
        and noisy["p90"] == pytest.approx(1.16)
    )
    assert noisy["within_noise"]
    clear = bench.paired_speed(modes, "offline", "online")  # ratios 3.0 3.1 2.9 3.0 3.0
    assert clear["median"] == pytest.approx(3.0) and not clear["within_noise"]


def test_bench_runs_and_writes_every_field(digits_store, tmp_path):
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(
        cli,
        [
            "bench",
            "--store",
            str(digits_store),
            "--student",
            "cifar_resnet8",
            "--batch-size",
            "32",
            "--steps",
            "2",
            "--warmup",
            "1",
            "--device",
            "cpu",
            "--json",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    r = json.loads(out.read_text())
    for mode in ("unguided", "offline", "online"):
        m = r["modes"][mode]
        assert m["images_per_s"] > 0 and 0 <= m["data_wait_frac"] <= 1 and m["peak_memory_bytes"] > 0
        assert (
            m["timed_steps"] == 2
            and len(m["step_ms"]) == 2
            and m["step_ms_p10"] <= m["step_ms_median"] <= m["step_ms_p90"]
        )
    assert r["memory_kind"].startswith("process RSS")
    assert set(r["paired"]) == {"offline_vs_unguided", "offline_vs_online"}
    assert (
        "peak memory: process RSS" in result.output and result.output.count("process RSS") == 1
    )  # the note once, not per row
    assert set(r) >= {
        "config",
        "device",
        "device_name",
        "torch",
        "teacher",
        "student",
        "offline_vs_unguided",
        "online_offline_ratio",
        "flops_per_image",
        "ratio_vs_flop_limit",
        "cache",
        "break_even",
    }
    assert r["teacher"]["model"] == "cifar_resnet8" and r["flops_per_image"]["limit"] > 1
    assert r["ratio_vs_flop_limit"] == pytest.approx(r["online_offline_ratio"] / r["flops_per_image"]["limit"])
    assert set(r["cache"]) == {"cache_images_per_s", "teacher_forward_images_per_s", "cache_vs_forward"}
    assert r["break_even"]["sweep_epochs"] == 30
