"""Where reading a JSONL or CSV file can be taken up again: a cut every ``resume_every_lines``
lines, a resume point stored at some of them, and a later run's resume from one.

At a cut every open chunk closes, whatever the blocks, so reading from the cut's line (CSV: the
first record from there) makes the chunks after it as reading from the start does. A point
stores what a run needs there besides the file: the chunks numbered before it, the counts, the
dedupe claims (parts appended point by point), for gzip an access point, and for CSV the
header's names (docs/architecture.md, "Resume points").
"""

from __future__ import annotations

import struct
from typing import IO, TYPE_CHECKING

from bulk_import import ingest
from bulk_import.model import ResumePoint
from bulk_import.observability import logger

if TYPE_CHECKING:
    from bulk_import.ingest import Chunker, Dedupe
    from bulk_import.ingest.gzip_access import AccessPoint
    from bulk_import.run.context import RunContext
    from bulk_import.run.dispatch import Dispatcher


class ResumePoints:
    """The cuts of one run's reading, the points it stores, and the point it resumed from."""

    def __init__(
        self, ctx: RunContext, dispatcher: Dispatcher, chunker: Chunker, seen: Dedupe
    ) -> None:
        self.ctx = ctx
        self.dispatcher = dispatcher
        self.chunker = chunker
        self.seen = seen
        tunables = ctx.wiring.tunables
        self.every = tunables.resume_every_lines
        self.point_bytes = tunables.resume_point_bytes
        self.next_cut = self.every + 1  # every chunk closes before this line
        self.skip_below = 1  # lines before it were done by the invocations before
        self.last_offset = 0  # where the last point was (or the one resumed from)
        # The dedupe parts of the claims so far (those loaded, then those this run stored), and
        # how many points this run stored (each names its objects by that count).
        self.seen_parts: list[str] = []
        self.stored = 0

    def cut(
        self,
        stream: IO[bytes],
        first: int,
        offset: int,
        rejected: int,
        *,
        line: int | None = None,
        header: list[str] | None = None,
        clean: bool = True,
    ) -> None:
        """Close every chunk before ``line`` (JSONL: ``next_cut``; CSV: the first record on or
        after it); store a point there once reading has gone ``point_bytes`` past the last.
        Reading can start there at line ``first``, decompressed byte ``offset`` (JSONL: the
        block holding the line; CSV: the record, after a ``header``, when ``clean``)."""
        line = self.next_cut if line is None else line
        while self.next_cut <= line:
            self.next_cut += self.every
        self.dispatcher.send(self.chunker.flush())
        if not clean or offset - self.last_offset < self.point_bytes:
            return
        start = ingest.start_at(stream, offset)
        if start is None:  # a stream that cannot be entered part-way
            return
        ctx = self.ctx
        self.last_offset = offset
        self.stored += 1
        seen, access = ctx.resume_objects.put(
            self.stored, self.seen.part(), None if start.access is None else start.access.dump()
        )
        self.seen_parts.append(seen)
        ctx.ledger.resume_points.append(
            ResumePoint(
                line=line,
                start_line=first,
                offset=offset,
                seq=self.dispatcher.next_seq,
                rows_read=ctx.progress.rows_read,
                rejected=rejected,
                claims=len(self.seen),
                seen=list(self.seen_parts),
                access=access,
                header=header,
            )
        )

    def resume(self, point: ResumePoint) -> ingest.StartAt | None:
        """Take up the file's reading at ``point``: where to open the object, or None (from the
        start, and no point of the checkpoint's used again) if its objects are gone or do not
        match it."""
        store = self.ctx.resume_objects
        access = None
        if point.access is not None:
            access = _access_point(store.read(point.access))
        # Fetched at once, loaded in order as each comes: one part in memory at a time.
        fetched = [self.dispatcher.submit(store.read, key) for key in point.seen]
        usable = point.access is None or (access is not None and access.fits(point.offset))
        for future in fetched:
            part = future.result()
            if part is None or not usable:
                usable = False
                continue
            self.seen.load(part)
        if not usable or len(self.seen) != point.claims:
            logger.warning("a resume point's objects are gone or do not match it; from the start")
            self.seen.clear()
            self.ctx.ledger.resume_points = []
            return None
        self.seen_parts = list(point.seen)
        progress = self.ctx.progress
        progress.rows_read = point.rows_read
        progress.line = point.line - 1
        # Chunks are numbered from the point's: those before were cut before it.
        self.dispatcher.next_seq = self.dispatcher.last_lease_seq = point.seq
        self.skip_below = point.line
        # The first multiple after the point's line (a CSV point's record may start past one).
        self.next_cut = ((point.line - 1) // self.every + 1) * self.every + 1
        self.last_offset = point.offset
        return ingest.StartAt(point.offset, access)


def _access_point(stored: bytes | None) -> AccessPoint | None:
    """The stored access point; None when it is gone or cut short."""
    from bulk_import.ingest.gzip_access import AccessPoint  # noqa: PLC0415 - gzip only

    if stored is None:
        return None
    try:
        return AccessPoint.load(stored)
    except (struct.error, ValueError):
        return None
