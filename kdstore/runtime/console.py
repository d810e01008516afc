"""Terminal output: rich progress bars (images per second, ETA) on a terminal, and plain lines
that are never wrapped or cut when the output is a file or a pipe (a batch job's log)."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.text import Text

# On a terminal rich fits output to its width; in a file or pipe lines keep their full length
# (soft wrap) and tables get room for long names and paths.
console = Console(stderr=True)


if not console.is_terminal:
    console = Console(stderr=True, soft_wrap=True, width=240)


def say(line: str) -> None:
    """One log line (epoch results, a run starting, a path written): printed whole and flushed
    at once, also when stderr is a file."""
    console.print(line, soft_wrap=True, highlight=False)
    console.file.flush()


def clock(seconds: float) -> str:
    """h:mm:ss."""
    m, s = divmod(int(round(seconds)), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}"


class _RateColumn(ProgressColumn):
    """Images per second since the task started: the figure metrics.jsonl records for an epoch."""

    def render(self, task) -> Text:  # noqa: ANN001 - rich's Task
        elapsed = task.finished_time or task.elapsed
        return Text(f"{task.completed / elapsed:,.0f} img/s" if elapsed else "- img/s", style="progress.data.speed")


def _progress(*counts: ProgressColumn, enabled: bool, transient: bool) -> Progress:
    """A bar: the task's description, the bar, `counts` (what is done, how fast), then ETA; on a
    terminal only (a log gets the lines `say` prints instead), redrawn on rich's clock, so
    updating it costs no more than setting a number."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        *counts,
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        disable=not (enabled and console.is_terminal),
        transient=transient,
        refresh_per_second=4,
    )


def bytes_progress(enabled: bool = True) -> Progress:
    """A progress bar whose units are bytes (push, pull): bytes done of the file's, bytes/s and ETA."""
    return _progress(DownloadColumn(), TransferSpeedColumn(), enabled=enabled, transient=True)


def images_progress(enabled: bool = True) -> Progress:
    """A progress bar whose units are images; extra task fields appear after the rate, then the
    time elapsed."""
    columns = (MofNCompleteColumn(), _RateColumn(), TextColumn("{task.fields[info]}"), TimeElapsedColumn())
    return _progress(*columns, enabled=enabled, transient=False)
