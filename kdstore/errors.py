"""The one exception type the CLI turns into a one-line message and a non-zero exit."""

from __future__ import annotations

import sys


class KdstoreError(Exception):
    """A problem with the user's input or environment, stated in one line."""


class DiskError(KdstoreError):
    """A file could not be written (a full or read-only disk): the work done so far may be kept."""


class Diverged(KdstoreError):
    """A training run stopped because its loss went NaN or infinite (its stopped.json says when)."""


def one_line_errors() -> None:
    """For a script of one's own: an uncaught KdstoreError prints one line (`error: ...`) on
    stderr, as the kdstore commands do, instead of a traceback (the exit status stays 1); any
    other exception keeps its traceback."""
    default = sys.excepthook

    def hook(kind, value, traceback) -> None:
        if isinstance(value, KdstoreError):
            print(f"error: {value}", file=sys.stderr)
        else:
            default(kind, value, traceback)

    sys.excepthook = hook
