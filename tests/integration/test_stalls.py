"""Files that would keep the continuation chain going: each ends with a final manifest."""

from __future__ import annotations

import gzip
from typing import Any

import pytest

from local.events import s3_event
from tests.helpers import encode_rows, make_row
from tests.integration.conftest import Stack, drain_queue
from tests.integration.test_exactly_once import assert_complete, upload

BLANK_LINES = 40 * 1024 * 1024


def test_a_blank_line_bomb_ends_in_a_handful_of_invocations(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, continuation_queue: str
) -> None:
    # Given 40 MB of newlines in ~40 KB of gzip, then one row, and ~2 s of reading per
    # invocation (4.6 s, of which 2.6 s are kept back). Each continuation decompresses the file
    # again up to its checkpoint: blank lines read one by one would fill that time long before
    # the row, and every invocation after would move the checkpoint by one block.
    row = make_row(1)
    stack.vital.add_known_users(row["user_id"])
    body = gzip.compress(b"\n" * BLANK_LINES + encode_rows([row], "jsonl"))
    assert len(body) < 100_000
    stack.put("incoming/blank.jsonl.gz", body)
    monkeypatch.setenv("SAFETY_MARGIN_SECONDS", "2.6")

    # When it is imported, continuations and all
    stack.invoke(s3_event(stack.bucket, ["incoming/blank.jsonl.gz"]), timeout_seconds=4.6)
    continuations = drain_queue(stack, continuation_queue, timeout_seconds=4.6, limit=4)

    # Then a final manifest after a handful of invocations, the row imported on its line
    manifest = stack.manifest("results/blank.jsonl.gz/")
    assert manifest["status"] == "succeeded"
    assert manifest["segments"] == continuations + 1 <= 4
    assert manifest["counts"]["rows"] == manifest["counts"]["imported"] == 1
    (outcome,) = stack.outcomes("results/blank.jsonl.gz/")
    assert (outcome["line"], outcome["outcome"]) == (str(BLANK_LINES + 1), "imported")


def slow_file(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, *, max_invocations: int
) -> list[dict[str, Any]]:
    """incoming/slow.jsonl (400 rows and the usual rejected and duplicate one), read ~0.4 s an
    invocation: 10-row chunks, 2 threads, 50 ms a request, 2.6 s of 3 s kept back."""
    rows = upload(stack, "incoming/slow.jsonl", 400)
    monkeypatch.setenv("CHUNK_SIZE", "10")
    monkeypatch.setenv("MAX_CONCURRENCY", "2")
    monkeypatch.setenv("SAFETY_MARGIN_SECONDS", "2.6")
    monkeypatch.setenv("MAX_INVOCATIONS_PER_FILE", str(max_invocations))
    stack.vital.latency_seconds = 0.05
    return rows


def test_a_file_unfinished_after_max_invocations_fails_with_what_was_read(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, continuation_queue: str
) -> None:
    # Given a file that takes many ~0.4 s invocations, and at most 2 of them per file
    rows = slow_file(stack, monkeypatch, max_invocations=2)

    # When the first invocation and every continuation run
    first = stack.invoke(s3_event(stack.bucket, ["incoming/slow.jsonl"]), timeout_seconds=3.0)
    assert first["files"][0]["status"] == "continued"
    continuations = drain_queue(stack, continuation_queue, timeout_seconds=3.0, limit=5)

    # Then the third invocation fails the file, saying why; every row sent has its one outcome,
    # and nothing more was sent
    assert continuations == 2
    manifest = stack.manifest("results/slow.jsonl/")
    assert manifest["status"] == "failed"
    assert manifest["error"]["type"] == "ImportAborted"
    message = manifest["error"]["message"]
    assert "not finished after 2 invocations (MAX_INVOCATIONS_PER_FILE)" in message
    outcomes = stack.outcomes("results/slow.jsonl/")
    read = manifest["counts"]["rows"]
    assert 0 < read < len(rows)
    assert "rows without a line in outcomes.csv were not sent" in message
    lines = [int(o["line"]) for o in outcomes]
    assert len(lines) == len(set(lines)) == read
    assert set(lines) <= set(range(1, len(rows) + 1))
    assert manifest["counts"]["rows"] == sum(
        n for name, n in manifest["counts"].items() if name != "rows"
    )
    posted = stack.vital.posted_connections()
    assert len(posted) == len(set(posted)) == manifest["counts"]["imported"]
    imported = {o["user_id"] for o in outcomes if o["outcome"] == "imported"}
    assert {user for _, user in posted} == imported


def test_raising_the_ceiling_lets_the_same_file_finish(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, continuation_queue: str
) -> None:
    rows = slow_file(stack, monkeypatch, max_invocations=50)

    stack.invoke(s3_event(stack.bucket, ["incoming/slow.jsonl"]), timeout_seconds=3.0)
    drain_queue(stack, continuation_queue, timeout_seconds=3.0)

    assert assert_complete(stack, "results/slow.jsonl/", len(rows))["status"] == "partial"
