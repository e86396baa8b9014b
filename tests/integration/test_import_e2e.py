"""The whole path: S3 object → handler → Vital stand-in → results in S3, over real sockets."""

from __future__ import annotations

import csv
import gc
import io
import json
import sys
import threading
import time
from collections import Counter
from typing import Any

import boto3
import httpx
import pytest
from pydantic_core import to_json

from bulk_import.model import OAUTH1_EXPIRES_AT, ContinuationMessage, ObjectRef
from bulk_import.run.tuning import GC_YOUNG_THRESHOLD, POSTING_SWITCH_INTERVAL_S
from bulk_import.storage import aws
from bulk_import.storage.results import ResultWriter
from local.events import s3_event
from tests.helpers import (
    access_token,
    compress,
    encode_rows,
    make_row,
    refresh_token,
    user_id,
)
from tests.integration.conftest import Stack

pytestmark = pytest.mark.integration

OUTCOME_COLUMNS = ["line", "user_id", "provider", "outcome", "detail"]


def assert_invariant(manifest: dict, outcomes: list[dict[str, str]]) -> None:
    counts = manifest["counts"]
    assert counts["rows"] == sum(v for k, v in counts.items() if k != "rows")
    assert len(outcomes) == counts["rows"]
    assert len({o["line"] for o in outcomes}) == counts["rows"], "one outcome per line"
    tally = Counter(o["outcome"] for o in outcomes)
    assert tally["imported"] == counts["imported"]
    assert tally["duplicate"] == counts["duplicates"]
    assert tally["rejected"] == counts["rejected"]


def test_mixed_file_is_imported_with_one_outcome_per_row(stack: Stack) -> None:
    # Given 30 valid rows over three providers, 2 invalid rows, 1 duplicate, 1 user Vital fails
    rows = [make_row(n, provider=("oura", "fitbit", "garmin")[n % 3]) for n in range(30)]
    rows.insert(5, make_row(100, user_id="not-a-uuid"))
    rows.insert(9, {**make_row(101), "expires_at": "soon"})
    rows.append(dict(rows[0]))
    stack.vital.add_known_users(*(user_id(n) for n in range(30) if n != 7))
    stack.put("incoming/batch.jsonl", encode_rows(rows, "jsonl"))

    # When the handler runs
    result = stack.import_keys("incoming/batch.jsonl")

    # Then every row has exactly one outcome and the counts add up
    manifest = stack.manifest("results/batch.jsonl/")
    outcomes = stack.outcomes("results/batch.jsonl/")
    assert result["files"][0]["status"] == "partial"
    assert manifest["status"] == "partial"
    assert manifest["counts"] == {
        "rows": 33,
        "rejected": 2,
        "duplicates": 1,
        "imported": 29,
        "failed": 1,
        "enqueued": 0,
        "errored": 0,
        "valid": 0,
    }
    assert_invariant(manifest, outcomes)
    by_line = {int(o["line"]): o for o in outcomes}
    assert by_line[6]["outcome"] == "rejected"
    assert "user_id" in by_line[6]["detail"]
    assert by_line[10]["outcome"] == "rejected"
    assert by_line[10]["detail"].startswith("expires_at")
    assert by_line[33]["outcome"] == "duplicate"
    assert "line 1" in by_line[33]["detail"]
    assert {o["outcome"] for o in outcomes if o["user_id"] == user_id(7)} == {"failed"}
    # And every valid row reached Vital exactly once, grouped by provider, CHUNK_SIZE bounded
    posted = stack.vital.posted_connections()
    valid = [make_row(n, provider=("oura", "fitbit", "garmin")[n % 3]) for n in range(30)]
    assert sorted(posted) == sorted((r["provider"], r["user_id"]) for r in valid)
    assert len(posted) == len(set(posted)) == 30
    for request in stack.vital.bulk_import_requests():
        assert len(request.user_ids) <= 10
        assert request.query.get("team_id") is None
    assert set(manifest["providers"]) == {"oura", "fitbit", "garmin"}
    assert sum(c["size"] for c in manifest["chunks"]) == 30
    assert manifest["source"]["bucket"] == stack.bucket
    assert manifest["source"]["etag"]
    assert manifest["source"]["size"] > 0
    # And the metrics the alarms read carry the manifest's numbers, per file and per provider
    per_file, per_provider = _row_metrics(stack)
    assert per_file == {
        "RowsRead": 33,
        "RowsRejected": 2,
        "RowsDuplicate": 1,
        "RowsImported": 29,
        "RowsFailed": 1,
        "RowsEnqueued": 0,
        "RowsErrored": 0,
        "FilesProcessed": 1,  # partial is processed; FilesFailed is for failed files only
    }
    assert per_provider == {
        ("oura", "RowsImported"): 10,
        ("oura", "RowsFailed"): 0,
        ("fitbit", "RowsImported"): 9,
        ("fitbit", "RowsFailed"): 1,  # user 7
        ("garmin", "RowsImported"): 10,
        ("garmin", "RowsFailed"): 0,
    }


def _row_metrics(stack: Stack) -> tuple[dict[str, float], dict[tuple[str, str], float]]:
    """The EMF row and file metrics printed: (per file, per (provider, name))."""
    per_file: dict[str, float] = {}
    per_provider: dict[tuple[str, str], float] = {}
    names = {"RowsRead", "RowsRejected", "RowsDuplicate", "RowsImported", "RowsFailed"}
    names |= {"RowsEnqueued", "RowsErrored", "FilesProcessed", "FilesFailed"}
    for line in "".join(stack.stdout).splitlines():
        if not line.startswith("{") or "_aws" not in line:
            continue
        document = json.loads(line)
        for directive in document["_aws"]["CloudWatchMetrics"]:
            for metric in directive["Metrics"]:
                name = metric["Name"]
                if name not in names:
                    continue
                value = document[name]
                value = sum(value) if isinstance(value, list) else value
                if "provider" in document:
                    per_provider[(document["provider"], name)] = value
                else:
                    per_file[name] = value
    return per_file, per_provider


