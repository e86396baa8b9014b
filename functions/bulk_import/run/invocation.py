"""One invocation: each work item imported once, duplicates and held objects handled, and
every finished file reported (metrics, the SNS summary, the hand-off of a long file)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aws_lambda_powertools.metrics import MetricUnit

from bulk_import.errors import AlreadyInProgress, ImportStillRunning
from bulk_import.model import ContinuationMessage, ObjectRef
from bulk_import.observability import logger, metrics, record_file_metrics
from bulk_import.run.importer import import_object

if TYPE_CHECKING:
    from bulk_import.events import WorkItem
    from bulk_import.run.context import FileResult
    from bulk_import.wiring import Wiring


def handle(items: list[WorkItem], wiring: Wiring) -> dict[str, Any]:
    """Import every item; raises ``ImportStillRunning`` for objects another invocation holds
    when no continuation queue can take a second look."""
    work = wiring.guard(lambda ref: _import(ref, wiring))
    files, busy = [], []
    for ref, from_queue in items:
        logger.append_keys(bucket=ref.bucket, key=ref.key, segment=ref.segment)
        try:
            summary = work(ref)
        except AlreadyInProgress:
            logger.warning("another invocation is importing this object right now")
            metrics.add_metric(name="DuplicateInProgress", unit=MetricUnit.Count, value=1)
            if from_queue and ref.segment > 0:
                continue  # a duplicate continuation: the queue keeps the copy being worked on
            if wiring.settings.continuation_queue_url:
                # The only copy of an S3 event (a duplicate, or a retry of an invocation that
                # died), or a second look that found it held again: look (again) once the hold
                # has ended, rather than burn Lambda's two retries within minutes and land in
                # the ImportDLQ, or fail an SQS-triggered invocation into a 90-minute wait.
                wiring.hand_off(ContinuationMessage(ref=ref), wiring.tunables.recheck_delay_seconds)
                logger.info("queued a second look for when the other invocation has ended")
                continue
            busy.append(ref.key)  # let Lambda (or SQS) retry it
            continue
        if summary.get("status") == "skipped" or summary.get("request_id") != wiring.request_id:
            # Skipped by the run, or a stored result replayed by the idempotency guard.
            metrics.add_metric(name="DuplicateEvents", unit=MetricUnit.Count, value=1)
        files.append(summary)
    if busy:
        raise ImportStillRunning(f"{len(busy)} object(s) are being imported by another invocation")
    return {"files": files}


def _import(ref: ObjectRef, wiring: Wiring) -> dict[str, Any]:
    result = import_object(ref, wiring)
    record_file_metrics(result.manifest, result.call_stats)
    if result.continuation is not None:
        wiring.hand_off(ContinuationMessage(ref=result.continuation))
    summary = _summary(result)
    if result.manifest is not None:
        wiring.announce({"bucket": ref.bucket, **summary})
    return {**summary, "request_id": wiring.request_id}


def _summary(result: FileResult) -> dict[str, Any]:
    summary: dict[str, Any] = {"key": result.ref.key, "segment": result.ref.segment}
    if result.skipped is not None:
        summary.update(status="skipped", reason=result.skipped)
    elif result.continuation is not None:
        summary.update(status="continued", next_segment=result.continuation.segment)
    elif result.manifest is not None:
        manifest = result.manifest
        counts = manifest.counts.model_dump()
        summary.update(status=manifest.status, counts=counts, manifest=result.manifest_key)
        logger.info(
            "file finished",
            extra={
                "status": manifest.status,
                "counts": counts,
                "manifest": f"s3://{result.ref.bucket}/{result.manifest_key}",
            },
        )
    return summary
