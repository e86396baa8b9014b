"""Reading the file: every row validated, deduplicated and chunked, or rejected with a reason.

Reading, validation and outcome writing happen on the calling thread. ``progress.line`` (a
checkpoint's ``lines_done``) is past a row only once any outcome of its own (rejected,
duplicate) is written, so that a later invocation, which reads and chunks the rows again, writes
none of those twice. A JSONL block's well-formed rows pass it together, before the chunks they
close are sent; any other row, just after it is taken (and what it closes sent).
"""

from __future__ import annotations

import itertools
from concurrent.futures import Future
from typing import IO, TYPE_CHECKING, NamedTuple

from bulk_import import ingest
from bulk_import.errors import MalformedFile, Superseded
from bulk_import.model import (
    OAUTH1_EXPIRES_AT,
    OAUTH1_PROVIDERS,
    ResumePoint,
    WellFormedRow,
)
from bulk_import.observability import logger
from bulk_import.run.dispatch import DeadlineReached
from bulk_import.run.resume_points import ResumePoints
from bulk_import.run.rows import Rows
from bulk_import.run.stop import too_many_rejected

if TYPE_CHECKING:
    from bulk_import.run.context import RunContext
    from bulk_import.run.dispatch import Dispatcher

PROGRESS_EVERY_SECONDS = 15.0
DEADLINE_CHECK_EVERY_RECORDS = 64
NO_ROWS = (
    "the file holds no rows (empty, a CSV header alone, an empty JSON array, or nothing but "
    "blank lines): check the export"
)
# Why a resume stops when an unversioned key holds other bytes than its checkpoint's.
REPLACED = "the key holds other bytes than the upload this import started from"


class Opened(NamedTuple):
    source: ingest.SourceObject
    stream: IO[bytes]


