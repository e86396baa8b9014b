"""The end of a file: the status it ends with, the last guard that every row was counted, and the
order its results are written in."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from bulk_import.config import Settings
from bulk_import.errors import InternalError, MalformedFile
from bulk_import.ingest import Chunk, PendingRow
from bulk_import.model import (
    BulkOp,
    Checkpoint,
    Counts,
    Manifest,
    ObjectRef,
    Outcome,
    RowOutcome,
    SourceRef,
)
from bulk_import.run import finish
from bulk_import.run.context import RunContext
from bulk_import.storage.results import ResultWriter
from bulk_import.storage.spool import Spool
from bulk_import.wiring import build
from local.context import LocalLambdaContext
from tests.fakes import FakeS3, StoreState, offline
from tests.helpers import user_id

BUCKET = "bucket-a"
KEY = "incoming/oura/a.jsonl"
REF = ObjectRef(bucket=BUCKET, key=KEY, sequencer="0A", segment=2)
SETTINGS = Settings.from_env({"VITAL_API_KEY_SECRET": "vital-key"})
OUTCOMES = "results/oura/a.jsonl/outcomes.csv"
RETRY = "retry/oura/a.jsonl/retry.jsonl"
MANIFEST = "results/oura/a.jsonl/manifest.json"
HEADER = b"line,user_id,provider,outcome,detail\n"


@dataclass(frozen=True)
class RecordingWriter(ResultWriter):
    """The real writer, noting each final object it writes (and the parts it reads back)."""

    calls: list[tuple[str, str, list[str]]] = field(default_factory=list)

    def assemble(
        self, bucket: str, key: str, *, parts: list[str], spool: Spool, content_type: str
    ) -> None:
        self.calls.append(("assemble", key, list(parts)))
        ResultWriter.assemble(
            self, bucket, key, parts=parts, spool=spool, content_type=content_type
        )

    def write_manifest(self, bucket: str, key: str, manifest: Manifest) -> None:
        self.calls.append(("manifest", key, []))
        ResultWriter.write_manifest(self, bucket, key, manifest)


@pytest.fixture
def s3() -> FakeS3:
    return FakeS3()


@pytest.fixture
def writer(s3: FakeS3) -> RecordingWriter:
    return RecordingWriter(s3)  # type: ignore[arg-type]


@pytest.fixture
def ctx(s3: FakeS3, writer: RecordingWriter) -> Iterator[RunContext]:
    wiring = build(SETTINGS, LocalLambdaContext(900), **offline(s3, StoreState(), results=writer))
    context = RunContext(REF, wiring)
    context.source = SourceRef(bucket=BUCKET, key=KEY, sequencer="0A", etag="e1")
    yield context
    context.ledger.close()


def chunk(first: int, last: int) -> Chunk:
    rows = [
        PendingRow(n, user_id(n), json.dumps({"user_id": user_id(n)}).encode())
        for n in range(first, last + 1)
    ]
    return Chunk("oura", rows, sum(len(r.payload) for r in rows))


def counted(ctx: RunContext, **rows: int) -> None:
    """Rows per outcome name into the run's tally, e.g. ``counted(ctx, imported=9)``."""
    for name, n in rows.items():
        ctx.ledger.tally.add_same("oura", Outcome(name), n)


# --- status ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rows", "status"),
    [
        ({"imported": 10}, "succeeded"),
        ({"imported": 5, "enqueued": 5}, "succeeded"),
        ({"imported": 5, "duplicate": 5}, "succeeded"),  # a duplicate is not a failure
        ({}, "succeeded"),  # nothing counted, nothing stopped (a file with no rows fails)
        ({"imported": 9, "rejected": 1}, "partial"),
        ({"imported": 9, "failed": 1}, "partial"),
        ({"imported": 9, "errored": 1}, "partial"),
        ({"rejected": 10}, "partial"),
    ],
)
def test_given_the_outcomes_when_nothing_stopped_the_file_then_they_decide_its_status(
    ctx: RunContext, rows: dict[str, int], status: str
) -> None:
    counted(ctx, **rows)
    assert finish.status(ctx, []) == status


