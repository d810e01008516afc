"""runtime/allocator.py: glibc's malloc keeps a step's freed memory instead of giving it back
(and faulting it in again next step), and leaves the user's own choice alone."""

from __future__ import annotations

import ctypes.util
import os
import platform
import subprocess
import sys

import pytest

from kdstore.runtime import allocator

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")

# A training step's pattern: a dozen 8 MB blocks taken, then all freed at once, 30 times over;
# prints (whether tune() set anything, the minor page faults of the 30 rounds).
# The module is loaded from its file: importing the kdstore package (torch) would take seconds.
ROUNDS = """
import importlib.util, resource, sys
spec = importlib.util.spec_from_file_location("allocator", sys.argv[2])
allocator = importlib.util.module_from_spec(spec)
spec.loader.exec_module(allocator)
tuned = allocator.tune() if sys.argv[1] == "tune" else False
blocks = [bytearray(8 << 20) for _ in range(12)]  # glibc's dynamic threshold has seen this size
del blocks
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(30):
    blocks = [bytearray(8 << 20) for _ in range(12)]
    del blocks
print(tuned, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _rounds(mode: str, **env: str) -> tuple[str, int]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "KDSTORE_SYSTEM_MALLOC"))}
    out = subprocess.run(
        [sys.executable, "-c", ROUNDS, mode, allocator.__file__],
        env={**clean, **env},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return out[0], int(out[1])


def test_tuned_malloc_keeps_a_steps_memory():
    assert ctypes.util.find_library("c")
    tuned, faults = _rounds("tune")
    default, default_faults = _rounds("default")
    assert (tuned, default) == ("True", "False")
    # 30 rounds of 96 MB: with glibc's defaults each round gives the heap back and faults every
    # page in again (~24,600 pages a round); tuned, the heap is kept after the first round
    assert default_faults > 30 * 20_000, default_faults
    assert faults < default_faults / 20, (faults, default_faults)


@pytest.mark.parametrize("env", [{"MALLOC_TRIM_THRESHOLD_": "131072"}, {"KDSTORE_SYSTEM_MALLOC": "1"}])
def test_the_users_choice_is_left_alone(env):
    tuned, _ = _rounds("tune", **env)
    assert tuned == "False"