class Intake:
    """Reads a file's rows and validates them; ``Rows`` takes each where it goes."""

    def __init__(self, ctx: RunContext, dispatcher: Dispatcher) -> None:
        self.ctx = ctx
        self.dispatcher = dispatcher
        self.rows = Rows(ctx, dispatcher)
        self.providers = providers = ctx.settings.providers
        self.last_progress = ctx.wiring.clock()
        # The file's, once its default provider is known.
        self.context = ingest.context_for(None, providers)
        self.points = ResumePoints(ctx, dispatcher, self.rows.chunker, self.rows.seen)
        # HEAD and GET the object on a posting thread while this one reads the checkpoint: a
        # failure is raised where the stream is taken; a run that turns out not to need the
        # object closes it unread.
        ref = ctx.ref
        self.opening: Future[Opened] | None = dispatcher.submit(
            self._open, ref.bucket, ref.key, ref.version_id
        )

    def _open(self, bucket: str, key: str, version_id: str | None) -> Opened:
        _, compression = ingest.detect(key)
        s3 = self.ctx.wiring.s3
        described = ingest.describe(s3, bucket, key, version_id)
        max_bytes = self.ctx.settings.max_decompressed_bytes
        return Opened(described, ingest.open_stream(s3, described, compression, max_bytes))

    def _opened(self) -> Opened:
        """The object as opened in advance; opened again if a checkpoint named another version."""
        opening, self.opening = self.opening, None
        source = self.ctx.source
        if opening is not None:
            opened = opening.result()
            if source.version_id == self.ctx.ref.version_id:
                return opened
            opened.stream.close()
        return self._open(source.bucket, source.key, source.version_id)

    def close(self) -> None:
        if self.opening is not None:  # opened for nothing (a skip, an error): closed
            self.opening.add_done_callback(_close_opened)

    def read(self) -> None:
        """Read the whole file (or up to the deadline), handing every chunk on as it closes."""
        ctx = self.ctx
        fmt, compression = ingest.detect(ctx.source.key)
        described, stream = self._opened()
        if ctx.ledger.checkpoint is None:
            ctx.source = described.ref.model_copy(update={"sequencer": ctx.ref.sequencer})
        elif ctx.source.etag and described.ref.etag != ctx.source.etag:
            # An unversioned key uploaded again since the checkpoint: replaying other content
            # against it would send other rows under its chunk numbers. The new upload's own
            # event imports it.
            stream.close()
            raise Superseded(REPLACED, described.ref)
        point = ctx.ledger.resume_from
        if compression is ingest.Compression.GZIP and not ingest.can_resume(compression):
            logger.warning("no system zlib to load: gzip is read from its start by each run")
        if fmt is ingest.Format.JSON or not ingest.can_resume(compression):
            point = None
        start = None if point is None else self.points.resume(point)
        if start is not None and point is not None:
            self.rows.rejected = point.rejected
            stream.close()  # opened again at the point: the same version (or ETag)
            stream = ingest.open_stream(
                ctx.wiring.s3, described, compression, ctx.settings.max_decompressed_bytes, start
            )
        ctx.dry_run = ingest.dry_run_requested(described.metadata)
        default_provider = ingest.provider_from_key(
            ctx.source.key, ctx.settings.incoming_prefix, self.providers
        ) or described.metadata.get("provider")
        self.context = ingest.context_for(default_provider, self.providers)
        logger.info(
            "reading file",
            extra={
                "format": fmt.value,
                "compression": compression.value,
                "size": ctx.source.size,
                "segment": ctx.ref.segment,
                "dry_run": ctx.dry_run,
                "from_line": self.points.skip_below,
                "from_byte": 0 if start is None else start.offset,
            },
        )
        with stream:
            if fmt is ingest.Format.JSONL:
                self._take_jsonl(stream, default_provider, point if start else None)
            else:
                self._take_records(stream, fmt, default_provider, point if start else None)
        if ctx.progress.rows_read == 0:
            # Read to its end (the count runs from the file's start, through a resume point
            # too): nothing to migrate is an export gone wrong, not a file that succeeded.
            raise MalformedFile(NO_ROWS)
        self._check_rejected()  # a whole file of them, read in fewer blocks than the threshold
        self.dispatcher.send(self.rows.chunker.flush())
        ctx.progress.read_to_end = True

    def _take_records(
        self,
        stream: IO[bytes],
        fmt: ingest.Format,
        default_provider: str | None,
        point: ResumePoint | None,
    ) -> None:
        """CSV and JSON arrays, a record at a time; CSV chunks close at the first record on or
        after each multiple of ``every`` lines (the resume points' places)."""
        progress = self.ctx.progress
        points = self.points
        place = ingest.CsvPlace()
        if point is not None:  # CSV: the reader starts at the point's record, after the header
            place = ingest.CsvPlace(point.offset, point.header)
        records = ingest.read_records(
            stream, fmt, self.ctx.settings.max_row_bytes, place, 1 if point is None else point.line
        )
        cuts = fmt is ingest.Format.CSV
        # Counted from the file's start (a point carries the count): the checks fall on the
        # same records however the file was split into invocations.
        for n, record in enumerate(records, progress.rows_read):
            if n % DEADLINE_CHECK_EVERY_RECORDS == 0:
                self._between_rows()
            if cuts and record.line >= points.next_cut:
                points.cut(
                    stream, record.line, place.offset, self.rows.rejected,
                    line=record.line, header=place.names, clean=place.clean,
                )  # fmt: skip
            progress.rows_read += 1
            self._take(record, default_provider)
            progress.line = record.line

    def _between_rows(self) -> None:
        ctx = self.ctx
        # Only after progress past the checkpoint, so every invocation moves on.
        if ctx.progress.line > ctx.ledger.lines_done and not self.dispatcher.time_left():
            raise DeadlineReached
        # From the checkpoint on: the invocations before judged the rows before it.
        if self.rows.rejected and ctx.progress.line >= ctx.ledger.lines_done:
            self._check_rejected()
        if ctx.wiring.clock() - self.last_progress > PROGRESS_EVERY_SECONDS:
            self.log_progress()
        if ctx.ledger.unsaved_bytes > ctx.wiring.tunables.unsaved_spool_bytes:
            # Rows that are not sent (rejected, or after a stop) bring no checkpoints of their
            # own: without one, their outcomes would pile up in /tmp, and a retry would not know
            # of the stop.
            ctx.save_checkpoint(next_segment=ctx.ref.segment, lease=self.dispatcher.lease_so_far())

    def _check_rejected(self) -> None:
        """Stop reading a file that is plainly not a connection file (see ``too_many_rejected``):
        the rows read so far keep their outcomes, nothing more is sent."""
        settings = self.ctx.settings
        rows = self.ctx.progress.rows_read
        error = too_many_rejected(
            self.rows.rejected,
            rows,
            settings.rejected_stop_after_rows,
            settings.rejected_stop_percent,
        )
        if error is not None:
            logger.error("too many rows rejected; file stopped", extra={"rows_read": rows})
            raise error

    def _take_jsonl(
        self, stream: IO[bytes], default_provider: str | None, point: ResumePoint | None
    ) -> None:
        """JSONL in blocks; every chunk closes at each multiple of ``every`` lines (the resume
        points' places), and a resumed run starts at its point's block."""
        limit = self.ctx.settings.max_row_bytes
        block_size = self.ctx.wiring.tunables.jsonl_block_bytes
        at = (1, 0) if point is None else (point.start_line, point.offset)
        points = self.points
        # A resumed read's first block is the one the point is in: the run that stored the
        # point made that block's checks, with the counts before it.
        checked = point is not None
        for first, block, offset in ingest.jsonl_blocks(stream, limit, block_size, *at):
            if not checked:
                self._between_rows()
            checked = False
            lines, start, end = block, first, first + len(block)
            skip_below = points.skip_below
            if start < skip_below:  # done by the invocations before
                if end <= skip_below:
                    continue
                lines, start = lines[skip_below - start :], skip_below
            while end > points.next_cut:  # a resume point's place falls in this block
                cut = points.next_cut
                if cut > start:
                    self._take_block(start, lines[: cut - start], default_provider)
                    lines, start = lines[cut - start :], cut
                points.cut(stream, first, offset, self.rows.rejected)
            if lines:
                self._take_block(start, lines, default_provider)

    def _take_block(
        self, first: int, lines: list[bytes | None], default_provider: str | None
    ) -> None:
        """The hot loop: well-formed rows go to ``Rows.accept_all`` together, in line order.

        Everything else (blank and over-long lines, lenient spellings, errors) goes through
        ``_take`` like the other formats' rows, once the well-formed rows before it are
        accepted; so does an OAuth 1.0 row whose ``expires_at`` is not the constant
        (WellFormedRow cannot compare two fields): the full model rejects it.
        """
        progress = self.ctx.progress
        blank = lines.count(b"")
        if blank == len(lines):  # nothing to validate: the checkpoint moves past them
            progress.line = first + blank - 1
            return
        limit = self.ctx.settings.max_row_bytes
        # A default spelled otherwise ("Oura") is normalised, or refused, by the full model.
        providers = self.providers
        default = default_provider if default_provider in providers else None
        oauth1, oauth1_expires_at = OAUTH1_PROVIDERS, OAUTH1_EXPIRES_AT
        progress.rows_read += len(lines) - blank
        rows = ingest.validate_well_formed(lines, providers)
        # The well-formed rows not accepted yet: their lines, providers and rows.
        taken: list[int] = []
        taken_providers: list[str] = []
        taken_rows: list[WellFormedRow] = []
        for line, raw, row in zip(itertools.count(first), lines, rows, strict=False):
            if (
                row is not None
                and (provider := row.pop("provider", None) or default)
                and (provider not in oauth1 or row["expires_at"] == oauth1_expires_at)
            ):
                taken.append(line)
                taken_providers.append(provider)
                taken_rows.append(row)
            elif raw is None or raw:
                if taken:
                    self.rows.accept_all(taken, taken_providers, taken_rows)
                    taken, taken_providers, taken_rows = [], [], []
                progress.line = line - 1  # this row is the first not taken yet
                if raw is None:
                    record = ingest.Record(line, None, ingest.too_long(limit))
                else:
                    record = ingest.Record(line, None, None, raw)
                self._take(record, default_provider)
        if taken:
            self.rows.accept_all(taken, taken_providers, taken_rows)
        progress.line = first + len(lines) - 1

    def _take(self, record: ingest.Record, default_provider: str | None) -> None:
        if record.raw is not None:  # a JSONL line that is not well formed (see _take_jsonl)
            lenient = ingest.validate_json_row(record.raw, self.context)
            if lenient is not None:
                payload = ingest.serialise(lenient)
                self.rows.accept(record.line, lenient.provider, lenient.user_id, payload)
                return
            record = ingest.parse_json_line(record.line, record.raw)  # for the exact reason
        if record.data is None:
            self.rows.reject(record.line, None, default_provider, record.error or "unreadable row")
            return
        row = ingest.validate_row(record.data, default_provider, self.providers)
        if isinstance(row, str):
            self.rows.reject(record.line, record.data, default_provider, row)
            return
        self.rows.accept(record.line, row.provider, row.user_id, ingest.serialise(row))

    def report_unsent(self) -> None:
        """Once the run has stopped: the chunks it was about to send, then those still being
        filled, each row with its outcome ("not sent")."""
        self.dispatcher.send(self.rows.chunker.flush())

    def log_progress(self) -> None:
        ctx = self.ctx
        self.last_progress = ctx.wiring.clock()
        logger.info(
            "progress",
            extra={
                "line": ctx.progress.line,
                "chunks_done": ctx.ledger.chunks_done,
                "in_flight": len(self.dispatcher.in_flight),
                "elapsed_s": round(self.last_progress - ctx.started_monotonic, 1),
                **ctx.ledger.tally.counts().model_dump(),
            },
        )


def _close_opened(future: Future[Opened]) -> None:
    if not future.cancelled() and future.exception() is None:
        future.result().stream.close()
