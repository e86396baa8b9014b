"""Reading a file through the real run (``Run`` with ``Intake``), with fakes at the wiring seam:
rejected rows, duplicates, rows too large for a request, a resumed run's rows already reported,
the deadline check between blocks, files with no rows, and OAuth 1.0 rows on the hot path."""

from __future__ import annotations

import gzip
import itertools
import json
from typing import Any

import pytest
import zstandard

from bulk_import.config import Settings
from bulk_import.model import OAUTH1_EXPIRES_AT, Checkpoint, Counts, ObjectRef, SourceRef
from bulk_import.run import replay
from bulk_import.run.context import FileResult
from bulk_import.run.importer import Run
from bulk_import.run.intake import NO_ROWS
from bulk_import.wiring import Tunables, build
from local.context import LocalLambdaContext
from tests.fakes import FakePost, FakeS3, StoreState, offline
from tests.helpers import make_row, parse_outcomes, user_id

BUCKET = "bucket-a"
KEY = "incoming/oura/a.jsonl"
REF = ObjectRef(bucket=BUCKET, key=KEY, sequencer="0A")
OUTCOMES = "results/oura/a.jsonl/outcomes.csv"
TOO_LARGE = "row is larger than one request may be (MAX_BODY_BYTES=10000)"


def settings(**env: str) -> Settings:
    return Settings.from_env(
        {"VITAL_API_KEY_SECRET": "vital-key", "CHUNK_SIZE": "10", "MAX_CONCURRENCY": "1", **env}
    )


def put_lines(s3: FakeS3, *lines: dict[str, Any] | str) -> None:
    """A JSONL file, one line per item (a dict as JSON, a string as it is)."""
    text = "".join((json.dumps(x) if isinstance(x, dict) else x) + "\n" for x in lines)
    s3.put(KEY, text.encode())


def run(
    s3: FakeS3, state: StoreState, config: Settings, ref: ObjectRef = REF, **overrides: Any
) -> FileResult:
    wiring = build(config, LocalLambdaContext(900), **offline(s3, state, **overrides))
    return Run(ref, wiring).execute()


def outcomes(s3: FakeS3) -> dict[int, dict[str, str]]:
    rows = parse_outcomes(s3.objects[OUTCOMES])
    by_line = {int(o["line"]): o for o in rows}
    assert len(by_line) == len(rows), "a line has two outcomes"
    return by_line


def checkpoint(config: Settings, **fields: Any) -> Checkpoint:
    base: dict[str, Any] = {
        "source": SourceRef(bucket=BUCKET, key=KEY, sequencer="0A"),
        "fingerprint": replay.fingerprint(config),
        "started_at": "2026-01-01T00:00:00.000Z",
        "next_segment": 0,
    }
    return Checkpoint.model_validate({**base, **fields})


# --- rejected rows and duplicates -----------------------------------------------------------------


def test_given_rows_that_are_not_valid_then_each_is_rejected_on_its_line_with_a_reason() -> None:
    # Given valid rows around a bad user id, a missing token, a line that is not JSON and a
    # blank line (no row at all)
    s3, state = FakeS3(), StoreState()
    no_token = make_row(2)
    del no_token["access_token"]
    put_lines(
        s3,
        make_row(0),
        make_row(1, user_id="not-a-uuid"),
        no_token,
        "",
        "{not json",
        make_row(3),
    )
    post = FakePost()

    # When the file is imported
    result = run(s3, state, settings(), post_chunk=post)

    # Then only the valid rows are sent, and each rejected one is reported on its own line
    assert post.sent_lines == [1, 6]
    by_line = outcomes(s3)
    assert sorted(by_line) == [1, 2, 3, 5, 6]  # line 4 is blank: not a row
    assert [by_line[n]["outcome"] for n in (2, 3, 5)] == ["rejected"] * 3
    assert by_line[2]["detail"].startswith("user_id: must be a Vital user id")
    assert by_line[3]["detail"] == "access_token: missing"
    assert by_line[3]["user_id"] == user_id(2)  # a valid user id is shown
    assert by_line[5]["detail"].startswith("invalid JSON")
    # A rejected row's tokens are never echoed
    assert "tok-" not in s3.objects[OUTCOMES].decode()
    assert result.manifest is not None
    assert result.manifest.status == "partial"
    assert result.manifest.counts == Counts(rows=5, rejected=3, imported=2)