def test_given_a_file_error_when_every_row_was_imported_then_the_file_failed(
    ctx: RunContext,
) -> None:
    counted(ctx, imported=10)
    ctx.stop.fail(MalformedFile("gzip data is corrupt"))
    assert finish.status(ctx, []) == "failed"


@pytest.mark.parametrize(
    ("op_status", "status"),
    [
        ("failure", "partial"),
        ("aborted", "partial"),
        ("success", "succeeded"),
        ("pending", "succeeded"),
    ],
)
def test_given_enqueued_rows_then_a_bulk_op_that_failed_makes_the_file_partial(
    ctx: RunContext, op_status: str, status: str
) -> None:
    counted(ctx, enqueued=10)
    ops = [BulkOp(status="success", provider="oura"), BulkOp(status=op_status, provider="oura")]
    assert finish.status(ctx, ops) == status


# --- every row counted ----------------------------------------------------------------------------


def test_given_a_file_read_to_its_end_when_an_outcome_is_missing_then_it_is_an_internal_error(
    ctx: RunContext,
) -> None:
    counted(ctx, imported=8, rejected=1)
    ctx.progress.rows_read, ctx.progress.read_to_end = 10, True

    finish.check_every_row_counted(ctx)

    assert isinstance(ctx.stop.error, InternalError)
    assert str(ctx.stop.error) == (
        "internal error: 10 rows read, 9 outcomes recorded; see the function's logs"
    )
    assert finish.status(ctx, []) == "failed"


def test_given_one_outcome_too_many_then_it_is_an_internal_error_too(ctx: RunContext) -> None:
    counted(ctx, imported=11)
    ctx.progress.rows_read, ctx.progress.read_to_end = 10, True
    finish.check_every_row_counted(ctx)
    assert "10 rows read, 11 outcomes recorded" in str(ctx.stop.error)


def test_given_every_row_counted_then_nothing_is_wrong(ctx: RunContext) -> None:
    counted(ctx, imported=8, rejected=1, duplicate=1)
    ctx.progress.rows_read, ctx.progress.read_to_end = 10, True
    finish.check_every_row_counted(ctx)
    assert ctx.stop.error is None


def test_given_a_file_not_read_to_its_end_then_fewer_outcomes_are_expected(
    ctx: RunContext,
) -> None:
    # A run that stopped reading (a file error) has outcomes only for the rows it read so far
    counted(ctx, imported=5)
    ctx.progress.rows_read, ctx.progress.read_to_end = 10, False
    finish.check_every_row_counted(ctx)
    assert ctx.stop.error is None


def test_given_the_file_already_failed_then_the_gap_does_not_replace_its_error(
    ctx: RunContext,
) -> None:
    counted(ctx, imported=5)
    ctx.progress.rows_read, ctx.progress.read_to_end = 10, True
    ctx.stop.fail(MalformedFile("gzip data is corrupt"))
    finish.check_every_row_counted(ctx)
    assert isinstance(ctx.stop.error, MalformedFile)


# --- the results, in order ------------------------------------------------------------------------


def manifest_written(s3: FakeS3) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(s3.objects[MANIFEST])
    return document


def test_given_no_row_to_retry_then_outcomes_csv_then_the_manifest_are_written(
    ctx: RunContext, s3: FakeS3, writer: RecordingWriter
) -> None:
    ctx.ledger.write_chunk(chunk(1, 3), Outcome.IMPORTED, "")

    key, manifest = finish.write_results(ctx, [])

    assert key == MANIFEST
    assert writer.calls == [("assemble", OUTCOMES, []), ("manifest", MANIFEST, [])]
    assert RETRY not in s3.objects
    assert s3.objects[OUTCOMES] == HEADER + b"".join(
        f"{n},{user_id(n)},oura,imported,\n".encode() for n in (1, 2, 3)
    )
    assert manifest.retry_key is None
    assert manifest.outcomes_key == OUTCOMES
    assert manifest.status == "succeeded"
    assert manifest.counts == Counts(rows=3, imported=3)
    assert manifest.segments == 3  # this invocation is the import's third
    assert manifest.source == ctx.source
    assert manifest_written(s3) == manifest.model_dump(mode="json")


