"""Lambda entry point: turn S3 notifications and continuation messages into imports.

Thin on purpose: the pipeline does the work; this module only parses events, applies the
duplicate guard, hands long files on, and reports.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import unquote_plus

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic_core import ValidationError

from bulk_import.config import Settings, get_settings
from bulk_import.errors import AlreadyInProgress, ImportStillRunning
from bulk_import.ingest.validation import describe_errors
from bulk_import.model import ContinuationMessage, ObjectRef
from bulk_import.observability import logger, metrics, record_file_metrics, tracer
from bulk_import.run.pipeline import Dependencies, FileResult, import_object, results_fit
from bulk_import.storage import aws
from bulk_import.storage.idempotency import once_per_ref


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics(capture_cold_start_metric=True)
@tracer.capture_lambda_handler(capture_response=False)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    settings = get_settings()
    deps = Dependencies(
        s3=aws.s3_client(),
        api_key=lambda: aws.vital_api_key(
            settings.vital_api_key_secret, settings.secret_max_age_seconds
        ),
        remaining_seconds=lambda: context.get_remaining_time_in_millis() / 1000,
    )
    work = once_per_ref(
        lambda ref: _import(ref, settings, deps, context.aws_request_id),
        settings.idempotency_table,
        context,
    )
    files, busy = [], []
    for ref, from_queue in _refs(event, settings):
        logger.append_keys(bucket=ref.bucket, key=ref.key, segment=ref.segment)
        try:
            summary = work(ref)
        except AlreadyInProgress:
            logger.warning("another invocation is importing this object right now")
            metrics.add_metric(name="DuplicateInProgress", unit=MetricUnit.Count, value=1)
            if from_queue and ref.segment > 0:
                continue  # a duplicate continuation: the queue keeps the copy being worked on
            if settings.continuation_queue_url:
                # The only copy of an S3 event (a duplicate, or a retry of an invocation that
                # died), or a second look that found it held again: look (again) once the hold
                # has ended, rather than burn Lambda's two retries within minutes and land in
                # the ImportDLQ, or fail an SQS-triggered invocation into a 90-minute wait.
                aws.hand_off(
                    ContinuationMessage(ref=ref),
                    settings.continuation_queue_url,
                    delay_seconds=aws.RECHECK_DELAY_SECONDS,
                )
                logger.info("queued a second look for when the other invocation has ended")
                continue
            busy.append(ref.key)  # let Lambda (or SQS) retry it
            continue
        if (
            summary.get("status") == "skipped"
            or summary.get("request_id") != context.aws_request_id
        ):
            # Skipped by the pipeline, or a stored result replayed by the idempotency guard.
            metrics.add_metric(name="DuplicateEvents", unit=MetricUnit.Count, value=1)
        files.append(summary)
    if busy:
        raise ImportStillRunning(f"{len(busy)} object(s) are being imported by another invocation")
    return {"files": files}


def _import(
    ref: ObjectRef, settings: Settings, deps: Dependencies, request_id: str
) -> dict[str, Any]:
    result = import_object(ref, settings, deps)
    record_file_metrics(result.manifest, result.call_stats)
    if result.continuation is not None:
        aws.hand_off(ContinuationMessage(ref=result.continuation), settings.continuation_queue_url)
    summary = _summary(result)
    if result.manifest is not None and settings.notify_topic_arn:
        aws.announce(settings.notify_topic_arn, {"bucket": ref.bucket, **summary})
    return {**summary, "request_id": request_id}


def _summary(result: FileResult) -> dict[str, Any]:
    summary: dict[str, Any] = {"key": result.ref.key, "segment": result.ref.segment}
    if result.skipped is not None:
        summary.update(status="skipped", reason=result.skipped)
    elif result.continuation is not None:
        summary.update(status="continued", next_segment=result.continuation.segment)
    elif result.manifest is not None:
        manifest = result.manifest
        summary.update(
            status=manifest.status,
            counts=manifest.counts.model_dump(),
            manifest=result.manifest_key,
        )
        logger.info(
            "file finished",
            extra={
                "status": manifest.status,
                "counts": manifest.counts.model_dump(),
                "manifest": f"s3://{result.ref.bucket}/{result.manifest_key}",
            },
        )
    return summary


def _refs(event: dict[str, Any], settings: Settings) -> list[tuple[ObjectRef, bool]]:
    """(ref, came from the continuation queue) for every record worth importing."""
    event = _unwrapped(event)
    if not isinstance(event.get("Records"), list):
        logger.warning("not an S3 or SQS event; nothing to do", extra={"keys": sorted(event)})
        metrics.add_metric(name="EventsIgnored", unit=MetricUnit.Count, value=1)
        return []
    refs: list[tuple[ObjectRef, bool]] = []
    for record in event["Records"]:
        if not isinstance(record, dict):
            continue
        if record.get("eventSource") == "aws:sqs":
            refs.extend(_queued(record.get("body"), settings))
        elif (ref := _s3_ref(record, settings)) is not None:
            refs.append((ref, False))
    return refs


def _is_failure_record(event: object) -> bool:
    """An ImportDLQ message: Lambda's on-failure record, holding the event as requestPayload."""
    return (
        isinstance(event, dict)
        and isinstance(event.get("requestContext"), dict)
        and isinstance(event.get("requestPayload"), dict)
    )