@pytest.mark.parametrize("fmt", ["jsonl", "ndjson", "json", "csv"])
@pytest.mark.parametrize("compression", ["", "gz", "zst"])
def test_every_format_and_compression(stack: Stack, fmt: str, compression: str) -> None:
    rows = [make_row(n, provider="withings") for n in range(25)]
    stack.vital.add_known_users(*(r["user_id"] for r in rows))
    key = f"incoming/export.{fmt}" + (f".{compression}" if compression else "")
    stack.put(key, compress(encode_rows(rows, fmt), compression))

    stack.import_keys(key)

    prefix = "results/" + key.removeprefix("incoming/") + "/"
    manifest = stack.manifest(prefix)
    assert manifest["status"] == "succeeded", manifest.get("error")
    assert manifest["counts"]["imported"] == 25
    assert_invariant(manifest, stack.outcomes(prefix))
    assert len(stack.vital.posted_connections()) == 25


def test_key_with_spaces_and_unicode(stack: Stack) -> None:
    key = "incoming/oura/Été 2026/exports + more 日本 ü.csv"
    rows = [make_row(n, provider=None) for n in range(3)]
    stack.vital.add_known_users(*(r["user_id"] for r in rows))
    stack.put(key, encode_rows(rows, "csv"))

    result = stack.invoke(s3_event(stack.bucket, [key]))

    prefix = "results/oura/Été 2026/exports + more 日本 ü.csv/"
    assert result["files"][0]["manifest"] == prefix + "manifest.json"
    manifest = stack.manifest(prefix)
    assert manifest["source"]["key"] == key
    assert manifest["counts"]["imported"] == 3
    assert {p for p, _ in stack.vital.posted_connections()} == {"oura"}