def test_given_rows_to_retry_then_outcomes_csv_retry_jsonl_then_the_manifest_are_written(
    ctx: RunContext, s3: FakeS3, writer: RecordingWriter
) -> None:
    ctx.ledger.write_chunk(chunk(1, 2), Outcome.IMPORTED, "")
    ctx.ledger.write_chunk(chunk(3, 4), Outcome.ERRORED, "HTTP 500")

    _, manifest = finish.write_results(ctx, [])

    assert writer.calls == [
        ("assemble", OUTCOMES, []),
        ("assemble", RETRY, []),
        ("manifest", MANIFEST, []),
    ]
    retried = [json.loads(line) for line in s3.objects[RETRY].splitlines()]
    assert retried == [{"provider": "oura", "user_id": user_id(n)} for n in (3, 4)]
    assert manifest.retry_key == RETRY
    assert manifest.status == "partial"
    assert manifest_written(s3)["retry_key"] == RETRY


def test_given_a_resumed_import_then_the_earlier_parts_come_first_and_their_retries_count(
    ctx: RunContext, s3: FakeS3, writer: RecordingWriter
) -> None:
    # Given an earlier invocation stored an errored row (outcome and retry parts); this one
    # only imported rows
    outcome_part = "results/oura/a.jsonl/_state/outcomes-0000000a-00001.csv"
    retry_part = "retry/oura/a.jsonl/_state/retry-0000000a-00001.jsonl"
    s3.put(outcome_part, f"1,{user_id(1)},oura,errored,HTTP 500\n".encode())
    s3.put(retry_part, b'{"provider":"oura","user_id":"u1"}\n')
    stored = Counts(rows=1, errored=1)
    ctx.ledger.restore(
        Checkpoint(
            source=ctx.source,
            fingerprint="f",
            started_at="2026-01-01T00:00:00.000Z",
            next_segment=2,
            counts=stored,
            providers={"oura": stored},
            outcome_parts=[outcome_part],
            retry_parts=[retry_part],
        )
    )
    ctx.ledger.write_chunk(chunk(2, 3), Outcome.IMPORTED, "")

    _, manifest = finish.write_results(ctx, [])

    # Then retry.jsonl is written from the earlier part though this run retries nothing
    assert writer.calls == [
        ("assemble", OUTCOMES, [outcome_part]),
        ("assemble", RETRY, [retry_part]),
        ("manifest", MANIFEST, []),
    ]
    assert s3.objects[OUTCOMES].splitlines()[1:] == [
        f"1,{user_id(1)},oura,errored,HTTP 500".encode(),
        f"2,{user_id(2)},oura,imported,".encode(),
        f"3,{user_id(3)},oura,imported,".encode(),
    ]
    assert s3.objects[RETRY] == b'{"provider":"oura","user_id":"u1"}\n'
    assert manifest.retry_key == RETRY
    assert manifest.counts == Counts(rows=3, imported=2, errored=1)


def test_given_the_file_failed_then_the_manifest_carries_its_error(
    ctx: RunContext, s3: FakeS3
) -> None:
    ctx.ledger.write([RowOutcome(1, "", "oura", Outcome.REJECTED, "invalid JSON")])
    ctx.stop.fail(MalformedFile("gzip data is corrupt"))

    _, manifest = finish.write_results(ctx, [])

    assert manifest.status == "failed"
    assert manifest_written(s3)["error"] == {
        "type": "MalformedFile",
        "message": "gzip data is corrupt",
    }