def _unwrapped(event: dict[str, Any]) -> dict[str, Any]:
    """The event inside an ImportDLQ record, however often its replay failed again.

    Replaying the DLQ is then either invoking the function with a message's body as the event,
    or sending the bodies to the continuation queue.
    """
    while _is_failure_record(event):
        event = event["requestPayload"]
    return event


def _queued(body: object, settings: Settings) -> list[tuple[ObjectRef, bool]]:
    """A continuation message; or an ImportDLQ record sent to the queue, read as its event."""
    text = body if isinstance(body, str) else ""
    try:
        return [(ContinuationMessage.model_validate_json(text).ref, True)]
    except ValidationError:
        pass
    try:
        parsed = json.loads(text)
    except (ValueError, RecursionError):
        parsed = None
    if _is_failure_record(parsed):
        # What it holds is the only copy, as an S3 retry is: never dropped as a duplicate.
        return [(ref, False) for ref, _ in _refs(parsed, settings)]
    logger.error("ignoring a queue message that is neither a continuation nor an ImportDLQ record")
    metrics.add_metric(name="EventsIgnored", unit=MetricUnit.Count, value=1)
    return []


def _s3_ref(record: dict[str, Any], settings: Settings) -> ObjectRef | None:
    """The object an S3 notification record names, or None (logged) when it is not ours.

    S3 never sends a record without a bucket and key of the right types, but a record replayed
    by hand may lack them: it is logged and counted, not raised (Lambda would retry the whole
    event into the ImportDLQ, the other records with it).
    """
    s3 = _object(record.get("s3"))
    obj = _object(s3.get("object"))
    raw_key = obj.get("key")
    if not isinstance(raw_key, str) or not raw_key:
        _malformed_s3_record("", "s3.object.key: missing or not a string")
        return None
    # Keys arrive URL-encoded with spaces as '+'.
    key = unquote_plus(raw_key)
    if not key.startswith(settings.incoming_prefix) or key.endswith("/"):
        logger.warning("ignoring object outside the incoming prefix", extra={"key": key})
        metrics.add_metric(name="FilesIgnored", unit=MetricUnit.Count, value=1)
        return None
    if not results_fit(key, settings):
        # No manifest can say so: its own key would be too long. Not retried either.
        logger.error(
            "ignoring an object whose key is too long for its results (S3 keys hold 1024 "
            "bytes, and the results' keys are longer than the object's); shorten the key "
            "and upload again",
            extra={"key": key},
        )
        metrics.add_metric(name="FilesIgnored", unit=MetricUnit.Count, value=1)
        return None
    etag = obj.get("eTag")
    # Validated: the event is input, as a continuation message is.
    try:
        return ObjectRef.model_validate(
            {
                "bucket": _object(s3.get("bucket")).get("name", ""),
                "key": key,
                "version_id": obj.get("versionId") or None,
                "etag": (etag.strip('"') or None) if isinstance(etag, str) else etag,
                "sequencer": obj.get("sequencer") or None,
            }
        )
    except ValidationError as exc:
        _malformed_s3_record(key, describe_errors(exc))
        return None


def _object(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _malformed_s3_record(key: str, problems: str) -> None:
    logger.error(
        "ignoring a malformed S3 record (no bucket name or object key, or a field of the "
        "wrong type)",
        extra={"key": key, "problems": problems},
    )
    metrics.add_metric(name="EventsIgnored", unit=MetricUnit.Count, value=1)