def test_given_a_repeated_user_then_the_later_row_is_a_duplicate_naming_the_first() -> None:
    s3, state = FakeS3(), StoreState()
    put_lines(
        s3,
        make_row(0),
        make_row(1),
        make_row(0, access_token="tok-other"),  # same provider and user: a duplicate
        make_row(0, provider="fitbit"),  # same user, another provider: not a duplicate
        make_row(1),
    )
    post = FakePost()

    result = run(s3, state, settings(), post_chunk=post)

    assert sorted(post.sent_lines) == [1, 2, 4]
    by_line = outcomes(s3)
    assert by_line[3] == {
        "line": "3",
        "user_id": user_id(0),
        "provider": "oura",
        "outcome": "duplicate",
        "detail": "duplicate of line 1 (same provider and user_id); not sent",
    }
    assert by_line[5]["detail"] == "duplicate of line 2 (same provider and user_id); not sent"
    assert by_line[4]["outcome"] == "imported"
    assert result.manifest is not None
    assert result.manifest.status == "succeeded"  # a duplicate is not a failure
    assert result.manifest.counts == Counts(rows=5, duplicates=2, imported=3)


def test_given_a_row_too_large_then_it_is_rejected_unclaimed_and_a_corrected_copy_is_sent() -> None:
    # Given a row whose body alone is over MAX_BODY_BYTES, then a corrected copy of it, then
    # the same user twice more (once too large again)
    s3, state = FakeS3(), StoreState()
    huge = "x" * 12_000
    put_lines(
        s3,
        make_row(0, access_token=huge),
        make_row(0),
        make_row(0),
        make_row(0, access_token=huge),
    )
    post = FakePost()

    result = run(s3, state, settings(MAX_BODY_BYTES="10000"), post_chunk=post)

    # Then the large row is rejected without claiming its user: the corrected copy is sent
    assert post.sent_lines == [2]
    by_line = outcomes(s3)
    assert (by_line[1]["outcome"], by_line[1]["detail"]) == ("rejected", TOO_LARGE)
    assert by_line[1]["user_id"] == by_line[2]["user_id"] != ""  # the row's id is shown
    assert by_line[2]["outcome"] == "imported"
    # The copies after it are its duplicates, however large
    first = "duplicate of line 2 (same provider and user_id); not sent"
    assert [(by_line[n]["outcome"], by_line[n]["detail"]) for n in (3, 4)] == [
        ("duplicate", first),
        ("duplicate", first),
    ]
    assert huge not in s3.objects[OUTCOMES].decode()
    assert result.manifest is not None
    assert result.manifest.counts == Counts(rows=4, rejected=1, duplicates=2, imported=1)


# --- a resumed run --------------------------------------------------------------------------------


