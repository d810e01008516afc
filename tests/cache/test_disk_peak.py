"""The disk check counts a cache's peak: on small disks (tmpfs) around the peak of a digits cache
with views, a cache either completes, or is refused before it writes anything in one line naming
what it needs and what is free; it never runs out part-way. The peak the check uses is within
10% of the peak measured (the disk's used bytes, polled every millisecond while it runs)."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from kdstore.cache import write as cache
from kdstore.cache.config import CacheConfig
from kdstore.store.verification import verify

pytestmark = [pytest.mark.slow, pytest.mark.heavy]  # mounts small disks and caches onto them

ARGS = ["--dataset", "digits", "--allow-untrained", "--teacher", "cifar_resnet8", "--views", "4", "--workers", "2"]


def _used(disk: Path) -> int:
    s = os.statvfs(disk)
    return (s.f_blocks - s.f_bfree) * s.f_frsize


def _cache_measured(disk: Path) -> tuple[subprocess.CompletedProcess, int]:
    """`kdstore cache` onto `disk`, and the most bytes the disk held while it ran."""
    exe = Path(sys.executable).parent / "kdstore"
    peak, done = [0], threading.Event()

    def poll() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _used(disk))
            done.wait(0.001)

    watcher = threading.Thread(target=poll)
    watcher.start()
    try:
        ran = subprocess.run(
            [str(exe), "cache", *ARGS, "--out", str(disk / "s"), "--no-progress"],
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "COLUMNS": "200"},
        )
    finally:
        done.set()
        watcher.join()
    return ran, peak[0]


def test_a_cache_on_a_small_disk_completes_or_is_refused_before_it_writes(tmp_path):
    cfg = CacheConfig(**_options(tmp_path / "probe"), dry_run=True, progress=False)
    peak = cache.dry_run(cfg).peak  # what the check counts, estimated on a large disk
    outcomes = {}
    for factor in (0.9, 0.98, 1.02, 1.1):
        disk = tmp_path / f"disk-{factor}"
        disk.mkdir()
        size = math.ceil(peak * factor / 4096) * 4096
        if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(disk)]).returncode:
            pytest.skip("this machine does not let the tests mount a small tmpfs")
        try:
            ran, measured = _cache_measured(disk)
            said = [line for line in ran.stderr.splitlines() if line.startswith("error:")]
            if ran.returncode == 0:
                assert verify(disk / "s") == []
                assert abs(peak - measured) <= 0.10 * measured, (factor, peak, measured)
                outcomes[factor] = "completed"
            else:
                assert len(said) == 1 and "the cache needs about" in said[0] and "is free there" in said[0], ran.stderr
                assert measured == 0 and not any(disk.iterdir()), f"{factor}: refused after writing"
                outcomes[factor] = "refused"
            assert "Traceback" not in ran.stderr and "No space left" not in ran.stderr, ran.stderr[-2000:]
        finally:
            subprocess.run(["umount", "-l", str(disk)], capture_output=True)
    assert outcomes[0.9] == "refused" and outcomes[1.1] == "completed", outcomes


def _options(out: Path) -> dict:
    return dict(
        dataset="digits",
        allow_untrained=True,
        teacher="cifar_resnet8",
        views=4,
        workers=2,
        out=str(out),
    )
