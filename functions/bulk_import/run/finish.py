"""The end of a file: the last answers recorded, the bulk ops awaited, outcomes.csv, retry.jsonl
and the manifest written, and the import's state cleared."""

from __future__ import annotations

import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import TYPE_CHECKING

from bulk_import import errors
from bulk_import.errors import FileError, InternalError, Superseded
from bulk_import.model import (
    BulkOp,
    Checkpoint,
    FileStatus,
    Manifest,
    Outcome,
    SourceRef,
    Verification,
)
from bulk_import.observability import logger
from bulk_import.run.context import FileResult, now
from bulk_import.storage.keys import MANIFEST_NAME, OUTCOMES_NAME, RETRY_NAME
from bulk_import.vital import (
    BULK_OP_FAILED,
    BULK_OP_MAX_WAIT_SECONDS,
    BULK_OP_SKEW,
    wait_for_bulk_ops,
)

if TYPE_CHECKING:
    from bulk_import.run.context import RunContext
    from bulk_import.run.dispatch import Dispatcher


def finalise(ctx: RunContext, dispatcher: Dispatcher) -> FileResult:
    """Write the file's results; raises ``Superseded`` if another import took the key over."""
    check_every_row_counted(ctx)
    ledger, store = ctx.ledger, ctx.store
    if ledger.checkpoint is not None:
        _check_still_mine(ctx)
        if dispatcher.posted_here and ctx.progress.read_to_end:
            _store_answers(ctx, dispatcher)
    waited = ledger.tally[Outcome.ENQUEUED] > 0  # on bulk ops, after 202s: seconds, maybe
    bulk_ops = _await_bulk_ops(ctx, dispatcher) if waited else []
    if ledger.checkpoint is not None and waited:
        _check_still_mine(ctx)
    check = None
    if ctx.settings.verify_after_import and ctx.stop.error is None and not ctx.dry_run:
        from bulk_import.run.verify import verify  # noqa: PLC0415 - only with the setting

        check = functools.partial(verify, ctx, dispatcher)
    if ledger.checkpoint is None:
        manifest_key, manifest = write_results(ctx, bulk_ops, check)
    else:
        # The key's parts are listed while the results are written: two round trips fewer at
        # the end of every file. Ownership is checked after the listing (``finish``).
        with ThreadPoolExecutor(1, thread_name_prefix="list-parts") as lister:
            listed = lister.submit(store.stored_parts)
            manifest_key, manifest = write_results(ctx, bulk_ops, check)
            stored = listed.result()
        # Only while the checkpoint is its own: a newer upload may have taken the key over.
        store.finish(ledger.all_parts(), stored)
    stats = dispatcher.client.stats if dispatcher.client else None
    return FileResult(ctx.ref, manifest_key, manifest=manifest, call_stats=stats)


def _check_still_mine(ctx: RunContext) -> None:
    """Raise ``Superseded`` if another import of the key took it over (a newer upload's):
    none of this run's results may be written then."""
    cp = ctx.ledger.checkpoint
    if cp is not None and not ctx.store.still_mine():
        raise ctx.store.taken_over(cp)


def _store_answers(ctx: RunContext, dispatcher: Dispatcher) -> None:
    """Every answer of this run, stored before anything else can fail (the results' writes,
    waiting on bulk ops): a retry then replays them instead of asking Vital about the chunks
    answered since the last checkpoint.

    A hand-off record holds them in a few KB, where a checkpoint would first store every
    outcome line since the one before as a part, for ``outcomes.csv`` to store them all again
    right after. A checkpoint it is when the run stopped sending (the retry must know of the
    stop: only checkpoints carry it) or some answer fits no record. Not after a run that
    stopped reading early (``finalise``): it cut its last chunks short, which a retry reading
    further (past a one-off error) would cut whole, under the same numbers.
    """
    if ctx.stop.reason is None and dispatcher.handoffs.store_answers(dispatcher.next_seq):
        return
    ctx.save_checkpoint(next_segment=ctx.ref.segment, lease=dispatcher.lease_so_far())


def _await_bulk_ops(ctx: RunContext, dispatcher: Dispatcher) -> list[BulkOp]:
    """After 202s, wait (bounded) for the bulk ops this run started and record their state."""
    try:
        client = dispatcher.vital()
    except FileError:
        return []
    # A little slack for clock skew between Vital and Lambda.
    since = datetime.fromisoformat(ctx.started_at.replace("Z", "+00:00")) - BULK_OP_SKEW
    providers = {p for p, c in ctx.ledger.tally.providers().items() if c.enqueued}
    wiring = ctx.wiring
    budget = max(0.0, wiring.remaining_seconds() - dispatcher.margin)
    deadline = wiring.clock() + min(BULK_OP_MAX_WAIT_SECONDS, budget)
    return wait_for_bulk_ops(
        client, providers, since, deadline, clock=wiring.clock, sleep=wiring.sleep
    )


