"""S3 ObjectCreated notifications as S3 sends them, for the tests and the benchmarks.

Standard library only: the bench's ``ours`` contender imports it inside its timed cold start.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote_plus


def s3_event(
    bucket: str,
    keys: Iterable[str],
    *,
    version_ids: Mapping[str, str] | None = None,
    sizes: Mapping[str, int] | None = None,
    etags: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """One record per key; keys are URL-encoded as S3 does (space → '+').

    Each call is a new upload of every key (a new sequencer, later than any before it, as S3's
    are for one key); reuse the dict to model a redelivery. Size defaults to 1 and the ETag to
    none when not given.
    """
    records = []
    for key in keys:
        obj: dict[str, Any] = {
            "key": quote_plus(key, safe="/"),
            "size": (sizes or {}).get(key, 1),
            "sequencer": _sequencer(),
        }
        if etags and key in etags:
            obj["eTag"] = etags[key]
        if version_ids and key in version_ids:
            obj["versionId"] = version_ids[key]
        records.append(
            {
                "eventVersion": "2.1",
                "eventSource": "aws:s3",
                "awsRegion": "us-east-1",
                "eventTime": "2026-11-26T00:00:00.000Z",
                "eventName": "ObjectCreated:Put",
                "s3": {
                    "s3SchemaVersion": "1.0",
                    "bucket": {"name": bucket, "arn": f"arn:aws:s3:::{bucket}"},
                    "object": obj,
                },
            }
        )
    return {"Records": records}


_ticks = itertools.count()


def _sequencer() -> str:
    """Hex that grows from call to call (and from process to process: it starts at the clock)."""
    return f"{time.time_ns() + next(_ticks):018X}"
