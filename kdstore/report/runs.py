"""Run directories as `kdstore train` writes them (config.json, metrics.jsonl, summary.json), read
back for `report`, `plots` and `sweep`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from kdstore.errors import KdstoreError


@dataclass
class RunRecord:
    path: Path
    config: dict[str, Any]
    summary: dict[str, Any]
    metrics: list[dict[str, Any]]

    @property
    def arm(self) -> str:
        """What a report groups by: the variant plus its pacing, scorer and views mode when not the
        defaults (kd-cl+linear)."""
        return self.summary.get("arm", self.summary["variant"])

    @property
    def seed(self) -> int:
        return int(self.summary["seed"])


def load_run(path: Path) -> RunRecord:
    path = Path(path)
    files = {name: path / name for name in ("config.json", "summary.json", "metrics.jsonl")}
    missing = [n for n, p in files.items() if not p.is_file()]
    if missing:
        raise KdstoreError(f"{path} is not a finished run (missing {', '.join(missing)})")
    parsed = {}
    for name, p in files.items():
        lines = (
            p.read_text(errors="replace").splitlines() if name == "metrics.jsonl" else [p.read_text(errors="replace")]
        )
        try:
            parsed[name] = [json.loads(line) for line in lines if line.strip()]
        except json.JSONDecodeError as e:
            raise KdstoreError(
                f"{p} is cut off or corrupt ({e.msg} in a line of {len(lines)}); rerun the run or remove it"
            ) from None
    return RunRecord(path, parsed["config.json"][0], parsed["summary.json"][0], parsed["metrics.jsonl"])


def find_runs(paths: Sequence[Path | str]) -> list[RunRecord]:
    """Each path is a run directory or a directory holding run directories (a sweep)."""
    runs = []
    for p in map(Path, paths):
        if (p / "summary.json").is_file():
            runs.append(load_run(p))
        elif p.is_dir():
            runs.extend(load_run(d) for d in sorted(p.iterdir()) if (d / "summary.json").is_file())
        else:
            raise KdstoreError(f"{p} is not a run directory")
    if not runs:
        raise KdstoreError(f"no finished runs under {', '.join(map(str, paths))}")
    return runs
