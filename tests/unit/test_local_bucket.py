"""``LocalBucket``: the S3 calls an import makes, over a directory, with S3's answers to
conditional writes, ranges and missing keys (what the checkpoint store relies on)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from bulk_import.errors import aws_error_code
from bulk_import.storage.checkpoint_store import CheckpointStore
from bulk_import_cli.local_bucket import LocalBucket, Route

SOURCE = "incoming/a.jsonl"


@pytest.fixture
def bucket(tmp_path: Path) -> LocalBucket:
    source = tmp_path / "a.jsonl"
    source.write_bytes(b"0123456789")
    out = tmp_path / "out"
    return LocalBucket(
        SOURCE,
        source,
        {"provider": "oura"},
        [
            Route("results/a.jsonl/", out),
            Route("retry/a.jsonl/_state/", out / "_state" / "retry"),
            Route("retry/a.jsonl/", out),
        ],
    )


def code(excinfo: pytest.ExceptionInfo[ClientError]) -> str | None:
    return aws_error_code(excinfo.value)


def test_the_source_is_read_from_its_file_by_range_and_counted(bucket: LocalBucket) -> None:
    head = bucket.head_object(Bucket="b", Key=SOURCE)
    assert head["ContentLength"] == 10
    assert head["Metadata"] == {"provider": "oura"}
    body = bucket.get_object(Bucket="b", Key=SOURCE, Range="bytes=4-", IfMatch=head["ETag"])
    assert body["Body"].read() == b"456789"
    assert bucket.source_bytes_read == 6
    with pytest.raises(ClientError) as past_end:
        bucket.get_object(Bucket="b", Key=SOURCE, Range="bytes=10-")
    assert code(past_end) == "InvalidRange"
    with pytest.raises(ClientError) as changed:
        bucket.get_object(Bucket="b", Key=SOURCE, IfMatch='"other"')
    assert code(changed) == "PreconditionFailed"


def test_results_and_retry_rows_land_in_one_directory(bucket: LocalBucket, tmp_path: Path) -> None:
    bucket.put_object(Bucket="b", Key="results/a.jsonl/manifest.json", Body="{}")
    bucket.upload_fileobj(io.BytesIO(b"x\n"), "b", "retry/a.jsonl/retry.jsonl")
    bucket.upload_fileobj(
        io.BytesIO(b"y\n"), "b", "retry/a.jsonl/_state/retry-0a0b0c0d-00001.jsonl"
    )
    out = tmp_path / "out"
    assert (out / "manifest.json").read_text() == "{}"
    assert (out / "retry.jsonl").read_bytes() == b"x\n"
    assert (out / "_state" / "retry" / "retry-0a0b0c0d-00001.jsonl").read_bytes() == b"y\n"
    assert bucket.list_keys("retry/a.jsonl/_state/") == [
        "retry/a.jsonl/_state/retry-0a0b0c0d-00001.jsonl"
    ]


def test_a_key_outside_the_routes_is_refused(bucket: LocalBucket) -> None:
    for key in ("results/other.csv/manifest.json", "results/a.jsonl/../../escape"):
        with pytest.raises(ClientError) as refused:
            bucket.put_object(Bucket="b", Key=key, Body="{}")
        assert code(refused) == "AccessDenied"


def test_conditional_writes_answer_as_s3_does(bucket: LocalBucket) -> None:
    key = "results/a.jsonl/_state/checkpoint.json"
    first = bucket.put_object(Bucket="b", Key=key, Body="1", IfNoneMatch="*")
    with pytest.raises(ClientError) as exists:
        bucket.put_object(Bucket="b", Key=key, Body="2", IfNoneMatch="*")
    assert code(exists) == "PreconditionFailed"
    second = bucket.put_object(Bucket="b", Key=key, Body="2", IfMatch=first["ETag"])
    with pytest.raises(ClientError) as stale:
        bucket.put_object(Bucket="b", Key=key, Body="3", IfMatch=first["ETag"])
    assert code(stale) == "PreconditionFailed"
    assert bucket.head_object(Bucket="b", Key=key)["ETag"] == second["ETag"]
    with pytest.raises(ClientError) as stale_delete:
        bucket.delete_object(Bucket="b", Key=key, IfMatch=first["ETag"])
    assert code(stale_delete) == "PreconditionFailed"
    bucket.delete_object(Bucket="b", Key=key, IfMatch=second["ETag"])
    with pytest.raises(ClientError) as gone:
        bucket.put_object(Bucket="b", Key=key, Body="4", IfMatch=second["ETag"])
    assert code(gone) == "NoSuchKey"


def test_the_checkpoint_store_works_over_it(bucket: LocalBucket) -> None:
    # Given the Lambda's own store of checkpoints and parts, over the directory
    store = CheckpointStore(bucket, "b", "results/a.jsonl/", "retry/a.jsonl/", "0a0b0c0d")  # type: ignore[arg-type]
    assert store.load() is None
    part = store.outcome_part_key(1)
    bucket.upload_fileobj(io.BytesIO(b"1,u,oura,valid,\n"), "b", part)
    retry = store.retry_part_key(1)
    bucket.upload_fileobj(io.BytesIO(b"{}\n"), "b", retry)
    # Then it finds and removes its parts
    assert sorted(store.stored_parts()) == sorted([part, retry])
    store.delete_parts([part, retry])
    assert store.stored_parts() == []
