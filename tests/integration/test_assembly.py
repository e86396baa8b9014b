"""The final outcomes object, assembled through moto: parts read back in order into a multipart
upload (that they stream rather than stage is checked in tests/unit/test_results.py)."""

from __future__ import annotations

from typing import Any

import pytest

from bulk_import.storage.results import assemble
from bulk_import.storage.spool import OutcomeSpool, outcomes_header
from tests.integration.conftest import Stack

pytestmark = pytest.mark.integration
MIB = 1024 * 1024


def test_parts_are_streamed_into_a_multipart_object(stack: Stack) -> None:
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
    # Every request in order: a part read back (GetObject) or a part of the object sent.
    requests: list[str] = []

    def on_part(params: dict[str, Any], **_: Any) -> None:
        uploaded.append(params["PartNumber"])
        requests.append("UploadPart")

    def on_get(params: dict[str, Any], **_: Any) -> None:
        requests.append("GetObject " + params["Key"])

    # When it is assembled
    stack.s3.meta.events.register("provide-client-params.s3.UploadPart", on_part)
    stack.s3.meta.events.register("provide-client-params.s3.GetObject", on_get)
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
        stack.s3.meta.events.unregister("provide-client-params.s3.GetObject", on_get)
        spool.close()

    # Then it is the header, the parts in order and the spool's lines, sent in parts
    expected = outcomes_header() + b"".join(parts.values()) + tail
    head = stack.s3.head_object(Bucket=stack.bucket, Key="results/x/outcomes.csv")
    assert head["ContentType"] == "text/csv"
    assert stack.get("results/x/outcomes.csv") == expected
    assert sorted(uploaded) == [1, 2]
    assert requests.count("GetObject _state/outcomes-1") == 1
