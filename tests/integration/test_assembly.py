"""The final outcomes object, assembled through moto: parts read back and streamed, not staged."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from bulk_import.storage import results
from bulk_import.storage.results import OutcomeSpool, assemble, outcomes_header
from tests.integration.conftest import Stack

pytestmark = pytest.mark.integration
MIB = 1024 * 1024


def test_parts_are_streamed_into_a_multipart_object_without_a_copy_in_tmp(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given two stored parts and a spool, together past the 16 MiB multipart threshold
    line = b"1,00000000-0000-4000-8000-000000000001,oura,imported,\n"
    parts = {
        "_state/outcomes-1": line * (9 * MIB // len(line)),
        "_state/outcomes-2": line.replace(b"1,", b"2,", 1) * (8 * MIB // len(line)),
    }
    for key, body in parts.items():
        stack.s3.put_object(Bucket=stack.bucket, Key=key, Body=body)
    spool = OutcomeSpool(outcomes_header())
    tail = line.replace(b"1,", b"3,", 1) * 1000
    spool.write_bytes(tail, 1000)
    uploaded: list[int] = []

    def on_part(params: dict[str, Any], **_: Any) -> None:
        uploaded.append(params["PartNumber"])

    def no_staging(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the final object was staged in /tmp")

    # When it is assembled, with nothing allowed to stage it on disk
    stack.s3.meta.events.register("provide-client-params.s3.UploadPart", on_part)
    # (results' own tempfile only: moto, in this process, spools large bodies to disk)
    monkeypatch.setattr(results, "tempfile", SimpleNamespace(TemporaryFile=no_staging))
    try:
        assemble(
            stack.s3,
            stack.bucket,
            "results/x/outcomes.csv",
            parts=list(parts),
            spool=spool,
            content_type="text/csv",
        )
    finally:
        stack.s3.meta.events.unregister("provide-client-params.s3.UploadPart", on_part)
        spool.close()

    # Then it is the header, the parts in order and the spool's lines, sent in parts
    expected = outcomes_header() + b"".join(parts.values()) + tail
    head = stack.s3.head_object(Bucket=stack.bucket, Key="results/x/outcomes.csv")
    assert head["ContentType"] == "text/csv"
    assert stack.get("results/x/outcomes.csv") == expected
    assert sorted(uploaded) == [1, 2]
