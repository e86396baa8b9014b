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
from bulk_import.run.intake import NO_ROWS
from bulk_import.wiring import Tunables
from tests.fakes import FakePost, FakeS3, StoreState, outcomes_by_line, run_offline
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
    return run_offline(s3, state, config, ref, **overrides)


def outcomes(s3: FakeS3) -> dict[int, dict[str, str]]:
    return outcomes_by_line(s3, OUTCOMES)


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


# --- the rejection threshold ----------------------------------------------------------------------

GARBAGE_BLOCKS = Tunables(jsonl_block_bytes=200)  # 11 or 12 lines of garbage a block


def garbage(n: int) -> str:
    return f"garbage line {n:03d}"


def test_given_a_file_of_garbage_then_it_stops_reading_once_its_first_rows_are_all_rejected() -> (
    None
):
    # Given 100 lines that are not JSON, read in blocks of 11 or 12, and a threshold of 20 rows
    s3, state = FakeS3(), StoreState()
    put_lines(s3, *(garbage(n) for n in range(100)))
    post = FakePost()

    # When the file is imported
    result = run(
        s3,
        state,
        settings(REJECTED_STOP_AFTER_ROWS="20"),
        tunables=GARBAGE_BLOCKS,
        post_chunk=post,
    )

    # Then it stopped at the first block boundary past 20 rows: failed, saying why, the rows
    # read so far rejected, the rest never read, nothing sent
    manifest = result.manifest
    assert manifest is not None
    assert manifest.status == "failed"
    assert manifest.error is not None
    assert manifest.error.type == "ImportAborted"
    assert manifest.error.message == (
        "23 of the first 23 rows were rejected (REJECTED_STOP_AFTER_ROWS=20): this does not "
        "look like a connection file; see outcomes.csv for the reasons"
    )
    assert manifest.counts == Counts(rows=23, rejected=23)
    by_line = outcomes(s3)
    assert sorted(by_line) == list(range(1, 24))
    assert {o["outcome"] for o in by_line.values()} == {"rejected"}
    assert post.sent == []


def test_given_garbage_after_valid_rows_then_the_rows_waiting_in_a_chunk_are_not_sent() -> None:
    # Given 5 valid rows (in a chunk of up to 10 still being filled), then garbage
    s3, state = FakeS3(), StoreState()
    put_lines(s3, *(make_row(n) for n in range(5)), *(garbage(n) for n in range(200)))
    post = FakePost()
    threshold = settings(REJECTED_STOP_PERCENT="50")

    # When the file is imported (the share from 40 rows on, not 10,000, for a short file)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("bulk_import.run.stop.REJECTED_PERCENT_FROM_ROWS", 40)
        result = run(s3, state, threshold, tunables=GARBAGE_BLOCKS, post_chunk=post)

    # Then it stopped past 40 rows: nothing sent, the valid rows "not sent", the rest rejected
    manifest = result.manifest
    assert manifest is not None
    assert (manifest.status, manifest.error is not None) == ("failed", True)
    assert manifest.error is not None
    assert manifest.error.type == "ImportAborted"
    assert "more than REJECTED_STOP_PERCENT=50%" in manifest.error.message
    assert post.sent == []
    by_line = outcomes(s3)
    rows = manifest.counts.rows
    assert 40 <= rows < 60
    assert sorted(by_line) == list(range(1, rows + 1))
    assert {by_line[n]["outcome"] for n in range(1, 6)} == {"errored"}
    assert all(by_line[n]["detail"].startswith("not sent: ") for n in range(1, 6))
    assert {by_line[n]["outcome"] for n in range(6, rows + 1)} == {"rejected"}


@pytest.mark.parametrize(
    "env",
    [
        {"REJECTED_STOP_AFTER_ROWS": "0"},  # off
        {"REJECTED_STOP_AFTER_ROWS": "101"},  # more rows than the file holds
    ],
)
def test_given_the_threshold_off_or_not_reached_then_a_file_of_garbage_is_read_to_its_end(
    env: dict[str, str],
) -> None:
    s3, state = FakeS3(), StoreState()
    put_lines(s3, *(garbage(n) for n in range(100)))

    result = run(s3, state, settings(**env), tunables=GARBAGE_BLOCKS, post_chunk=FakePost())

    assert result.manifest is not None
    assert (result.manifest.status, result.manifest.error) == ("partial", None)
    assert result.manifest.counts == Counts(rows=100, rejected=100)


