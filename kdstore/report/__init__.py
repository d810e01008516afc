"""Experiments and what they show: sweeps of runs, their tables and figures."""
