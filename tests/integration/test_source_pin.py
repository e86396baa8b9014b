"""The object is read as it was described when the import began: an unversioned key is pinned
to its ETag, a versioned one to its version, so an upload of the same key in between cannot
have one file's ETag or version recorded for another file's rows (``sources.open_stream``)."""

from __future__ import annotations

from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from bulk_import.ingest import Compression
from bulk_import.ingest import source as sources
from tests.integration.conftest import Stack

BODY = b'{"n": 1}\n' * 2000


def _recording_client() -> tuple[Any, list[dict[str, Any]]]:
    """An S3 client that records the parameters of every GetObject it sends."""
    s3 = boto3.client("s3")
    sent: list[dict[str, Any]] = []
    s3.meta.events.register(
        "before-parameter-build.s3.GetObject", lambda params, **_: sent.append(dict(params))
    )
    return s3, sent


def test_an_unversioned_object_is_read_pinned_to_its_etag(stack: Stack) -> None:
    # Given an object in a bucket without versioning, described (its ETag noted)
    stack.put("incoming/pinned.jsonl", BODY)
    s3, sent = _recording_client()
    source = sources.describe(s3, stack.bucket, "incoming/pinned.jsonl", None)

    # When the key is uploaded again before the object is read
    stack.put("incoming/pinned.jsonl", b"another file")

    # Then the read is refused rather than served the other file's bytes
    with pytest.raises(ClientError) as refused:
        sources.open_stream(s3, source, Compression.NONE, 10**9).read()
    assert refused.value.response["Error"]["Code"] == "PreconditionFailed"
    assert sent
    assert {p.get("IfMatch") for p in sent} == {f'"{source.ref.etag}"'}
    assert all("VersionId" not in p for p in sent)


def test_a_versioned_object_is_read_by_its_version(stack: Stack) -> None:
    stack.s3.put_bucket_versioning(
        Bucket=stack.bucket, VersioningConfiguration={"Status": "Enabled"}
    )
    version = stack.put("incoming/versioned.jsonl", BODY)
    assert version
    s3, sent = _recording_client()
    source = sources.describe(s3, stack.bucket, "incoming/versioned.jsonl", version)

    stack.put("incoming/versioned.jsonl", b"another file")

    assert sources.open_stream(s3, source, Compression.NONE, 10**9).read() == BODY
    assert sent
    assert all(p.get("VersionId") == version and "IfMatch" not in p for p in sent)
