"""A write that fails is one line naming the file and the free space, in plain words: torch's
zip writer's report of a short write ("[enforce fail at inline_container.cc:...] ... unexpected
pos ...") is said as a full disk, without torch's internals."""

from __future__ import annotations

import errno

import pytest

from kdstore.errors import DiskError
from kdstore.runtime.files import writing


def test_torchs_short_write_is_said_plainly(tmp_path):
    with pytest.raises(DiskError) as e:
        with writing(tmp_path / "checkpoint.pt"):
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")
    text = str(e.value)
    assert (
        text.startswith(f"{tmp_path / 'checkpoint.pt'}: could not be written (the disk is full; ")
        and "MiB free" in text
    )
    assert "enforce" not in text and "inline_container" not in text and "unexpected pos" not in text


def test_an_os_error_keeps_its_reason(tmp_path):
    with pytest.raises(DiskError, match=r"metrics.jsonl: could not be written \(Read-only file system; .* MiB free"):
        with writing(tmp_path / "metrics.jsonl"):
            raise OSError(errno.EROFS, "Read-only file system")
    with pytest.raises(DiskError, match=r"could not be written \(the disk is full: No space left on device; "):
        with writing(tmp_path / "x"):
            raise OSError(errno.ENOSPC, "No space left on device")
