"""A dry run (object metadata ``dry-run: true``) through the real run, fakes at the wiring seam:
every row validated, deduplicated and cut into chunks as it would be, nothing sent, and a
manifest that says ``validated``."""

from __future__ import annotations

import json
from typing import Any

import pytest

from bulk_import.config import Settings
from bulk_import.ingest import dry_run_requested
from bulk_import.model import Counts, ObjectRef
from tests.fakes import FakePost, FakeS3, StoreState, outcomes_by_line, run_offline
from tests.helpers import make_row

KEY = "incoming/oura/a.jsonl"
REF = ObjectRef(bucket="bucket-a", key=KEY, sequencer="0A")
OUTCOMES = "results/oura/a.jsonl/outcomes.csv"


def settings(**env: str) -> Settings:
    return Settings.from_env({"VITAL_API_KEY_SECRET": "vital-key", "CHUNK_SIZE": "2", **env})


def put_lines(s3: FakeS3, lines: list[dict[str, Any] | str], metadata: dict[str, str]) -> None:
    text = "".join((json.dumps(x) if isinstance(x, dict) else x) + "\n" for x in lines)
    s3.put(KEY, text.encode(), metadata)


@pytest.mark.parametrize(
    ("metadata", "expected"),
    [
        ({"dry-run": "true"}, True),
        ({"dry-run": " TRUE "}, True),
        ({"dry-run": "false"}, False),
        ({"dry-run": "yes"}, False),
        ({}, False),
    ],
)
def test_only_dry_run_true_asks_for_a_dry_run(metadata: dict[str, str], expected: bool) -> None:
    assert dry_run_requested(metadata) is expected


def test_given_a_dry_run_then_nothing_is_sent_and_every_row_has_an_outcome() -> None:
    # Given five valid rows, one of them a duplicate, and one row without a token
    s3, state, post = FakeS3(), StoreState(), FakePost()
    no_token = make_row(9)
    del no_token["access_token"]
    rows = [make_row(0), make_row(1), make_row(0), no_token, make_row(2), make_row(3)]
    put_lines(s3, rows, {"dry-run": "true"})

    # When it is imported
    result = run_offline(s3, state, settings(), REF, post_chunk=post)

    # Then nothing went to Vital, and the manifest says validated
    assert post.sent == []
    assert post.held == []
    manifest = result.manifest
    assert manifest is not None
    assert manifest.status == "validated"
    assert manifest.dry_run is True
    assert manifest.counts == Counts(rows=6, valid=4, rejected=1, duplicates=1)
    assert manifest.providers["oura"] == Counts(rows=6, valid=4, rejected=1, duplicates=1)
    assert manifest.chunks == []
    assert manifest.retry_key is None
    by_line = outcomes_by_line(s3, OUTCOMES)
    assert {line: o["outcome"] for line, o in by_line.items()} == {
        1: "valid",
        2: "valid",
        3: "duplicate",
        4: "rejected",
        5: "valid",
        6: "valid",
    }
    assert by_line[1]["detail"] == ""


def test_given_no_dry_run_metadata_then_the_manifest_says_it_was_not_one() -> None:
    s3, state = FakeS3(), StoreState()
    put_lines(s3, [make_row(0)], {"dry-run": "false"})
    result = run_offline(s3, state, settings(), REF, post_chunk=FakePost())
    assert result.manifest is not None
    assert result.manifest.status == "succeeded"
    assert result.manifest.dry_run is False
    assert result.manifest.counts == Counts(rows=1, imported=1)


def test_given_a_dry_run_of_a_file_that_cannot_be_read_then_it_fails() -> None:
    s3, state = FakeS3(), StoreState()
    s3.put(KEY, b"", {"dry-run": "true"})
    result = run_offline(s3, state, settings(), REF, post_chunk=FakePost())
    assert result.manifest is not None
    assert result.manifest.status == "failed"
    assert result.manifest.error is not None
    assert result.manifest.error.type == "MalformedFile"