def test_given_a_checkpoint_when_read_again_then_rows_up_to_its_lines_done_add_nothing() -> None:
    # Given a checkpoint up to line 4: lines 1 and 4 rejected and line 3 a duplicate, stored;
    # the chunk holding line 2 not leased yet (the key could not be read, say)
    s3 = FakeS3()
    put_lines(
        s3,
        make_row(0, user_id="bad-1"),
        make_row(0),
        make_row(0),
        make_row(0, user_id="bad-4"),
        make_row(0, user_id="bad-5"),
        make_row(0),
        make_row(1),
    )
    config = settings()
    stored = Counts(rows=3, rejected=2, duplicates=1)
    cp = checkpoint(config, lines_done=4, counts=stored, providers={"oura": stored})
    state = StoreState(checkpoint=cp)
    post = FakePost()

    # When the run resumes and reads the file from its start
    result = run(s3, state, config, post_chunk=post)

    # Then only the lines past the checkpoint get outcomes (the earlier ones are in its parts);
    # the duplicate after it still names the first line
    assert post.sent_lines == [2, 7]
    by_line = outcomes(s3)
    assert sorted(by_line) == [2, 5, 6, 7]
    assert by_line[5]["outcome"] == "rejected"
    assert by_line[6]["detail"] == "duplicate of line 2 (same provider and user_id); not sent"
    assert result.manifest is not None
    assert result.manifest.error is None  # every row read has exactly one outcome
    assert result.manifest.counts == Counts(rows=7, rejected=3, duplicates=2, imported=2)


# --- the deadline ---------------------------------------------------------------------------------


def test_given_no_time_left_then_each_invocation_reads_one_block_past_its_checkpoint() -> None:
    # Given 40 rejected rows in blocks of a few lines, and less time left than the margin in
    # every invocation
    s3, state = FakeS3(), StoreState()
    put_lines(s3, *({"provider": "oura", "user_id": f"bad-{n:03d}"} for n in range(40)))
    config = settings()
    small_blocks = Tunables(jsonl_block_bytes=200)
    ref, lines_done, result = REF, [], None

    # When each invocation hands on to the next until the file is done
    for _ in range(40):
        result = run(s3, state, config, ref, tunables=small_blocks, remaining_seconds=lambda: 0.0)
        if result.continuation is None:
            break
        assert state.checkpoint is not None
        lines_done.append(state.checkpoint.lines_done)
        ref = result.continuation

    # Then it stopped at the deadline more than once, and every time past its checkpoint
    assert len(lines_done) > 2
    steps = [b - a for a, b in itertools.pairwise([0, *lines_done])]
    assert all(0 < step <= 5 for step in steps), steps  # a block holds 4 or 5 lines
    assert lines_done[-1] < 40
    # And the file ends with one outcome per row
    assert result is not None
    assert result.manifest is not None
    assert result.manifest.segments == len(lines_done) + 1
    assert result.manifest.counts == Counts(rows=40, rejected=40)
    assert sorted(outcomes(s3)) == list(range(1, 41))


# --- a file with no rows --------------------------------------------------------------------------

CSV_HEADER = b"provider,user_id,access_token,refresh_token,provider_id,expires_at,oauth_scopes\n"


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("a.jsonl", b""),
        ("a.jsonl", b"\n  \n\r\n\t\n"),  # nothing but blank lines
        ("a.ndjson", b"\xef\xbb\xbf\n"),  # a BOM, then a blank line
        ("a.csv", b""),
        ("a.csv", CSV_HEADER),  # a header alone
        ("a.csv", b"\xef\xbb\xbf" + CSV_HEADER + b"\r\n\r\n"),  # and blank lines after it
        ("a.json", b"[]"),
        ("a.json", b" [ \n ] \n"),
        ("a.jsonl.gz", gzip.compress(b"")),  # decompresses to nothing
        ("a.jsonl.gz", gzip.compress(b"\n\n")),
        ("a.csv.zst", zstandard.ZstdCompressor().compress(CSV_HEADER)),
        ("a.json.gz", gzip.compress(b"[]")),
    ],
)
def test_given_a_file_with_no_rows_then_it_fails_as_malformed_with_zero_rows(
    name: str, data: bytes
) -> None:
    # Given a file that holds no row at all, in any format
    s3, state = FakeS3(), StoreState()
    key = f"incoming/oura/{name}"
    s3.put(key, data)
    post = FakePost()

    # When it is imported
    result = run(s3, state, settings(), ObjectRef(bucket=BUCKET, key=key), post_chunk=post)

    # Then nothing is sent and the file fails with a reason a person can act on, not
    # "succeeded" with 0 rows
    assert post.sent == []
    manifest = result.manifest
    assert manifest is not None
    assert manifest.status == "failed"
    assert manifest.error is not None
    assert (manifest.error.type, manifest.error.message) == ("MalformedFile", NO_ROWS)
    assert "check the export" in manifest.error.message
    assert manifest.counts == Counts()
    assert parse_outcomes(s3.objects[f"results/oura/{name}/outcomes.csv"]) == []


