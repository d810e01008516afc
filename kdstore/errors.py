"""The one exception type the CLI turns into a one-line message and a non-zero exit."""

from __future__ import annotations


class KdstoreError(Exception):
    """A problem with the user's input or environment, stated in one line."""


class DiskError(KdstoreError):
    """A file could not be written (a full or read-only disk): the work done so far may be kept."""
