"""Lambda entry point: parse the S3 event, import each object, return a short summary."""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote_plus

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.data_classes import S3Event
from aws_lambda_powertools.utilities.typing import LambdaContext

from bulk_import import aws
from bulk_import.config import get_settings
from bulk_import.observability import logger, metrics, record_file_metrics, tracer
from bulk_import.pipeline import Dependencies, import_object


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
    files = []
    for record in S3Event(event).records if "Records" in event else []:
        # Keys arrive URL-encoded with spaces as '+' (Powertools decodes only the first record's).
        bucket, key = record.s3.bucket.name, unquote_plus(record.s3.get_object.key)
        if not key.startswith(settings.incoming_prefix) or key.endswith("/"):
            logger.warning("ignoring object outside the incoming prefix", extra={"key": key})
            metrics.add_metric(name="FilesIgnored", unit=MetricUnit.Count, value=1)
            continue
        logger.append_keys(bucket=bucket, key=key)
        result = import_object(bucket, key, record.s3.get_object.version_id, settings, deps)
        record_file_metrics(result.manifest, result.call_stats)
        logger.info(
            "file finished",
            extra={
                "status": result.manifest.status,
                "counts": result.manifest.counts.model_dump(),
                "manifest": f"s3://{bucket}/{result.manifest_key}",
            },
        )
        files.append(
            {
                "key": key,
                "status": result.manifest.status,
                "counts": result.manifest.counts.model_dump(),
                "manifest": result.manifest_key,
            }
        )
    if "Records" not in event:
        logger.warning("not an S3 notification; nothing to do", extra={"keys": sorted(event)})
        metrics.add_metric(name="EventsIgnored", unit=MetricUnit.Count, value=1)
    return {"files": files}
