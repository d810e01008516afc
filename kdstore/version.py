"""The package version (recorded in every store and run)."""

__version__ = "0.1.0"
