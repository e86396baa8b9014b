"""The first step of a run: start fresh, resume from a checkpoint, or skip.

A table of early exits, decided from the checkpoint and the manifest S3 holds for the key:
a duplicate event, a continuation that another invocation took over, an older upload's event
arriving after a newer upload's, or a hand-off that was saved but may not have been sent.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from botocore.exceptions import BotoCoreError, ClientError

from bulk_import import errors
from bulk_import.model import Manifest, SourceRef
from bulk_import.model.checkpoint import older_than
from bulk_import.observability import logger
from bulk_import.run import finish, replay
from bulk_import.run.context import FileResult, same_object

if TYPE_CHECKING:
    from bulk_import.model import Checkpoint
    from bulk_import.run.context import RunContext


def skip(ctx: RunContext, reason: str) -> FileResult:
    logger.info("skipping: " + reason, extra={"segment": ctx.ref.segment})
    return FileResult(ctx.ref, ctx.manifest_key, skipped=reason)


def prepare(ctx: RunContext) -> FileResult | None:  # noqa: PLR0911 - a table of early exits
    """Resume, skip a duplicate, or re-send a lost hand-off; None to start fresh or resume."""
    ref, store = ctx.ref, ctx.store
    checkpoint = store.load()
    if checkpoint is not None and not same_object(ref, checkpoint.source):
        if ref.segment > 0 or older_than(ref, checkpoint.source):
            return skip(ctx, "a newer upload of this key replaced the file being imported")
        logger.warning("a new upload replaces an unfinished import of this key")
        store.delete(checkpoint.state_objects())
        newer = SourceRef(
            bucket=ref.bucket,
            key=ref.key,
            version_id=ref.version_id,
            etag=ref.etag,
            sequencer=ref.sequencer,
        )
        leave_record(ctx, finish.superseded(checkpoint, newer))
        checkpoint = None
    manifest = store.existing_manifest()
    finished = manifest is not None and same_object(ref, manifest.source)
    if checkpoint is None:
        if ref.segment > 0:
            return skip(ctx, "this import already finished")
        if finished:
            return skip(ctx, "this object version was already imported")
        if manifest is not None and older_than(ref, manifest.source):
            return skip(ctx, "a newer upload of this key was already imported")
        return None
    if finished:
        # The manifest is written before the state is deleted: the cleanup failed or the
        # function stopped in between. Replaying would overwrite the manifest.
        store.finish(checkpoint.outcome_parts + checkpoint.retry_parts)
        return skip(ctx, "this object version was already imported (its state is cleared)")
    if ref.segment < checkpoint.next_segment:
        if ref.segment == checkpoint.next_segment - 1:
            # An earlier invocation saved the hand-off but may have died before sending it.
            return FileResult(
                ref, ctx.manifest_key, continuation=ctx.next_ref(checkpoint.next_segment)
            )
        return skip(ctx, "a later invocation already took over this import")
    if ref.segment > checkpoint.next_segment:
        return skip(ctx, "continuation from an unknown segment")
    current = replay.fingerprint(ctx.settings, ctx.wiring.tunables.resume_every_lines)
    changed = replay.changes(checkpoint.fingerprint, current)
    if changed:
        ctx.stop.error = errors.ConfigurationError(replay.describe(changed))
    elif ref.segment >= ctx.settings.max_invocations_per_file:
        ctx.stop.error = errors.ImportAborted(too_many_invocations(ref.segment))
    restore(ctx, checkpoint)
    return None


def too_many_invocations(invocations: int) -> str:
    return (
        f"not finished after {invocations} invocations (MAX_INVOCATIONS_PER_FILE): the rows "
        "without a line in outcomes.csv were not sent. A file this slow to read is mostly "
        "blank lines, or too big for one import: split it, or raise MAX_INVOCATIONS_PER_FILE"
    )


def leave_record(ctx: RunContext, manifest: Manifest) -> None:
    """The superseded import's manifest, unless a newer import's is already there. Best
    effort: a failed write must not hold up the import that took the key over."""
    try:
        written = ctx.store.record_superseded(manifest)
    except (BotoCoreError, ClientError) as exc:
        logger.warning("superseded import not recorded", extra={"error": type(exc).__name__})
        return
    if written:
        logger.info(
            "superseded import recorded",
            extra={"counts": manifest.counts.model_dump(), "manifest": ctx.manifest_key},
        )


def restore(ctx: RunContext, cp: Checkpoint) -> None:
    ctx.ledger.restore(cp, ctx.store.load_handoff())
    ctx.source = cp.source
    ctx.started_at = cp.started_at
    if cp.stop_reason is not None:
        ctx.stop.reason = errors.from_info(cp.stop_reason)
    logger.info(
        "resuming from checkpoint",
        extra={"segment": ctx.ref.segment, "lines_done": cp.lines_done, "lease": cp.lease},
    )