def write_results(
    ctx: RunContext,
    bulk_ops: list[BulkOp],
    check: Callable[[str], Verification] | None = None,
) -> tuple[str, Manifest]:
    """outcomes.csv, retry.jsonl if any row needs it, the verification pass (``check``, given
    outcomes.csv) when asked for, then the manifest that names them."""
    ledger, writer, bucket = ctx.ledger, ctx.wiring.writer(), ctx.source.bucket
    outcomes_key = ctx.prefix + OUTCOMES_NAME
    # The parts after those to read are in the spools too.
    writer.assemble(
        bucket,
        outcomes_key,
        parts=ledger.outcome_parts[: ledger.outcome_parts_to_read],
        spool=ledger.outcomes,
        content_type="text/csv",
    )
    retry_key = None
    if ledger.retry_parts or ledger.retries.lines:
        retry_key = ctx.retry_prefix + RETRY_NAME
        writer.assemble(
            bucket,
            retry_key,
            parts=ledger.retry_parts[: ledger.retry_parts_to_read],
            spool=ledger.retries,
            content_type="application/x-ndjson",
        )
    manifest = _manifest(ctx, bulk_ops, outcomes_key, retry_key)
    if check is not None:
        manifest.verification = check(outcomes_key)
        # The pass can take minutes: a newer upload's import may have finished meanwhile.
        if ctx.ledger.checkpoint is not None and not ctx.store.still_mine():
            raise Superseded("another import of this key took over while this one verified")
    manifest_key = ctx.prefix + MANIFEST_NAME
    writer.write_manifest(bucket, manifest_key, manifest)
    return manifest_key, manifest


def check_every_row_counted(ctx: RunContext) -> None:
    """The last guard of "every row ends in exactly one outcome": a file read to its end whose
    outcomes do not match its rows fails loudly, instead of reporting fewer rows.

    Only a bug gets here (the paths that stop early write an outcome for every row read); the
    outcomes the run did record are kept, and the gap is named in the error.
    """
    recorded = ctx.ledger.tally.counts().rows
    rows_read = ctx.progress.rows_read
    if not ctx.progress.read_to_end or recorded == rows_read:
        return
    logger.error(
        "rows and outcomes do not match", extra={"rows_read": rows_read, "outcomes": recorded}
    )
    ctx.stop.error = ctx.stop.error or InternalError(
        f"internal error: {rows_read} rows read, {recorded} outcomes recorded; "
        "see the function's logs"
    )


def superseded(cp: Checkpoint, newer: SourceRef) -> Manifest:
    """The manifest of an import a newer upload took over: its counts so far, no outcomes.csv
    (the key's is the newer import's to write), and the upload that replaced it."""
    return Manifest(
        source=cp.source,
        status="superseded",
        started_at=cp.started_at,
        finished_at=now(),
        counts=cp.counts,
        providers=cp.providers,
        chunks=cp.chunks,
        outcomes_key=None,
        segments=cp.next_segment + 1,
        superseded_by=newer,
    )


def superseded_here(ctx: RunContext, newer: SourceRef) -> Manifest:
    """``superseded`` for the run that found itself taken over: its books as they stand."""
    books = _manifest(ctx, [], None, None)
    return books.model_copy(update={"status": "superseded", "error": None, "superseded_by": newer})


def status(ctx: RunContext, bulk_ops: list[BulkOp]) -> FileStatus:
    if ctx.stop.error is not None:
        return "failed"
    if ctx.dry_run:
        return "validated"
    t = ctx.ledger.tally
    bad = t[Outcome.REJECTED] + t[Outcome.FAILED] + t[Outcome.ERRORED]
    # Enqueued rows count as fine, unless a bulk op they went into is known to have failed.
    unfinished = any(op.status in BULK_OP_FAILED for op in bulk_ops)
    return "partial" if bad or unfinished else "succeeded"


def _manifest(
    ctx: RunContext, bulk_ops: list[BulkOp], outcomes_key: str | None, retry_key: str | None
) -> Manifest:
    ledger = ctx.ledger
    return Manifest(
        source=ctx.source,
        status=status(ctx, bulk_ops),
        dry_run=ctx.dry_run,
        started_at=ctx.started_at,
        finished_at=now(),
        counts=ledger.tally.counts(),
        providers=ledger.tally.providers(),
        chunks=list(ledger.chunk_records),
        bulk_ops=bulk_ops,
        outcomes_key=outcomes_key,
        retry_key=retry_key,
        segments=ctx.ref.segment + 1,
        error=errors.to_info(ctx.stop.error),
    )
