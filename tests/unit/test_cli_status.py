"""``bulk-import status`` and ``upload --follow``'s watch: where an import in S3 stands, read
from its manifest, its checkpoint and the object (an in-memory S3), and the lines a follower
prints as it moves."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from bulk_import.model import Checkpoint, ChunkRecord, Counts, ErrorInfo, Manifest, SourceRef
from bulk_import_cli.app import app
from bulk_import_cli.local_import import settings_for
from bulk_import_cli.remote import watch
from bulk_import_cli.standing import NOT_FOUND, PENDING, RUNNING, Standing, parse_s3_uri, standing
from tests.fakes import FakeS3

BUCKET, KEY = "bucket-a", "incoming/oura/a.jsonl"
RESULTS = "results/oura/a.jsonl/"
SETTINGS = settings_for({}, {})


def upload(s3: FakeS3, body: bytes = b"{}\n") -> SourceRef:
    s3.put(KEY, body)
    etag = s3.head_object(Bucket=BUCKET, Key=KEY)["ETag"].strip('"')
    return SourceRef(bucket=BUCKET, key=KEY, etag=etag)


def checkpoint(source: SourceRef, **fields: object) -> bytes:
    cp = Checkpoint.model_validate(
        {
            "source": source,
            "fingerprint": "f",
            "started_at": "2026-01-01T00:00:00Z",
            "next_segment": 2,
            "lines_done": 40,
            "counts": Counts(rows=30, imported=28, failed=2),
            "chunks": [
                ChunkRecord(provider="oura", first_line=1, last_line=20, size=20, bytes=1),
                ChunkRecord(
                    provider="oura", first_line=21, last_line=30, size=10, bytes=1, note="503"
                ),
            ],
            **fields,
        }
    )
    return cp.model_dump_json().encode()


def manifest(source: SourceRef, status: str = "succeeded") -> bytes:
    return (
        Manifest(
            source=source,
            status=status,  # type: ignore[arg-type]
            started_at="2026-01-01T00:00:00Z",
            finished_at="2026-01-01T00:01:00Z",
            counts=Counts(rows=50, imported=50),
            outcomes_key=RESULTS + "outcomes.csv",
            segments=3,
            error=ErrorInfo(type="ImportAborted", message="stopped")
            if status == "failed"
            else None,
        )
        .model_dump_json()
        .encode()
    )


def test_nothing_uploaded_is_not_found_and_an_upload_alone_is_pending() -> None:
    s3 = FakeS3()
    assert standing(s3, BUCKET, KEY, SETTINGS).state == NOT_FOUND
    upload(s3)
    assert standing(s3, BUCKET, KEY, SETTINGS).state == PENDING


def test_a_checkpoint_of_this_upload_is_a_running_import_with_its_counts() -> None:
    s3 = FakeS3()
    source = upload(s3)
    s3.put(RESULTS + "_state/checkpoint.json", checkpoint(source))
    found = standing(s3, BUCKET, KEY, SETTINGS)
    assert found.state == RUNNING
    assert found.counts.rows == 30
    assert (found.lines, found.chunks, found.invocations) == (40, 2, 2)
    assert found.last_error == "lines 21-30: 503"
    stopped = checkpoint(source, stop_reason=ErrorInfo(type="ImportAborted", message="why"))
    s3.put(RESULTS + "_state/checkpoint.json", stopped)
    assert standing(s3, BUCKET, KEY, SETTINGS).last_error == "ImportAborted: why"


def test_a_manifest_of_this_upload_is_final() -> None:
    s3 = FakeS3()
    source = upload(s3)
    s3.put(RESULTS + "manifest.json", manifest(source, "failed"))
    found = standing(s3, BUCKET, KEY, SETTINGS)
    assert found.final
    assert found.state == "failed"
    assert found.last_error == "ImportAborted: stopped"
    assert found.manifest_key == RESULTS + "manifest.json"


def test_results_of_an_older_upload_leave_the_new_one_pending() -> None:
    s3 = FakeS3()
    old = upload(s3, b"old\n")
    s3.put(RESULTS + "manifest.json", manifest(old))
    upload(s3, b"new\n")
    assert standing(s3, BUCKET, KEY, SETTINGS).state == PENDING


def test_following_prints_a_line_when_the_import_moves_and_stops_when_it_is_final(
    capsys: pytest.CaptureFixture[str],
) -> None:
    looks = iter(
        [
            Standing(BUCKET, KEY, PENDING, Counts()),
            Standing(BUCKET, KEY, RUNNING, Counts(rows=10), chunks=1, lines=10),
            Standing(BUCKET, KEY, RUNNING, Counts(rows=10), chunks=1, lines=10),
            Standing(BUCKET, KEY, "succeeded", Counts(rows=20), chunks=2, lines=20),
        ]
    )
    now = [0.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    found = watch(lambda: next(looks), 2.0, lambda: now[0], sleep)

    assert found.state == "succeeded"
    assert slept == [2.0, 2.0, 2.0]
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        "waiting for the function to start the import",
        "running: 10 rows done, 10 lines read, 1 requests",
        "succeeded: 20 rows done, 20 lines read, 2 requests",
    ]


def test_following_gives_up_after_its_timeout() -> None:
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    found = watch(
        lambda: Standing(BUCKET, KEY, PENDING, Counts()), 2.0, lambda: now[0], sleep, timeout=5
    )
    assert found.state == PENDING
    assert now[0] == 5.0


@pytest.mark.parametrize("uri", ["bucket/key", "s3://bucket", "s3:///key", "https://x/y"])
def test_an_address_that_is_not_s3_bucket_key_is_refused(uri: str) -> None:
    with pytest.raises(ValueError, match="not an s3://BUCKET/KEY address"):
        parse_s3_uri(uri)
    result = CliRunner().invoke(app, ["status", uri])
    assert result.exit_code == 2
    assert len(result.stderr.strip().splitlines()) == 1


def test_an_upload_outside_the_incoming_prefix_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    path.write_text("{}\n", encoding="utf-8")
    result = CliRunner().invoke(app, ["upload", str(path), "s3://bucket/elsewhere/a.jsonl"])
    assert result.exit_code == 2
    assert "only keys under incoming/" in result.stderr
