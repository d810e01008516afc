"""`cache --dry-run` and the estimate every cache prints: sizes computed as FFCV and teacher.h5
lay the store out (exact .beton files with one writer worker), nothing written by a dry run, and
a cache that cannot fit the disk refused in one line before it writes anything."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from kdstore.cache import estimate as estimate_mod
from kdstore.cache import write as cache
from kdstore.cache.config import CacheConfig
from kdstore.cache.estimate import real_sizes
from kdstore.cli.main import cli

pytestmark = pytest.mark.slow


def _cfg(digits_teacher, out, **kw) -> CacheConfig:
    return CacheConfig(
        dataset="digits",
        out=str(out),
        checkpoint=str(digits_teacher / "checkpoint.pt"),
        batch_size=200,
        workers=1,
        progress=False,
        **kw,
    )


def test_the_dry_run_writes_nothing_and_sizes_the_store_it_prices(digits_teacher, tmp_path):
    options = {"views": 2, "logits_dtype": "int8"}
    est = cache.dry_run(_cfg(digits_teacher, tmp_path / "s", dry_run=True, **options))
    assert list(tmp_path.iterdir()) == []  # no store, no staging directory
    assert est.free > 0 and est.wall > 0 and est.teacher_images_per_s > 0
    assert {"setup", "estimate", "betons", "teacher", "views", "finish"} <= set(est.seconds)
    cache.run(_cfg(digits_teacher, tmp_path / "s", **options))
    real = real_sizes(tmp_path / "s")
    assert est.parts["train.beton"] == real["train.beton"] and est.parts["val.beton"] == real["val.beton"]
    assert abs(est.size - real["store"]) <= 0.05 * real["store"], (est.parts, real)
    assert abs(est.parts["views"] - real["views"]) <= 0.05 * real["views"], (est.parts, real)


def test_a_cache_that_cannot_fit_the_disk_is_refused_in_one_line(digits_teacher, tmp_path, monkeypatch):
    monkeypatch.setattr(estimate_mod, "free_mib", lambda path: 1.0)
    for dry in (["--dry-run"], []):
        args = ["cache", "--dataset", "digits", "--checkpoint", str(digits_teacher / "checkpoint.pt")]
        result = CliRunner().invoke(cli, args + ["--out", str(tmp_path / "s"), "--no-progress", *dry])
        last = result.output.strip().splitlines()[-1]
        assert result.exit_code != 0 and "Traceback" not in result.output, result.output
        assert last.startswith("error:") and "the cache needs about" in last and "1.0 MiB is free there" in last
    assert list(tmp_path.iterdir()) == []  # refused before anything was written
