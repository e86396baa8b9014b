"""ours: the real handler, invoked as Lambda would with an S3 event, on the real stack.

Configured by the environment only (CHUNK_SIZE, MAX_CONCURRENCY, VITAL_API_BASE_URL,
VITAL_API_KEY_SECRET, Powertools' switches): the package does not know it is benchmarked.
The import below is this contender's cold start (``local.context`` is stdlib-only).
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import quote_plus

from bulk_import.handler import lambda_handler
from local.context import LocalLambdaContext


def s3_event(bucket: str, key: str, size: int, etag: str) -> dict[str, Any]:
    """An ObjectCreated notification as S3 sends it, with a fresh sequencer.

    The pipeline imports each upload exactly once: a second event with the same sequencer (or
    version/ETag) is skipped as a duplicate. Every run stands for a new upload of the file, so
    it gets a new, increasing sequencer, as S3 would give it.
    """
    sequencer = f"{time.time_ns():020X}"
    return {
        "Records": [
            {
                "eventVersion": "2.1",
                "eventSource": "aws:s3",
                "awsRegion": "us-east-1",
                "eventTime": "2026-11-26T00:00:00.000Z",
                "eventName": "ObjectCreated:Put",
                "s3": {
                    "s3SchemaVersion": "1.0",
                    "bucket": {"name": bucket, "arn": f"arn:aws:s3:::{bucket}"},
                    "object": {
                        "key": quote_plus(key, safe="/"),
                        "size": size,
                        "eTag": etag,
                        "sequencer": sequencer,
                    },
                },
            }
        ]
    }


def run(spec: dict[str, Any]) -> dict[str, Any]:
    event = s3_event(spec["bucket"], spec["key"], spec["size"], spec["etag"])
    result = lambda_handler(event, LocalLambdaContext())
    files = result["files"]
    if len(files) != 1:
        raise AssertionError(f"handler reported {len(files)} files: {result}")
    summary = files[0]
    counts = summary.get("counts") or {}
    if summary.get("status") != "succeeded" or counts.get("imported") != counts.get("rows"):
        raise AssertionError(f"handler did not import every row: {summary}")
    return {"rows_sent": counts["imported"], "status": summary["status"]}