def test_given_a_file_whose_only_rows_are_rejected_then_it_is_not_a_file_with_no_rows() -> None:
    s3, state = FakeS3(), StoreState()
    put_lines(s3, "", make_row(0, user_id="not-a-uuid"), "")

    result = run(s3, state, settings(), post_chunk=FakePost())

    assert result.manifest is not None
    assert (result.manifest.status, result.manifest.error) == ("partial", None)
    assert result.manifest.counts == Counts(rows=1, rejected=1)


# --- OAuth 1.0 rows on the JSONL hot path --------------------------------------------------------

GARMIN_KEY = "incoming/garmin/g.jsonl"
GARMIN_OUTCOMES = "results/garmin/g.jsonl/outcomes.csv"


def test_given_garmin_rows_then_only_the_oauth1_constant_or_none_is_taken() -> None:
    # Given a Garmin file (provider from the key): rows in canonical form with the constant,
    # another expiry (which the block validator alone would take), no expiry, and a row of
    # its own provider with another expiry; a Garmin row with a numeric expiry as text
    s3, state = FakeS3(), StoreState()
    rows = [
        make_row(0, provider=None, expires_at=OAUTH1_EXPIRES_AT),
        make_row(1, provider=None, expires_at=1_893_456_000),
        make_row(2, provider=None, expires_at=None),
        make_row(3, provider="garmin", expires_at=1_893_456_000),
        make_row(4, provider="oura", expires_at=1_893_456_000),  # OAuth 2.0: any expiry
        make_row(5, provider=None, expires_at=str(OAUTH1_EXPIRES_AT)),
        make_row(6, provider=None),
    ]
    del rows[6]["expires_at"]
    s3.put(GARMIN_KEY, "".join(json.dumps(r) + "\n" for r in rows).encode())
    post = FakePost()

    # When it is imported
    result = run(s3, state, settings(), ObjectRef(bucket=BUCKET, key=GARMIN_KEY), post_chunk=post)

    # Then the rows with another expiry are rejected, naming the field and the constant
    by_line = {int(o["line"]): o for o in parse_outcomes(s3.objects[GARMIN_OUTCOMES])}
    reason = (
        "expires_at: must be 2147483647 for OAuth 1.0 providers (garmin), "
        "or left empty to have it filled in"
    )
    assert {n for n, o in by_line.items() if o["outcome"] == "rejected"} == {2, 4}
    assert by_line[2]["detail"] == by_line[4]["detail"] == reason
    assert by_line[2]["provider"] == "garmin"
    assert "1893456000" not in s3.objects[GARMIN_OUTCOMES].decode()
    # And every Garmin row sent carries the constant
    sent = {row.line: json.loads(row.payload) for chunk in post.sent for row in chunk.rows}
    assert sorted(sent) == [1, 3, 5, 6, 7]
    assert {line: r["expires_at"] for line, r in sent.items()} == {
        1: OAUTH1_EXPIRES_AT,
        3: OAUTH1_EXPIRES_AT,
        5: 1_893_456_000,
        6: OAUTH1_EXPIRES_AT,
        7: OAUTH1_EXPIRES_AT,
    }
    assert {c.provider for c in post.sent for r in c.rows if r.line == 5} == {"oura"}
    assert result.manifest is not None
    assert result.manifest.counts == Counts(rows=7, rejected=2, imported=5)
