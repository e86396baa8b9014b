"""A gzip JSONL or CSV file over many invocations: each continuation enters the file at the
resume point the one before stored (its dedupe part and gzip access point in S3), not at the
start."""

from __future__ import annotations

import gzip
import json

import pytest

from bulk_import.wiring import Tunables
from local.events import s3_event
from tests.helpers import encode_rows, make_row
from tests.integration.conftest import Stack, drain_queue

# Points every 50 lines, stored once reading has gone 16 KiB past the last.
POINTS = Tunables(resume_every_lines=50, resume_point_bytes=16 * 1024)


def keys(stack: Stack, prefix: str) -> list[str]:
    listed = stack.s3.list_objects_v2(Bucket=stack.bucket, Prefix=prefix)
    return [o["Key"] for o in listed.get("Contents", [])]


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_continuations_enter_a_gzip_file_at_the_stored_point(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, continuation_queue: str, fmt: str
) -> None:
    key, results, retry = (f"{p}/points.{fmt}.gz" for p in ("incoming", "results", "retry"))
    results, retry = results + "/", retry + "/"
    header = 1 if fmt == "csv" else 0  # lines before the first row
    # Given 1,000 rows of ~2.3 KB (2.3 MB unpacked: gzip access points every MiB), a rejected
    # row and a duplicate of line 5 near the end; read ~0.4 s an invocation
    rows = [make_row(i, provider_id="p" * 2000) for i in range(1000)]
    rows[400]["user_id"] = "broken"
    rows[950] = dict(rows[4])
    stack.vital.add_known_users(*(r["user_id"] for r in rows))
    stack.put(key, gzip.compress(encode_rows(rows, fmt)))
    monkeypatch.setenv("MAX_CONCURRENCY", "1")
    monkeypatch.setenv("SAFETY_MARGIN_SECONDS", "2.6")
    stack.vital.latency_seconds = 0.05

    # When the first invocation runs out of time
    first = stack.invoke(s3_event(stack.bucket, [key]), timeout_seconds=3.0, tunables=POINTS)

    # Then it stored resume points: the dedupe parts with the results' state, the access
    # points (32 KiB of the file each) with the retry rows' state, where tokens belong
    assert first["files"][0]["status"] == "continued"
    state = json.loads(stack.get(results + "_state/checkpoint.json"))
    assert state["resume_points"]
    assert any(k.rsplit("/", 1)[1].startswith("seen-") for k in keys(stack, results))
    assert not any("access-" in k for k in keys(stack, results))

    # When every continuation runs
    continuations = drain_queue(
        stack, continuation_queue, timeout_seconds=3.0, limit=60, tunables=POINTS
    )

    # Then the file is complete, each row sent once, the duplicate naming line 5
    assert continuations > 3
    manifest = stack.manifest(results)
    counts = manifest["counts"]
    assert counts["rows"] == len(rows) == sum(v for k, v in counts.items() if k != "rows")
    lines = sorted(int(o["line"]) for o in stack.outcomes(results))
    assert lines == list(range(1 + header, len(rows) + 1 + header))
    posted = stack.vital.posted_connections()
    assert len(posted) == len(set(posted)) == counts["imported"]
    assert manifest["counts"]["rejected"] == manifest["counts"]["duplicates"] == 1
    by_line = {int(o["line"]): o for o in stack.outcomes(results)}
    assert by_line[951 + header]["detail"] == (
        f"duplicate of line {5 + header} (same provider and user_id); not sent"
    )
    # And the continuations read from their points: past line 1, some through an access point
    reads = [json.loads(line) for line in stack.log_lines if '"reading file"' in line]
    assert len(reads) == continuations + 1
    started = [r["from_line"] for r in reads]
    assert started[0] == 1
    assert sum(1 for line in started[1:] if line > 1) >= continuations - 1
    assert started == sorted(started)
    assert max(r["from_byte"] for r in reads) > 1024 * 1024
    # And the import's state, the points' objects with it, is gone
    assert keys(stack, results + "_state/") == keys(stack, retry + "_state/") == []
    # And no token reached anything outside retry/ (the access points held some)
    written = stack.everything_written()
    assert not any(r["access_token"] in written for r in rows)