def test_given_a_file_of_garbage_in_one_block_then_its_end_is_judged_too() -> None:
    # Given 30 lines of garbage, all in the one block, and a threshold of 20 rows
    s3, state = FakeS3(), StoreState()
    put_lines(s3, *(garbage(n) for n in range(30)))

    result = run(s3, state, settings(REJECTED_STOP_AFTER_ROWS="20"), post_chunk=FakePost())

    # Then the file fails as the same file read in smaller blocks would
    assert result.manifest is not None
    assert result.manifest.error is not None
    assert result.manifest.error.message.startswith("30 of the first 30 rows were rejected")
    assert result.manifest.counts == Counts(rows=30, rejected=30)


def test_given_a_csv_file_of_garbage_then_it_stops_between_records() -> None:
    s3, state = FakeS3(), StoreState()
    key = "incoming/oura/a.csv"
    body = CSV_HEADER + b"".join(b"oura,not-a-uuid-%d,,,,,\n" % n for n in range(500))
    s3.put(key, body)
    ref = ObjectRef(bucket=BUCKET, key=key, sequencer="0A")

    result = run(s3, state, settings(REJECTED_STOP_AFTER_ROWS="100"), ref, post_chunk=FakePost())

    # Then it stopped at the first check past 100 records (every 64)
    assert result.manifest is not None
    assert result.manifest.error is not None
    assert result.manifest.error.type == "ImportAborted"
    assert result.manifest.counts == Counts(rows=128, rejected=128)


@pytest.mark.parametrize("percent_from_rows", [None, 40])
def test_given_invocations_that_run_out_of_time_then_they_stop_where_one_would(
    percent_from_rows: int | None,
) -> None:
    # Given valid rows among garbage (rules: 30 rows all rejected, or from 40 rows on more
    # than half), read in blocks of a few lines
    s3 = FakeS3()
    lines: list[dict[str, Any] | str] = [garbage(n) for n in range(200)]
    if percent_from_rows is not None:
        lines[:20] = [make_row(n) for n in range(20)]
    put_lines(s3, *lines)
    config = settings(REJECTED_STOP_AFTER_ROWS="30", CHECKPOINT_EVERY_CHUNKS="1")

    def import_file(deadline: bool) -> tuple[FileResult, FakePost, dict[int, dict[str, str]]]:
        s3.objects.pop(OUTCOMES, None)
        state, post, ref = StoreState(), FakePost(), REF
        remaining = (lambda: 0.0) if deadline else (lambda: 900.0)
        for _ in range(100):
            result = run(
                s3, state, config, ref, tunables=GARBAGE_BLOCKS, post_chunk=post,
                remaining_seconds=remaining,
            )  # fmt: skip
            if result.continuation is None:
                return result, post, outcomes(s3)
            ref = result.continuation
        raise AssertionError("the file never ended")

    # When the file is imported in one invocation, and in one per block
    with pytest.MonkeyPatch.context() as mp:
        if percent_from_rows is not None:
            mp.setattr("bulk_import.run.stop.REJECTED_PERCENT_FROM_ROWS", percent_from_rows)
        one, one_post, one_outcomes = import_file(deadline=False)
        many, many_post, many_outcomes = import_file(deadline=True)

    # Then both stop at the same row with the same reason and the same rows rejected (whether
    # a chunk cut before the stop went out depends on the posting threads, as for any stop)
    assert many.manifest is not None
    assert one.manifest is not None
    assert many.manifest.segments > 3
    assert one.manifest.error is not None
    assert many.manifest.error == one.manifest.error
    assert many.manifest.counts.rows == one.manifest.counts.rows
    assert many.manifest.counts.rejected == one.manifest.counts.rejected
    assert (
        sorted(many_outcomes)
        == sorted(one_outcomes)
        == list(range(1, one.manifest.counts.rows + 1))
    )

    def rejected(by_line: dict[int, dict[str, str]]) -> dict[int, dict[str, str]]:
        return {n: o for n, o in by_line.items() if o["outcome"] == "rejected"}

    assert rejected(many_outcomes) == rejected(one_outcomes)
    assert set(many_post.sent_lines) | set(one_post.sent_lines) <= set(range(1, 21))
