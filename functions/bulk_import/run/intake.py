"""Reading the file: every row validated, deduplicated and chunked, or rejected with a reason.

Reading, validation and outcome writing happen on the calling thread. ``progress.line`` moves
after each row, so a deadline raised while a row is dispatched leaves that row to the next
invocation.
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
    Outcome,
    ResumePoint,
    RowOutcome,
)
from bulk_import.observability import logger
from bulk_import.redaction import redact_text
from bulk_import.run.dispatch import DeadlineReached
from bulk_import.run.resume_points import ResumePoints
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
# PendingRow(...) runs a Python-level __new__; tuple.__new__ builds the same named tuple in C.
_pending = tuple.__new__


class Opened(NamedTuple):
    source: ingest.SourceObject
    stream: IO[bytes]


class Intake:
    """Takes a file's rows to the dispatcher; rejects and duplicates straight to the ledger."""

    def __init__(self, ctx: RunContext, dispatcher: Dispatcher) -> None:
        self.ctx = ctx
        self.dispatcher = dispatcher
        self.seen = ingest.Dedupe()
        self.providers = providers = ctx.settings.providers
        self.chunker = ingest.Chunker(
            ctx.settings.chunk_size, ctx.settings.max_body_bytes, providers
        )
        self.last_progress = ctx.wiring.clock()
        # The file's, once its default provider is known.
        self.context = ingest.context_for(None, providers)
        # Rows rejected from the file's start, those of a resumed run's earlier invocations too
        # (its tally counts Vital's rejections as well): the rejection threshold's count.
        self.rejected = 0
        self.points = ResumePoints(ctx, dispatcher, self.chunker, self.seen)
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
            self.rejected = point.rejected
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
        self.dispatcher.send(self.chunker.flush())
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
                    stream, record.line, place.offset, self.rejected,
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
        if self.rejected and ctx.progress.line >= ctx.ledger.lines_done:
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
            self.rejected, rows, settings.rejected_stop_after_rows, settings.rejected_stop_percent
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
                points.cut(stream, first, offset, self.rejected)
            if lines:
                self._take_block(start, lines, default_provider)

    def _take_block(
        self, first: int, lines: list[bytes | None], default_provider: str | None
    ) -> None:
        """The hot loop: well-formed rows straight to ``_accept``.

        Everything else (blank and over-long lines, lenient spellings, errors) goes through
        ``_take`` like the other formats' rows; so does an OAuth 1.0 row whose ``expires_at`` is
        not the constant (WellFormedRow cannot compare two fields): the full model rejects it.
        """
        progress = self.ctx.progress
        blank = lines.count(b"")
        if blank == len(lines):  # nothing to validate: the checkpoint moves past them
            progress.line = first + blank - 1
            return
        limit = self.ctx.settings.max_row_bytes
        accept = self._accept
        serialise = self.ctx.wiring.serialise
        # A default spelled otherwise ("Oura") is normalised, or refused, by the full model.
        providers = self.providers
        default = default_provider if default_provider in providers else None
        oauth1, oauth1_expires_at = OAUTH1_PROVIDERS, OAUTH1_EXPIRES_AT
        progress.rows_read += len(lines) - blank
        rows = ingest.validate_well_formed(lines, providers)
        for line, raw, row in zip(itertools.count(first), lines, rows, strict=False):
            if (
                row is not None
                and (provider := row.pop("provider", None) or default)
                and (provider not in oauth1 or row["expires_at"] == oauth1_expires_at)
            ):
                accept(line, provider, row["user_id"], serialise(row))
            elif raw:
                self._take(ingest.Record(line, None, None, raw), default_provider)
            elif raw is None:
                self._take(ingest.Record(line, None, ingest.too_long(limit)), default_provider)
            progress.line = line

    def _take(self, record: ingest.Record, default_provider: str | None) -> None:
        if record.raw is not None:  # a JSONL line that is not well formed (see _take_jsonl)
            lenient = ingest.validate_json_row(record.raw, self.context)
            if lenient is not None:
                payload = ingest.serialise(lenient)
                self._accept(record.line, lenient.provider, lenient.user_id, payload)
                return
            record = ingest.parse_json_line(record.line, record.raw)  # for the exact reason
        if record.data is None:
            self._reject(record.line, None, default_provider, record.error or "unreadable row")
            return
        row = ingest.validate_row(record.data, default_provider, self.providers)
        if isinstance(row, str):
            self._reject(record.line, record.data, default_provider, row)
            return
        self._accept(record.line, row.provider, row.user_id, ingest.serialise(row))

    def _reject(
        self, line: int, data: dict[str, object] | None, default: str | None, reason: str
    ) -> None:
        self.rejected += 1
        ledger = self.ctx.ledger
        if line <= ledger.lines_done:
            return  # stored before the checkpoint this run resumed from
        provider = ingest.display_provider(data, default, self.providers)
        user_id = ingest.display_user_id(data)
        ledger.write([RowOutcome(line, user_id, provider, Outcome.REJECTED, redact_text(reason))])

    def _accept(self, line: int, provider: str, user_id: str, payload: bytes) -> None:
        """A valid row, its recipe serialised (``payload``): a duplicate, or on to a chunk."""
        chunker = self.chunker
        if len(payload) > chunker.fits_any and not chunker.fits_alone(provider, payload):
            self._too_large(line, provider, user_id)
            return
        first = self.seen.claim(provider, user_id, line)
        if first is not None:
            self._duplicate(line, provider, user_id, first)
            return
        closed = chunker.add(provider, _pending(ingest.PendingRow, (line, user_id, payload)))
        if closed:
            self.dispatcher.send(closed)

    def _duplicate(self, line: int, provider: str, user_id: str, first: int) -> None:
        ledger = self.ctx.ledger
        if line > ledger.lines_done:
            detail = f"duplicate of line {first} (same provider and user_id); not sent"
            ledger.write([RowOutcome(line, user_id, provider, Outcome.DUPLICATE, detail)])

    def _too_large(self, line: int, provider: str, user_id: str) -> None:
        """A row no request can hold: a duplicate if its user came before, else rejected (and
        not claimed: a corrected copy of the row further down is not its duplicate)."""
        first = self.seen.first_line(provider, user_id)
        if first is not None:
            self._duplicate(line, provider, user_id, first)
            return
        self._reject(
            line,
            {"user_id": user_id},  # validated: shown, as for any rejected row with a valid id
            provider,
            "row is larger than one request may be "
            f"(MAX_BODY_BYTES={self.ctx.settings.max_body_bytes})",
        )

    def report_unsent(self) -> None:
        """Once the run has stopped: the chunks it was about to send, then those still being
        filled, each row with its outcome ("not sent")."""
        self.dispatcher.send(self.chunker.flush())

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