def test_a_key_too_long_for_its_results_is_ignored_with_an_error_not_retried(
    stack: Stack,
) -> None:
    # S3 keys hold 1024 bytes; the longest key an import writes is the object's plus 34
    # ("results/" for "incoming/", "/_state/outcomes-<run>-00001.csv"). Imported anyway, every
    # write would fail with KeyTooLongError (on S3: moto does not enforce it) and Lambda retry.
    def key_of(size: int) -> str:
        stem = "incoming/oura/" + "日" * ((size - len("incoming/oura/.csv")) // 3)
        key = stem + "x" * (size - len((stem + ".csv").encode())) + ".csv"
        assert len(key.encode()) == size
        return key

    fits, too_long = key_of(990), key_of(991)
    rows = [make_row(n, provider=None) for n in range(2)]
    stack.vital.add_known_users(*(r["user_id"] for r in rows))
    stack.put(fits, encode_rows(rows, "csv"))
    stack.put(too_long, encode_rows(rows, "csv"))

    result = stack.invoke(s3_event(stack.bucket, [fits, too_long]))

    assert [f["status"] for f in result["files"]] == ["succeeded"]
    written = stack.s3.list_objects_v2(Bucket=stack.bucket, Prefix="results/")["Contents"]
    assert max(len(o["Key"].encode()) for o in written) <= 1024
    assert not any(o["Key"].startswith("results/" + too_long[len("incoming/") :]) for o in written)
    assert any("too long for its results" in line for line in stack.log_lines)


def test_provider_from_object_metadata(stack: Stack) -> None:
    rows = [make_row(n, provider=None) for n in range(4)]
    rows.append(make_row(9, provider="polar"))  # a row's own provider wins
    stack.vital.add_known_users(*(r["user_id"] for r in rows))
    stack.put("incoming/no-provider.jsonl", encode_rows(rows, "jsonl"), {"provider": "dexcom_v3"})

    stack.import_keys("incoming/no-provider.jsonl")

    manifest = stack.manifest("results/no-provider.jsonl/")
    assert manifest["counts"]["imported"] == 5
    assert sorted(stack.vital.posted_connections()) == sorted(
        [("dexcom_v3", r["user_id"]) for r in rows[:4]] + [("polar", rows[4]["user_id"])]
    )


@pytest.mark.parametrize("extra", ["", "acme_ring,zeta2"])
def test_a_provider_named_in_extra_providers_is_imported_without_a_release(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, extra: str
) -> None:
    # Given a file under incoming/acme_ring/: rows without a provider, one naming it in another
    # spelling (the full model takes it), and an oura row
    rows = [make_row(n, provider=None) for n in range(3)]
    rows.append(make_row(3, provider="Acme_Ring"))
    rows.append(make_row(4, provider="oura"))
    stack.vital.add_known_users(*(r["user_id"] for r in rows))
    stack.put("incoming/acme_ring/export.jsonl", encode_rows(rows, "jsonl"))
    monkeypatch.setenv("EXTRA_PROVIDERS", extra)  # the function's and the stand-in's list

    stack.import_keys("incoming/acme_ring/export.jsonl")

    manifest = stack.manifest("results/acme_ring/export.jsonl/")
    outcomes = stack.outcomes("results/acme_ring/export.jsonl/")
    if extra:
        # Then every row is imported, and Vital was asked with the new slug
        assert manifest["counts"]["imported"] == 5
        assert set(manifest["providers"]) == {"acme_ring", "oura"}
        assert sorted(stack.vital.posted_connections()) == sorted(
            [("acme_ring", r["user_id"]) for r in rows[:4]] + [("oura", rows[4]["user_id"])]
        )
    else:
        # Without it, the rows that name no known provider are rejected, saying which are known
        assert manifest["counts"]["rejected"] == 4
        assert manifest["counts"]["imported"] == 1
        reasons = {o["detail"] for o in outcomes if o["outcome"] == "rejected"}
        assert any(r.startswith("provider: unknown provider; expected one of") for r in reasons)
        assert stack.vital.posted_connections() == [("oura", rows[4]["user_id"])]


@pytest.mark.parametrize(("metadata", "expected"), [(" Oura ", "oura"), ("", None)])
def test_metadata_provider_spelled_loosely(
    stack: Stack, metadata: str, expected: str | None
) -> None:
    """Well-formed rows without a provider take the file's default only once it is normalised."""
    rows = [make_row(n, provider=None) for n in range(3)]
    stack.vital.add_known_users(*(r["user_id"] for r in rows))
    stack.put("incoming/loose.jsonl", encode_rows(rows, "jsonl"), {"provider": metadata})

    stack.import_keys("incoming/loose.jsonl")

    manifest = stack.manifest("results/loose.jsonl/")
    if expected is None:
        assert manifest["counts"]["rejected"] == 3
        assert stack.vital.bulk_import_requests() == []
    else:
        assert manifest["counts"]["imported"] == 3
        assert {p for p, _ in stack.vital.posted_connections()} == {expected}


def test_a_csv_header_with_a_stray_quote_is_a_malformed_file(stack: Stack) -> None:
    # Strict quoting refuses the header: the file fails with a reason, not an internal error.
    row = make_row(1)
    body = (
        '"user_id"x,access_token,refresh_token,provider_id,expires_at,provider\n'
        f"{row['user_id']},{row['access_token']},{row['refresh_token']},p,1893456000,oura\n"
    ).encode()
    stack.put("incoming/header.csv", body)

    stack.import_keys("incoming/header.csv")

    error = stack.manifest("results/header.csv/")["error"]
    assert error == {
        "type": "MalformedFile",
        "message": "CSV header (line 1) cannot be read (',' expected after '\"'); check its "
        "quoting",
    }


def test_deeply_nested_scopes_reject_their_row_and_the_rest_goes_on(stack: Stack) -> None:
    # json's RecursionError on such a value must reject its row, not fail the file.
    rows = [make_row(i) for i in range(30)]
    rows[5]["oauth_scopes"] = "[" * 20_000 + "]" * 20_000  # a 40 KB value, within MAX_ROW_BYTES
    stack.vital.add_known_users(*(r["user_id"] for r in rows))
    stack.put("incoming/scopes.jsonl", encode_rows(rows, "jsonl"))

    stack.import_keys("incoming/scopes.jsonl")

    manifest = stack.manifest("results/scopes.jsonl/")
    assert manifest["error"] is None
    assert manifest["counts"]["rejected"] == 1
    assert manifest["counts"]["imported"] == 29
    (rejected,) = [o for o in stack.outcomes("results/scopes.jsonl/") if o["line"] == "6"]
    assert (
        rejected["detail"]
        == "oauth_scopes: looks like a JSON array of scopes, but is not valid JSON"
    )


def test_a_json_element_nested_too_deeply_is_rejected_and_the_rest_is_imported(
    stack: Stack,
) -> None:
    # 100,000 levels in one element (200 KB, within MAX_ROW_BYTES): too deep for json to build;
    # the element is passed over and rejected by its index, the file goes on.
    rows = [make_row(i) for i in range(10)]
    stack.vital.add_known_users(*(r["user_id"] for r in rows))
    deep = '{"user_id": "x", "scopes": ' + "[" * 100_000 + "]" * 100_000 + "}"
    elements = [json.dumps(r) for r in rows]
    elements.insert(4, deep)  # element 5
    stack.put("incoming/deep.json", ("[\n" + ",\n".join(elements) + "\n]").encode())

    stack.import_keys("incoming/deep.json")

    manifest = stack.manifest("results/deep.json/")
    assert manifest["error"] is None
    assert manifest["status"] == "partial"
    assert manifest["counts"]["rows"] == 11
    assert manifest["counts"]["rejected"] == 1
    assert manifest["counts"]["imported"] == 10
    (rejected,) = [o for o in stack.outcomes("results/deep.json/") if o["outcome"] == "rejected"]
    assert (rejected["line"], rejected["detail"]) == ("5", "element is nested too deeply")


def test_a_csv_quote_closed_lines_later_at_a_field_end_names_the_lines_it_took(
    stack: Stack,
) -> None:
    # The quote opened on line 3 closes on line 5 just before a comma: valid CSV, one record of
    # the right width over lines 3-5. Its row is rejected, the reason naming those lines (the
    # rows it took in have no outcome of their own); the rest goes on.
    rows = [make_row(i) for i in range(5)]
    stack.vital.add_known_users(*(r["user_id"] for r in rows))

    def line(r: dict[str, Any], token: str) -> str:
        return f"{r['user_id']},{token},{r['refresh_token']},p,1893456000,oura\n"

    body = "user_id,access_token,refresh_token,provider_id,expires_at,provider\n"
    body += line(rows[0], rows[0]["access_token"])
    body += f'{rows[1]["user_id"]},"{rows[1]["access_token"]},x,p,1,oura\n'  # opened
    body += line(rows[2], rows[2]["access_token"])  # taken in
    body += f'{rows[3]["user_id"]},{rows[3]["access_token"]}",{rows[3]["refresh_token"]},p,1,oura\n'
    body += line(rows[4], rows[4]["access_token"])
    stack.put("incoming/runaway.csv", body.encode())

    stack.import_keys("incoming/runaway.csv")

    manifest = stack.manifest("results/runaway.csv/")
    outcomes = {o["line"]: o for o in stack.outcomes("results/runaway.csv/")}
    assert manifest["status"] == "partial"
    assert sorted(outcomes) == ["2", "3", "6"]
    assert outcomes["3"]["detail"] == (
        "access_token: holds a line break (this record runs over lines 3-5: check its quoting)"
    )
    assert outcomes["6"]["outcome"] == "imported"


def test_rejected_rows_show_the_metadata_provider_only_as_a_known_name(stack: Stack) -> None:
    rows = [make_row(n, provider=None) for n in range(3)]
    rows[1]["user_id"] = "not-a-uuid"
    stack.vital.add_known_users(*(r["user_id"] for r in rows))
    stack.put("incoming/meta.jsonl", encode_rows(rows, "jsonl"), {"provider": "Oura"})
    stack.put("incoming/junk.jsonl", encode_rows(rows, "jsonl"), {"provider": "No Such=1"})

    stack.import_keys("incoming/meta.jsonl", "incoming/junk.jsonl")

    meta = stack.manifest("results/meta.jsonl/")
    assert list(meta["providers"]) == ["oura"]  # one key, however the rows spell it
    assert {o["provider"] for o in stack.outcomes("results/meta.jsonl/")} == {"oura"}
    junk = stack.manifest("results/junk.jsonl/")
    assert junk["providers"] == {}
    assert {o["provider"] for o in stack.outcomes("results/junk.jsonl/")} == {""}
    assert "No Such" not in stack.everything_written()


def test_a_csv_quote_that_is_never_closed_stops_the_file_at_its_line(stack: Stack) -> None:
    # Read on, the rows after it would become one row's oauth_scopes: their tokens would go to
    # Vital as another user's scopes, and the file "succeed" with one row.
    rows = [make_row(n) for n in range(4)]
    stack.vital.add_known_users(*(r["user_id"] for r in rows))
    text = encode_rows(rows, "csv").decode()
    lines = text.splitlines(keepends=True)
    lines[2] = lines[2].rstrip("\r\n") + ',"daily heartrate\r\n'  # one column too many, open
    stack.put("incoming/open-quote.csv", "".join(lines).encode())

    stack.import_keys("incoming/open-quote.csv")

    manifest = stack.manifest("results/open-quote.csv/")
    assert manifest["status"] == "failed"
    assert manifest["error"]["type"] == "MalformedFile"
    assert manifest["error"]["message"].startswith("CSV record starting at line 3 runs to line 5")
    sent = json.dumps([r.body for r in stack.vital.bulk_import_requests()])
    for row in rows[2:]:
        assert row["access_token"] not in sent
    assert manifest["counts"]["rows"] == 1  # line 2; the rest is after the broken quote


def test_rows_without_any_provider_are_rejected_with_a_hint(stack: Stack) -> None:
    stack.put("incoming/anon.jsonl", encode_rows([make_row(1, provider=None)], "jsonl"))

    stack.import_keys("incoming/anon.jsonl")

    (outcome,) = stack.outcomes("results/anon.jsonl/")
    assert outcome["outcome"] == "rejected"
    assert "incoming/<provider>/" in outcome["detail"]
    assert stack.vital.bulk_import_requests() == []


def test_a_duplicate_is_the_same_user_under_the_same_provider_however_spelled(
    stack: Stack,
) -> None:
    rows = [
        make_row(1, provider="oura"),
        make_row(1, provider="fitbit"),  # the same user under another provider: not a duplicate
        {**make_row(1, provider="oura"), "user_id": user_id(1).upper()},  # spelled otherwise
        make_row(2, provider="oura"),
        make_row(2, provider="oura"),
    ]
    stack.vital.add_known_users(user_id(1), user_id(2))
    stack.put("incoming/dups.jsonl", encode_rows(rows, "jsonl"))

    stack.import_keys("incoming/dups.jsonl")

    by_line = {int(o["line"]): o for o in stack.outcomes("results/dups.jsonl/")}
    assert [by_line[n]["outcome"] for n in range(1, 6)] == [
        "imported",
        "imported",
        "duplicate",
        "imported",
        "duplicate",
    ]
    assert by_line[3]["detail"].startswith("duplicate of line 1 ")
    assert by_line[5]["detail"].startswith("duplicate of line 4 ")
    assert sorted(stack.vital.posted_connections()) == sorted(
        [("oura", user_id(1)), ("fitbit", user_id(1)), ("oura", user_id(2))]
    )


@pytest.mark.parametrize("spelling", ["canonical", "lenient"])
def test_a_row_too_large_for_any_request_is_rejected_and_the_rest_goes_on(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, spelling: str
) -> None:
    # Given MAX_BODY_BYTES at its minimum and one row whose token alone is over it, in the
    # canonical spelling (the JSONL fast path) or a lenient one (the full model)
    monkeypatch.setenv("MAX_BODY_BYTES", "10000")
    rows = [make_row(n, provider="oura") for n in range(1, 5)]
    rows[1]["access_token"] = "x" * 10_001
    if spelling == "lenient":
        rows[1]["provider"] = "Oura"
    rows.append(make_row(2, provider="oura"))  # the same connection, corrected, further down
    stack.vital.add_known_users(*(user_id(n) for n in range(1, 5)))
    stack.put("incoming/big.jsonl", encode_rows(rows, "jsonl"))

    stack.import_keys("incoming/big.jsonl")

    # Then that row alone is rejected, naming the setting, and the others are imported: the
    # rejected row does not make its corrected copy a duplicate
    by_line = {int(o["line"]): o for o in stack.outcomes("results/big.jsonl/")}
    assert by_line[2]["outcome"] == "rejected"
    assert "MAX_BODY_BYTES=10000" in by_line[2]["detail"]
    assert [by_line[n]["outcome"] for n in (1, 3, 4, 5)] == ["imported"] * 4
    posted = stack.vital.posted_connections()
    assert sorted(posted) == sorted(("oura", user_id(n)) for n in (1, 2, 3, 4))


def test_outcomes_csv_header_and_manifest_shape(stack: Stack) -> None:
    stack.vital.add_known_users(user_id(1))
    stack.put("incoming/one.csv", encode_rows([make_row(1)], "csv"))

    stack.import_keys("incoming/one.csv")

    header = stack.get("results/one.csv/outcomes.csv").decode().splitlines()[0]
    assert header == ",".join(OUTCOME_COLUMNS)
    manifest = stack.manifest("results/one.csv/")
    assert manifest["schema_version"] == 1
    assert set(manifest) >= {
        "schema_version",
        "source",
        "status",
        "started_at",
        "finished_at",
        "counts",
        "providers",
        "chunks",
        "error",
    }
    (chunk,) = manifest["chunks"]
    assert chunk["provider"] == "oura"
    assert (chunk["first_line"], chunk["last_line"], chunk["size"]) == (2, 2, 1)
    assert chunk["http_status"] == 200
    assert chunk["attempts"] == 1


def test_enqueued_rows_and_bulk_ops_reconciliation(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WAIT_FOR_COMPLETION", "false")
    rows = [make_row(n, provider="fitbit") for n in range(12)]
    stack.put("incoming/async.jsonl", encode_rows(rows, "jsonl"))

    stack.import_keys("incoming/async.jsonl")

    manifest = stack.manifest("results/async.jsonl/")
    assert manifest["status"] == "succeeded"
    assert manifest["counts"]["enqueued"] == 12
    assert {c["http_status"] for c in manifest["chunks"]} == {202}
    assert len(manifest["bulk_ops"]) == 2
    assert {op["status"] for op in manifest["bulk_ops"]} == {"success"}
    assert {op["provider"] for op in manifest["bulk_ops"]} == {"fitbit"}


def test_waiting_on_bulk_ops_keeps_the_time_a_request_needs_even_with_no_margin(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    # SAFETY_MARGIN_SECONDS=0 keeps 2 s back all the same (what a request needs to start): a
    # wait on bulk ops that used the raw setting would sleep past it and write the results after
    # the invocation's deadline.
    monkeypatch.setenv("WAIT_FOR_COMPLETION", "false")
    monkeypatch.setenv("SAFETY_MARGIN_SECONDS", "0")
    stack.vital.op_complete_after_seconds = 100  # the bulk op stays in progress
    stack.put("incoming/slow-op.jsonl", encode_rows([make_row(n) for n in range(5)], "jsonl"))
    written: list[float] = []

    class Timed(ResultWriter):
        def write_manifest(self, *args: Any, **kwargs: Any) -> None:
            written.append(time.monotonic())
            super().write_manifest(*args, **kwargs)

    started = time.monotonic()
    stack.import_keys("incoming/slow-op.jsonl", timeout_seconds=5.0, results=Timed(aws.s3_client()))

    assert written[0] - started <= 5.0 - 1.0  # about 2 s of the 5 still left
    manifest = stack.manifest("results/slow-op.jsonl/")
    assert [op["status"] for op in manifest["bulk_ops"]] == ["in_progress"]


def test_enqueued_rows_whose_bulk_op_failed_make_the_file_partial(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WAIT_FOR_COMPLETION", "false")
    stack.vital.op_final_status = "failure"
    stack.put("incoming/op-failed.jsonl", encode_rows([make_row(1, provider="oura")], "jsonl"))

    stack.import_keys("incoming/op-failed.jsonl")

    manifest = stack.manifest("results/op-failed.jsonl/")
    assert manifest["counts"]["enqueued"] == 1
    assert [op["status"] for op in manifest["bulk_ops"]] == ["failure"]
    assert manifest["status"] == "partial"


@pytest.mark.parametrize(
    ("key", "body", "error_type", "phrase"),
    [
        ("incoming/notes.txt", b"hello", "UnsupportedFile", "unsupported file type"),
        ("incoming/bad.jsonl.gz", b"\x1f\x8b\x08\x00garbage-not-gzip", "MalformedFile", "gzip"),
        ("incoming/bad.csv.zst", b"\x28\xb5\x2f\xfdnot really zstd", "MalformedFile", "zstd"),
        (
            "incoming/latin1.csv",
            "user_id,access_token,refresh_token,provider_id,expires_at\nü,a,b,c,1\n".encode(
                "latin-1"
            ),
            "MalformedFile",
            "UTF-8",
        ),
        ("incoming/obj.json", b'{"user_id": "x"}', "MalformedFile", "JSON array"),
        ("incoming/nocols.csv", b"name,email\nx,y\n", "MalformedFile", "missing column"),
        ("incoming/hidden-gzip.jsonl", b"\x1f\x8b\x08\x00\x00\x00", "MalformedFile", ".gz"),
        # An upload cut off before its first byte: not a file that succeeded with no rows.
        ("incoming/empty.jsonl.gz", b"", "MalformedFile", "empty, not gzip data"),
        ("incoming/empty.csv.zst", b"", "MalformedFile", "empty, not zstd data"),
        ("incoming/utf16.jsonl", '{"a": 1}\n'.encode("utf-16"), "MalformedFile", "UTF-16"),
    ],
)
def test_unprocessable_files_end_failed_and_handler_returns(
    stack: Stack, key: str, body: bytes, error_type: str, phrase: str
) -> None:
    stack.put(key, body)

    result = stack.import_keys(key)

    assert result["files"][0]["status"] == "failed"
    manifest = stack.manifest("results/" + key.removeprefix("incoming/") + "/")
    assert manifest["status"] == "failed"
    assert manifest["error"]["type"] == error_type
    assert phrase in manifest["error"]["message"]
    assert_invariant(manifest, stack.outcomes("results/" + key.removeprefix("incoming/") + "/"))


@pytest.mark.parametrize(
    ("key", "body"),
    [
        ("incoming/oura/none.csv", encode_rows([], "csv")),  # a header alone
        ("incoming/oura/none.jsonl.gz", compress(b"\n \n\n", "gz")),  # blank lines
    ],
)
def test_a_file_with_no_rows_ends_failed_with_a_reason(stack: Stack, key: str, body: bytes) -> None:
    stack.put(key, body)

    result = stack.import_keys(key)

    assert result["files"][0]["status"] == "failed"
    prefix = "results/" + key.removeprefix("incoming/") + "/"
    manifest = stack.manifest(prefix)
    assert manifest["status"] == "failed"
    assert manifest["error"]["type"] == "MalformedFile"
    assert manifest["error"]["message"].startswith("the file holds no rows")
    assert "check the export" in manifest["error"]["message"]
    assert manifest["counts"]["rows"] == 0
    assert stack.outcomes(prefix) == []
    assert_invariant(manifest, [])
    assert stack.vital.bulk_import_requests() == []


def test_a_file_of_garbage_stops_at_the_rejection_threshold_and_sends_nothing(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given 5,000 lines that are not JSON, gzipped (more than one 64 KiB block once unpacked),
    # and a threshold of 100 rows all rejected
    monkeypatch.setenv("REJECTED_STOP_AFTER_ROWS", "100")
    key = "incoming/oura/garbage.jsonl.gz"
    stack.put(key, compress(b"".join(b"garbage line %05d\n" % n for n in range(5000)), "gz"))

    # When the handler runs
    result = stack.import_keys(key)

    # Then the file stopped after its first block: failed, saying why, every row read so far
    # rejected in outcomes.csv, the rest unread, nothing sent
    assert result["files"][0]["status"] == "failed"
    prefix = "results/oura/garbage.jsonl.gz/"
    manifest = stack.manifest(prefix)
    assert manifest["status"] == "failed"
    assert manifest["error"]["type"] == "ImportAborted"
    rows = manifest["counts"]["rows"]
    assert 100 <= rows < 5000
    assert manifest["error"]["message"] == (
        f"{rows:,} of the first {rows:,} rows were rejected (REJECTED_STOP_AFTER_ROWS=100): "
        "this does not look like a connection file; see outcomes.csv for the reasons"
    )
    outcomes = stack.outcomes(prefix)
    assert [int(o["line"]) for o in outcomes] == list(range(1, rows + 1))
    assert {o["outcome"] for o in outcomes} == {"rejected"}
    assert_invariant(manifest, outcomes)
    assert stack.vital.bulk_import_requests() == []


def test_garmin_rows_take_the_oauth1_expiry_and_another_value_is_rejected(stack: Stack) -> None:
    # Given a Garmin JSONL file (provider from the key): rows with the constant, rows with no
    # expiry, and one canonical row with another expiry (which the hot path's block validator
    # alone would take)
    rows = [make_row(n, provider=None, expires_at=OAUTH1_EXPIRES_AT) for n in range(6)]
    for n in (1, 4):
        del rows[n]["expires_at"]
    rows[3]["expires_at"] = 1_893_456_000
    stack.vital.add_known_users(*(r["user_id"] for r in rows))
    stack.put("incoming/garmin/connections.jsonl", encode_rows(rows, "jsonl"))

    result = stack.import_keys("incoming/garmin/connections.jsonl")

    # Then that row is rejected on its line, with a reason naming the field and the constant
    assert result["files"][0]["status"] == "partial"
    manifest = stack.manifest("results/garmin/connections.jsonl/")
    outcomes = stack.outcomes("results/garmin/connections.jsonl/")
    assert_invariant(manifest, outcomes)
    assert manifest["counts"]["imported"] == 5
    (rejected,) = [o for o in outcomes if o["outcome"] == "rejected"]
    assert (rejected["line"], rejected["provider"], rejected["user_id"]) == (
        "4",
        "garmin",
        user_id(3),
    )
    assert rejected["detail"] == (
        "expires_at: must be 2147483647 for OAuth 1.0 providers (garmin), "
        "or left empty to have it filled in"
    )
    # And every connection Vital received carries the constant
    received = [c for r in stack.vital.bulk_import_requests() for c in r.connections]
    assert sorted(c["user_id"] for c in received) == sorted(user_id(n) for n in (0, 1, 2, 4, 5))
    assert {c["expires_at"] for c in received} == {OAUTH1_EXPIRES_AT}
    assert {r.body["provider"] for r in stack.vital.bulk_import_requests()} == {"garmin"}


def test_missing_object_fails_cleanly(stack: Stack) -> None:
    result = stack.import_keys("incoming/gone.jsonl")

    assert result["files"][0]["status"] == "failed"
    manifest = stack.manifest("results/gone.jsonl/")
    assert manifest["error"]["type"] == "SourceNotFound"
    assert manifest["counts"]["rows"] == 0


def test_keys_outside_incoming_and_test_events_are_ignored(stack: Stack) -> None:
    stack.put("results/x.jsonl/manifest.json", b"{}")

    assert stack.import_keys("results/x.jsonl/manifest.json") == {"files": []}
    # What the S3 console's "Create folder" makes under incoming/ is no file to import.
    stack.put("incoming/oura/", b"")
    assert stack.import_keys("incoming/oura/") == {"files": []}
    assert stack.invoke({"Service": "Amazon S3", "Event": "s3:TestEvent"}) == {"files": []}


_OBJECT = {"key": "incoming/o.jsonl"}


@pytest.mark.parametrize(
    "s3",
    [
        {"bucket": {"name": 5}, "object": _OBJECT},
        {"bucket": {}, "object": _OBJECT},
        {"bucket": None, "object": _OBJECT},
        {"bucket": {"name": "b"}, "object": {**_OBJECT, "eTag": 5}},
        {"bucket": {"name": "b"}, "object": {"key": 5}},
        {"bucket": {"name": "b"}, "object": None},
        {"bucket": {"name": "b"}},
        None,
    ],
)
def test_a_malformed_s3_record_is_logged_and_the_others_are_imported(
    stack: Stack, s3: dict[str, Any] | None
) -> None:
    """Not what S3 sends (a record replayed by hand, say): raising would have Lambda retry the
    whole event, the good records with it, into the ImportDLQ."""
    rows = [make_row(n) for n in range(3)]
    stack.vital.add_known_users(*(r["user_id"] for r in rows))
    stack.put("incoming/good.jsonl", encode_rows(rows, "jsonl"))
    event = s3_event(stack.bucket, ["incoming/good.jsonl"])
    event["Records"].insert(0, {"eventSource": "aws:s3", "s3": s3})

    (summary,) = stack.invoke(event)["files"]

    assert summary["status"] == "succeeded"
    assert any("ignoring a malformed S3 record" in line for line in stack.log_lines)


def _import_dlq_record(s3_event_: dict[str, Any]) -> dict[str, Any]:
    """What Lambda's on-failure destination puts on the ImportDLQ (the AWS docs' shape)."""
    return {
        "version": "1.0",
        "timestamp": "2026-11-27T08:00:00.000Z",
        "requestContext": {
            "requestId": "e4b46cbf-b738-xmpl-8880-a18cdf61200e",
            "functionArn": "arn:aws:lambda:us-east-1:123456789012:function:import:$LATEST",
            "condition": "RetriesExhausted",
            "approximateInvokeCount": 3,
        },
        "requestPayload": s3_event_,
        "responseContext": {
            "statusCode": 200,
            "executedVersion": "$LATEST",
            "functionError": "Unhandled",
        },
        "responsePayload": {"errorMessage": "Task timed out after 900.00 seconds"},
    }


def _queued(event: dict[str, Any]) -> dict[str, Any]:
    return {"Records": [{"eventSource": "aws:sqs", "body": json.dumps(event)}]}


@pytest.mark.parametrize(
    "how",
    [
        "invoked with the record",
        "moved to the continuation queue",
        "replayed, failed again, then moved to the queue",
        "holding a continuation event, moved to the queue",
    ],
)
def test_an_import_dlq_record_replays_the_event_it_holds(stack: Stack, how: str) -> None:
    rows = [make_row(n) for n in range(4)]
    stack.vital.add_known_users(*(r["user_id"] for r in rows))
    stack.put("incoming/parked.jsonl", encode_rows(rows, "jsonl"))
    s3 = s3_event(stack.bucket, ["incoming/parked.jsonl"])
    event = {
        "invoked with the record": lambda: _import_dlq_record(s3),
        "moved to the continuation queue": lambda: _queued(_import_dlq_record(s3)),
        "replayed, failed again, then moved to the queue": lambda: _queued(
            _import_dlq_record(_import_dlq_record(s3))
        ),
        # The event aws.hand_off's error tells an operator to invoke, if that invocation failed.
        "holding a continuation event, moved to the queue": lambda: _queued(
            _import_dlq_record(
                {
                    "Records": [
                        {
                            "eventSource": "aws:sqs",
                            "body": ContinuationMessage(
                                ref=ObjectRef(bucket=stack.bucket, key="incoming/parked.jsonl")
                            ).model_dump_json(),
                        }
                    ]
                }
            )
        ),
    }[how]()

    (summary,) = stack.invoke(event)["files"]

    assert summary["status"] == "succeeded"
    assert stack.manifest("results/parked.jsonl/")["counts"]["imported"] == 4


def test_a_queue_message_of_another_shape_is_ignored_with_an_error(stack: Stack) -> None:
    event = {"Records": [{"eventSource": "aws:sqs", "body": json.dumps({"requestPayload": {}})}]}

    assert stack.invoke(event) == {"files": []}
    assert any("neither a continuation nor an ImportDLQ record" in line for line in stack.log_lines)


def test_no_token_value_in_any_output(stack: Stack) -> None:
    # Valid rows, invalid rows whose tokens sit next to the broken field, and failures.
    rows = [make_row(n) for n in range(20)]
    rows += [make_row(n, user_id="bad") for n in range(20, 25)]
    rows += [make_row(n, expires_at=[1]) for n in range(25, 28)]
    rows += [make_row(n, access_token=123456) for n in range(28, 30)]
    stack.vital.add_known_users(*(r["user_id"] for r in rows[:10]))
    stack.put("incoming/secrets.jsonl", encode_rows(rows, "jsonl"))
    stack.put("incoming/secrets.csv", encode_rows(rows, "csv"))

    stack.import_keys("incoming/secrets.jsonl", "incoming/secrets.csv")

    written = stack.everything_written()
    assert "outcomes" in written  # the capture really saw the outputs
    assert len(stack.log_lines) > 3
    assert stack.vital.api_key not in written
    for n in range(30):
        assert access_token(n) not in written
        assert refresh_token(n) not in written


def test_finished_import_is_announced_on_sns_without_tokens(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    sns, sqs = boto3.client("sns"), boto3.client("sqs")
    topic = sns.create_topic(Name=f"done-{stack.bucket}")["TopicArn"]
    queue = sqs.create_queue(QueueName=f"done-{stack.bucket}")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn)
    monkeypatch.setenv("NOTIFY_TOPIC_ARN", topic)
    rows = [make_row(n) for n in range(3)]
    stack.vital.add_known_users(*(r["user_id"] for r in rows))
    stack.put("incoming/announce.jsonl", encode_rows(rows, "jsonl"))

    stack.import_keys("incoming/announce.jsonl")

    (message,) = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10)["Messages"]
    envelope = json.loads(message["Body"])
    summary = json.loads(envelope["Message"])
    assert summary["status"] == "succeeded"
    assert summary["counts"]["imported"] == 3
    assert summary["manifest"] == "results/announce.jsonl/manifest.json"
    assert summary["bucket"] == stack.bucket
    for n in range(3):
        assert access_token(n) not in message["Body"]


class _InterpreterSeen(httpx.HTTPTransport):
    """The real transport to the stand-in; notes the interpreter's tuning at each request."""

    def __init__(self, seen: list[tuple[float, int]]) -> None:
        super().__init__()
        self.seen = seen

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.seen.append((sys.getswitchinterval(), gc.get_threshold()[0]))
        return super().handle_request(request)


def test_the_interpreter_is_tuned_while_a_file_is_imported_and_restored_after(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[float, int]] = []
    stack.vital.add_known_users(*(user_id(i) for i in range(1, 31)))
    stack.put("incoming/many.jsonl", encode_rows([make_row(i) for i in range(1, 31)], "jsonl"))
    before = (sys.getswitchinterval(), gc.get_threshold())

    stack.import_keys("incoming/many.jsonl", transport=_InterpreterSeen(seen))

    assert stack.manifest("results/many.jsonl/")["counts"]["imported"] == 30
    assert len(seen) == 3  # CHUNK_SIZE=10
    # Posting threads get the GIL within 1 ms; the young GC generation collects less often.
    assert set(seen) == {(POSTING_SWITCH_INTERVAL_S, GC_YOUNG_THRESHOLD)}
    assert before[0] != POSTING_SWITCH_INTERVAL_S
    assert before[1][0] != GC_YOUNG_THRESHOLD
    assert (sys.getswitchinterval(), gc.get_threshold()) == before


class _HoldFirstRequest(httpx.HTTPTransport):
    """The real transport to the stand-in; the first request waits (5 s at most) for ``until``."""

    def __init__(self, until: threading.Event) -> None:
        super().__init__()
        self.until = until
        self.waited: bool | None = None

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if self.waited is None:
            self.waited = self.until.wait(timeout=5.0)
        return super().handle_request(request)


def test_the_file_is_read_on_while_the_first_request_is_out(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The first request is held until the whole file has been read and chunked. Reading that
    # stopped until the first answer came back would never get there (the wait times out).
    read_to_the_end = threading.Event()
    serialised: list[int] = []

    def counted(row: Any) -> bytes:
        serialised.append(1)
        if len(serialised) == 60:  # the last row of the file has been read
            read_to_the_end.set()
        return to_json(row)

    transport = _HoldFirstRequest(read_to_the_end)
    # Until the first answer tells Vital's pace, as many chunks as threads are handed over
    monkeypatch.setenv("MAX_CONCURRENCY", "6")
    rows = [make_row(i) for i in range(1, 61)]
    stack.vital.add_known_users(*(r["user_id"] for r in rows))
    stack.put("incoming/six.jsonl", encode_rows(rows, "jsonl"))

    stack.import_keys("incoming/six.jsonl", transport=transport, serialise=counted)

    assert transport.waited is True
    manifest = stack.manifest("results/six.jsonl/")
    assert manifest["counts"]["imported"] == 60
    assert len(stack.vital.bulk_import_requests()) == 6  # CHUNK_SIZE=10


def test_no_request_body_is_left_for_the_cyclic_gc(stack: Stack) -> None:
    # httpx 0.28 ties each response to its stream in a reference cycle (encode/httpx#3733):
    # left alone, every request body (up to MAX_BODY_BYTES) lives on until the cyclic GC runs.
    stack.vital.add_known_users(*(user_id(i) for i in range(1, 31)))
    stack.put("incoming/three.jsonl", encode_rows([make_row(i) for i in range(1, 31)], "jsonl"))
    gc.collect()
    gc.disable()
    try:
        stack.import_keys("incoming/three.jsonl")
        alive = [o for o in gc.get_objects() if isinstance(o, httpx.Response | httpx.Request)]
    finally:
        gc.enable()

    assert stack.manifest("results/three.jsonl/")["counts"]["imported"] == 30
    assert alive == []


def test_the_object_is_opened_while_the_checkpoint_is_read(stack: Stack) -> None:
    # The checkpoint's GET is held until the object's HEAD has been asked for (5 s at most):
    # opening the object only after the checkpoint (and the manifest) came back never gets there.
    s3 = aws.s3_client()  # the client the handler will use
    headed = threading.Event()
    waited: list[bool] = []

    def on_head(**_: Any) -> None:
        headed.set()

    def on_get(params: dict[str, Any], **_: Any) -> None:
        if params["Key"].endswith("checkpoint.json"):
            waited.append(headed.wait(timeout=5.0))

    s3.meta.events.register("provide-client-params.s3.HeadObject", on_head)
    s3.meta.events.register("provide-client-params.s3.GetObject", on_get)
    try:
        stack.vital.add_known_users(user_id(1))
        stack.put("incoming/one.jsonl", encode_rows([make_row(1)], "jsonl"))
        stack.import_keys("incoming/one.jsonl")
    finally:
        s3.meta.events.unregister("provide-client-params.s3.HeadObject", on_head)
        s3.meta.events.unregister("provide-client-params.s3.GetObject", on_get)

    assert waited == [True]
    assert stack.manifest("results/one.jsonl/")["counts"]["imported"] == 1


def test_the_verification_pass_looks_up_every_imported_and_enqueued_user(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given rows Vital imports and rows of users it does not know (failed: not looked up)
    rows = [make_row(n) for n in range(12)]
    stack.vital.add_known_users(*(r["user_id"] for r in rows[:9]))
    stack.put("incoming/verified.jsonl", encode_rows(rows, "jsonl"))
    monkeypatch.setenv("VERIFY_AFTER_IMPORT", "true")

    # When they are imported
    stack.import_keys("incoming/verified.jsonl")

    # Then verification.csv holds one line per imported row, connected, and the manifest
    # counts them
    manifest = stack.manifest("results/verified.jsonl/")
    assert manifest["counts"]["imported"] == 9
    assert manifest["verification"] == {
        "key": "results/verified.jsonl/verification.csv",
        "connected": 9,
        "error": 0,
        "missing": 0,
        "unchecked": 0,
    }
    checked = parse_csv(stack.get("results/verified.jsonl/verification.csv"))
    assert list(checked[0]) == ["line", "user_id", "provider", "status", "detail"]
    assert sorted((r["user_id"], r["status"]) for r in checked) == sorted(
        (r["user_id"], "connected") for r in rows[:9]
    )
    lookups = [r for r in stack.vital.requests if r.path.startswith("/v2/user/providers/")]
    assert len(lookups) == 9  # one GET per imported user, none for the failed ones


def parse_csv(data: bytes) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(data.decode())))
