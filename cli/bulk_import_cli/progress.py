"""Watching a run: a rich progress bar on a terminal, plain lines otherwise (both on stderr).

The row count is not known before the end: the bar's total is estimated from the rows read per
byte of the file so far, and its progress is the rows with an outcome. Answered chunks and the
row rate are beside it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from rich.progress import (
    BarColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)

from bulk_import_cli import console

if TYPE_CHECKING:
    from bulk_import_cli.local_import import Snapshot

# Plain progress lines (stderr not a terminal): one every this many seconds.
PLAIN_EVERY_SECONDS = 5.0


def estimated_rows(snapshot: Snapshot) -> int | None:
    """The file's rows, estimated from those read per byte so far (None before any)."""
    if not snapshot.rows or not snapshot.bytes_read:
        return None
    if snapshot.bytes_read >= snapshot.size:
        return snapshot.rows
    return max(snapshot.rows, round(snapshot.rows * snapshot.size / snapshot.bytes_read))


def describe(snapshot: Snapshot, elapsed: float) -> str:
    """One plain progress line."""
    done = snapshot.counts.rows
    rate = done / elapsed if elapsed > 0 else 0.0
    share = 100 * snapshot.bytes_read / snapshot.size if snapshot.size else 100.0
    return (
        f"progress: {done:,} rows done of {snapshot.rows:,} read, {snapshot.chunks:,} chunks "
        f"answered, {rate:,.0f} rows/s, {min(share, 100.0):.0f}% of the file read"
    )


class Display:
    """Shows snapshots as they come: ``update`` often, ``close`` once."""

    def __init__(self, tty: bool, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.started = clock()
        self.last_line = self.started
        self.progress: Progress | None = None
        self.task = None
        if tty:
            self.progress = Progress(
                TextColumn("[bold]importing"),
                BarColumn(),
                TaskProgressColumn(),
                TextColumn("{task.fields[rows]} rows · {task.fields[chunks]} chunks"),
                TextColumn("{task.fields[rate]} rows/s"),
                TimeRemainingColumn(),
                console=console.err(),
                transient=False,
            )
            self.progress.start()
            self.task = self.progress.add_task("import", total=None, rows="0", chunks="0", rate="0")

    def update(self, snapshot: Snapshot) -> None:
        now = self.clock()
        elapsed = now - self.started
        if self.progress is not None and self.task is not None:
            done = snapshot.counts.rows
            rate = done / elapsed if elapsed > 0 else 0.0
            self.progress.update(
                self.task,
                total=estimated_rows(snapshot),
                completed=done,
                rows=f"{done:,}",
                chunks=f"{snapshot.chunks:,}",
                rate=f"{rate:,.0f}",
            )
            return
        if now - self.last_line >= PLAIN_EVERY_SECONDS:
            self.last_line = now
            console.info(describe(snapshot, elapsed))

    def note(self, message: str) -> None:
        if self.progress is not None:
            self.progress.console.print(message, markup=False)
        else:
            console.info(message)

    def close(self, snapshot: Snapshot) -> None:
        if self.progress is not None:
            self.update(snapshot)
            self.progress.stop()
            return
        console.info(describe(snapshot, self.clock() - self.started))
