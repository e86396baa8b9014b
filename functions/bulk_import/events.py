"""The events that start an import: S3 notifications, continuation messages on SQS, and
ImportDLQ records replayed by an operator, each turned into the ``ObjectRef`` to import.

Lenient on purpose: a record that is not ours or is malformed is logged and counted, never
raised (Lambda would retry the whole event into the ImportDLQ, the other records with it).
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple
from urllib.parse import unquote_plus

from aws_lambda_powertools.metrics import MetricUnit
from pydantic import ValidationError

from bulk_import.config import Settings
from bulk_import.ingest import describe_errors
from bulk_import.model import ContinuationMessage, ObjectRef
from bulk_import.observability import logger, metrics
from bulk_import.storage.keys import results_fit


class WorkItem(NamedTuple):
    ref: ObjectRef
    # From the continuation queue: a duplicate continuation may be dropped (the queue keeps the
    # copy being worked on); an S3 event's copy is the only one.
    from_queue: bool


def work_items(event: dict[str, Any], settings: Settings) -> list[WorkItem]:
    """Every record of the event worth importing."""
    event = _unwrapped(event)
    if not isinstance(event.get("Records"), list):
        logger.warning("not an S3 or SQS event; nothing to do", extra={"keys": sorted(event)})
        _ignored("EventsIgnored")
        return []
    items: list[WorkItem] = []
    for record in event["Records"]:
        if not isinstance(record, dict):
            continue
        if record.get("eventSource") == "aws:sqs":
            items.extend(_queued(record.get("body"), settings))
        elif (ref := _s3_ref(record, settings)) is not None:
            items.append(WorkItem(ref, from_queue=False))
    return items


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


def _queued(body: object, settings: Settings) -> list[WorkItem]:
    """A continuation message; or an ImportDLQ record sent to the queue, read as its event."""
    text = body if isinstance(body, str) else ""
    try:
        return [WorkItem(ContinuationMessage.model_validate_json(text).ref, from_queue=True)]
    except ValidationError:
        pass
    try:
        parsed = json.loads(text)
    except (ValueError, RecursionError):
        parsed = None
    if _is_failure_record(parsed):
        # What it holds is the only copy, as an S3 retry is: never dropped as a duplicate.
        return [WorkItem(item.ref, from_queue=False) for item in work_items(parsed, settings)]
    logger.error("ignoring a queue message that is neither a continuation nor an ImportDLQ record")
    _ignored("EventsIgnored")
    return []


def _s3_ref(record: dict[str, Any], settings: Settings) -> ObjectRef | None:
    """The object an S3 notification record names, or None (logged) when it is not ours.

    S3 never sends a record without a bucket and key of the right types, but a record replayed
    by hand may lack them.
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
        _ignored("FilesIgnored")
        return None
    if not results_fit(key, settings):
        # No manifest can say so: its own key would be too long. Not retried either.
        logger.error(
            "ignoring an object whose key is too long for its results (S3 keys hold 1024 "
            "bytes, and the results' keys are longer than the object's); shorten the key "
            "and upload again",
            extra={"key": key},
        )
        _ignored("FilesIgnored")
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
    _ignored("EventsIgnored")


def _ignored(metric: str) -> None:
    metrics.add_metric(name=metric, unit=MetricUnit.Count, value=1)
