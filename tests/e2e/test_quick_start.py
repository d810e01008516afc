"""The README's quick start runs as written: its commands, in a fresh directory, through the
installed `kdstore` entry point, each exiting 0 and leaving what the next one reads (heavy tier:
a teacher, a cache with views and a sweep of several runs take a few minutes on 2 cores)."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import readme_commands

pytestmark = [pytest.mark.slow, pytest.mark.heavy]


def test_the_quick_start_has_a_whole_workflow():
    names = [shlex.split(line)[1] for line in readme_commands("Quick start")]
    assert names[:3] == ["teacher", "cache", "train"] and {"sweep", "report", "verify"} <= set(names)


def test_the_quick_start_runs_as_written(tmp_path):
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", "COLUMNS": "200"}
    for line in readme_commands("Quick start"):
        done = subprocess.run(shlex.split(line), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{line}\n{done.stderr[-2000:]}"
        assert "Traceback" not in done.stderr, line
    assert (tmp_path / "stores" / "digits" / "MANIFEST.json").is_file()
    assert (tmp_path / "runs" / "kd-cl-sr-dkd" / "summary.json").is_file()
    assert (tmp_path / "runs" / "sweep" / "report" / "results.md").is_file()
