"""A dry run through the local stack: an object uploaded with ``x-amz-meta-dry-run: true`` is
read and validated by the real handler, and Vital's stand-in receives nothing."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from tests.helpers import access_token, compress, encode_rows, make_row, user_id
from tests.integration.conftest import Stack

pytestmark = pytest.mark.integration

SCHEMA = Path(__file__).resolve().parents[2] / "schemas" / "manifest.schema.json"


@pytest.mark.parametrize("fmt", ["jsonl", "csv.gz"])
def test_a_dry_run_validates_every_row_and_sends_nothing(stack: Stack, fmt: str) -> None:
    # Given 12 rows over two providers (one a duplicate, one without a valid user id), uploaded
    # with the dry-run metadata
    rows = [make_row(n, provider=("oura", "fitbit")[n % 2]) for n in range(10)]
    rows.append(dict(rows[3]))
    rows.append(make_row(50, user_id="not-a-uuid"))
    stack.vital.add_known_users(*(user_id(n) for n in range(10)))
    base = fmt.removesuffix(".gz")
    body = encode_rows(rows, base)
    if fmt.endswith(".gz"):
        body = compress(body, "gz")
    key = f"incoming/dry/batch.{fmt}"
    stack.put(key, body, metadata={"dry-run": "true"})

    # When the handler runs
    result = stack.import_keys(key)

    # Then Vital heard nothing, and the manifest and outcomes say what would have been sent
    assert stack.vital.recorded() == []
    prefix = f"results/dry/batch.{fmt}/"
    manifest = stack.manifest(prefix)
    assert result["files"][0]["status"] == "validated"
    assert manifest["status"] == "validated"
    assert manifest["dry_run"] is True
    assert manifest["counts"] == {
        "rows": 12,
        "rejected": 1,
        "duplicates": 1,
        "imported": 0,
        "failed": 0,
        "enqueued": 0,
        "errored": 0,
        "valid": 10,
    }
    assert manifest["chunks"] == []
    outcomes = stack.outcomes(prefix)
    assert len(outcomes) == 12
    assert sorted(o["outcome"] for o in outcomes).count("valid") == 10
    jsonschema.Draft202012Validator(json.loads(SCHEMA.read_text(encoding="utf-8"))).validate(
        manifest
    )
    # And no token is in anything written but the source
    written = stack.everything_written()
    assert all(access_token(n) not in written for n in range(10))


def test_an_upload_without_the_metadata_is_imported(stack: Stack) -> None:
    stack.vital.add_known_users(user_id(0))
    stack.put("incoming/oura/one.jsonl", encode_rows([make_row(0)], "jsonl"))
    stack.import_keys("incoming/oura/one.jsonl")
    manifest = stack.manifest("results/oura/one.jsonl/")
    assert manifest["status"] == "succeeded"
    assert manifest["dry_run"] is False
    assert len(stack.vital.bulk_import_requests()) == 1
