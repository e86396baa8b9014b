"""ours: the real handler, invoked as Lambda would with an S3 event, on the real stack.

Configured by the environment only (CHUNK_SIZE, MAX_CONCURRENCY, VITAL_API_BASE_URL,
VITAL_API_KEY_SECRET, Powertools' switches): the package does not know it is benchmarked.
The import below is this contender's cold start (``local.context`` and ``local.events`` are
stdlib-only).
"""

from __future__ import annotations

from typing import Any

from bulk_import.handler import lambda_handler
from local.context import LocalLambdaContext
from local.events import s3_event


def run(spec: dict[str, Any]) -> dict[str, Any]:
    # Every run stands for a new upload of the file: a new sequencer, so the run's
    # exactly-once guard does not skip it.
    key = spec["key"]
    event = s3_event(spec["bucket"], [key], sizes={key: spec["size"]}, etags={key: spec["etag"]})
    result = lambda_handler(event, LocalLambdaContext())
    files = result["files"]
    if len(files) != 1:
        raise AssertionError(f"handler reported {len(files)} files: {result}")
    summary = files[0]
    counts = summary.get("counts") or {}
    if summary.get("status") != "succeeded" or counts.get("imported") != counts.get("rows"):
        raise AssertionError(f"handler did not import every row: {summary}")
    return {"rows_sent": counts["imported"], "status": summary["status"]}
