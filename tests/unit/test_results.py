"""outcomes.csv and manifest.json writers, and where results go."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from typing import IO, Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from bulk_import.ingest import Format, read_records
from bulk_import.ingest.chunking import PendingRow, serialise
from bulk_import.ingest.validation import validate_row
from bulk_import.model import ConnectionRow, Counts, Manifest, Outcome, RowOutcome, SourceRef
from bulk_import.storage.keys import results_prefix
from bulk_import.storage.results import BlockReader, assemble, write_manifest
from bulk_import.storage.spool import (
    OUTCOMES_HEADER,
    OutcomeSpool,
    RetrySpool,
    neutralise,
    outcomes_header,
)


class FakeBody:
    def __init__(self, data: bytes) -> None:
        self._data = data

    def iter_chunks(self, chunk_size: int) -> Iterator[bytes]:
        for i in range(0, len(self._data), chunk_size):
            yield self._data[i : i + chunk_size]

    def close(self) -> None:
        self.closed = True


class FakeS3:
    """An in-memory stand-in with just the calls the writers make; no AWS involved."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], bytes] = {}
        self.extra: dict[tuple[str, str], dict[str, Any]] = {}

    def upload_fileobj(self, fileobj: IO[bytes], bucket: str, key: str, **kwargs: Any) -> None:
        self.objects[bucket, key] = fileobj.read()
        self.extra[bucket, key] = kwargs

    def put_object(self, *, Bucket: str, Key: str, Body: bytes, **kwargs: Any) -> None:  # noqa: N803
        self.objects[Bucket, Key] = Body
        self.extra[Bucket, Key] = kwargs

    def get_object(self, *, Bucket: str, Key: str) -> dict[str, Any]:  # noqa: N803
        return {"Body": FakeBody(self.objects[Bucket, Key])}


@pytest.mark.parametrize(
    ("key", "incoming", "results", "expected"),
    [
        ("incoming/a/b.csv", "incoming/", "results/", "results/a/b.csv/"),
        ("incoming/oura/export.jsonl.gz", "incoming/", "results/", "results/oura/export.jsonl.gz/"),
        ("incoming/x.json", "incoming/", "out/", "out/x.json/"),
        ("uploads/2024/x.csv", "uploads/", "reports/done/", "reports/done/2024/x.csv/"),
        ("other/a.csv", "incoming/", "results/", "results/other/a.csv/"),
        ("incomingx/a.csv", "incoming/", "results/", "results/incomingx/a.csv/"),
        ("a.csv", "incoming/", "results/", "results/a.csv/"),
    ],
)
def test_results_prefix(key: str, incoming: str, results: str, expected: str) -> None:
    assert results_prefix(key, incoming, results) == expected


def outcomes_csv(*batches: list[RowOutcome]) -> bytes:
    """outcomes.csv as the pipeline builds it over several invocations: every batch but the last
    stored as a part by an invocation of its own (its checkpoint), the last in the finishing
    invocation's spool."""
    s3 = FakeS3()
    parts = []
    for i, batch in enumerate(batches[:-1]):
        earlier = OutcomeSpool(outcomes_header())
        try:
            earlier.write(batch)
            earlier.upload(s3, "bucket", f"_state/part-{i}", "text/csv")  # type: ignore[arg-type]
            assert earlier.lines == 0  # an upload takes the lines written since the last one
        finally:
            earlier.close()
        parts.append(f"_state/part-{i}")
    spool = OutcomeSpool(outcomes_header())
    try:
        if batches:
            spool.write(batches[-1])
            assert spool.lines == len(batches[-1])
        assemble(
            s3,  # type: ignore[arg-type]
            "bucket",
            "results/x.csv/outcomes.csv",
            parts=parts,
            spool=spool,
            content_type="text/csv",
        )
    finally:
        spool.close()
    assert s3.extra["bucket", "results/x.csv/outcomes.csv"]["ExtraArgs"] == {
        "ContentType": "text/csv"
    }
    return s3.objects["bucket", "results/x.csv/outcomes.csv"]


def test_an_invocation_that_finishes_sends_its_spool_without_reading_its_parts_back() -> None:
    batches = [
        [RowOutcome(n, f"u{n}", "oura", Outcome.IMPORTED, "") for n in range(start, start + 3)]
        for start in (1, 4, 7)
    ]
    s3 = FakeS3()
    spool = OutcomeSpool(outcomes_header())
    try:
        for i, batch in enumerate(batches):
            spool.write(batch)
            if i < 2:  # two checkpoints, each storing the lines since the one before
                spool.upload(s3, "bucket", f"_state/part-{i}", "text/csv")  # type: ignore[arg-type]
        del s3.objects["bucket", "_state/part-0"], s3.objects["bucket", "_state/part-1"]
        assemble(
            s3,  # type: ignore[arg-type]
            "bucket",
            "results/x.csv/outcomes.csv",
            parts=[],
            spool=spool,
            content_type="text/csv",
        )
    finally:
        spool.close()
    written = s3.objects["bucket", "results/x.csv/outcomes.csv"].decode()
    assert written.splitlines() == [
        "line,user_id,provider,outcome,detail",
        *(f"{n},u{n},oura,imported," for n in range(1, 10)),
    ]


def test_each_part_holds_the_lines_since_the_last_one() -> None:
    s3 = FakeS3()
    spool = OutcomeSpool(outcomes_header())
    try:
        for n, key in ((1, "_state/part-0"), (2, "_state/part-1")):
            spool.write([RowOutcome(n, f"u{n}", "oura", Outcome.IMPORTED, "")])
            spool.upload(s3, "bucket", key, "text/csv")  # type: ignore[arg-type]
    finally:
        spool.close()
    assert s3.objects["bucket", "_state/part-0"] == b"1,u1,oura,imported,\n"
    assert s3.objects["bucket", "_state/part-1"] == b"2,u2,oura,imported,\n"


def test_header_row_is_exact_and_alone_for_no_rows() -> None:
    assert outcomes_header() == b"line,user_id,provider,outcome,detail\n"
    assert OUTCOMES_HEADER == ("line", "user_id", "provider", "outcome", "detail")
    assert outcomes_csv() == b"line,user_id,provider,outcome,detail\n"
    assert outcomes_csv([]) == b"line,user_id,provider,outcome,detail\n"


def test_rows_are_written_in_order_with_exact_text() -> None:
    user = "6f1c2c4e-1111-4222-8333-444455556666"
    body = outcomes_csv(
        [
            RowOutcome(2, user, "oura", Outcome.IMPORTED),
            RowOutcome(3, "", "garmin", Outcome.REJECTED, 'expires_at: bad, "quoted"\nnext'),
        ],
        [],
        [RowOutcome(4, user, "oura", Outcome.DUPLICATE, "duplicate of line 2")],
    )
    assert body.decode() == (
        "line,user_id,provider,outcome,detail\n"
        f"2,{user},oura,imported,\n"
        '3,,garmin,rejected,"expires_at: bad, ""quoted""\nnext"\n'
        f"4,{user},oura,duplicate,duplicate of line 2\n"
    )


@pytest.mark.parametrize("start", ["=", "+", "-", "@", "\t", "\r"])
def test_csv_injection_is_neutralised_in_every_input_derived_cell(start: str) -> None:
    value = start + 'HYPERLINK("http://evil","x")'
    body = outcomes_csv([RowOutcome(7, value, value, Outcome.REJECTED, value)])
    [header, row] = list(csv.reader(io.StringIO(body.decode(), newline="")))
    assert header == list(OUTCOMES_HEADER)
    assert row == ["7", "'" + value, "'" + value, "rejected", "'" + value]


def test_ordinary_values_are_not_prefixed() -> None:
    body = outcomes_csv(
        [RowOutcome(1, "a=b", "oura", Outcome.FAILED, "check GET /v2/user/providers/{user_id}")]
    )
    assert body.decode().splitlines()[1] == (
        "1,a=b,oura,failed,check GET /v2/user/providers/{user_id}"
    )


def test_many_parts_keep_order_and_utf8() -> None:
    batches = [[RowOutcome(i + 1, f"u{i}", "oura", Outcome.ENQUEUED, "Zoë 😀")] for i in range(4)]
    rows = list(csv.reader(io.StringIO(outcomes_csv(*batches).decode("utf-8"), newline="")))
    assert rows[1:] == [[str(i + 1), f"u{i}", "oura", "enqueued", "Zoë 😀"] for i in range(4)]


def test_write_manifest() -> None:
    s3 = FakeS3()
    counts = Counts(rows=2, imported=2)
    manifest = Manifest(
        source=SourceRef(bucket="b", key="incoming/a.csv", etag='"abc"', size=10),
        status="succeeded",
        started_at="2025-01-01T00:00:00.000Z",
        finished_at="2025-01-01T00:00:01.000Z",
        counts=counts,
        outcomes_key="results/a.csv/outcomes.csv",
    )
    write_manifest(s3, "b", "results/a.csv/manifest.json", manifest)  # type: ignore[arg-type]
    assert s3.extra["b", "results/a.csv/manifest.json"] == {"ContentType": "application/json"}
    doc = json.loads(s3.objects["b", "results/a.csv/manifest.json"])
    assert doc["schema_version"] == 1
    assert doc["status"] == "succeeded"
    assert doc["counts"] == {
        "rows": 2,
        "rejected": 0,
        "duplicates": 0,
        "imported": 2,
        "failed": 0,
        "enqueued": 0,
        "errored": 0,
        "valid": 0,
    }
    assert doc["source"]["key"] == "incoming/a.csv"
    assert doc["source"]["etag"] == '"abc"'
    assert doc["source"]["size"] == 10
    assert doc["outcomes_key"] == "results/a.csv/outcomes.csv"
    assert doc["error"] is None
    assert Manifest.model_validate(doc) == manifest


def test_retry_spool_lines_can_be_uploaded_again_as_jsonl() -> None:
    rows = [
        ConnectionRow.model_validate(
            {
                "provider": provider,
                "user_id": f"6f1c2c4e-1111-4222-8333-44445555666{i}",
                "access_token": f"a{i}",
                "refresh_token": f"r{i}",
                "provider_id": f"p{i}",
                "expires_at": 2_147_483_647 if provider == "garmin" else 1_700_000_000,
                "oauth_scopes": "x y" if i else None,
            }
        )
        for i, provider in enumerate(["oura", "garmin"])
    ]
    s3 = FakeS3()
    spool = RetrySpool()
    try:
        for row in rows:
            spool.write(row.provider, serialise(row))
        assert spool.lines == 2
        spool.upload(s3, "b", "results/a.csv/retry.jsonl", "application/x-ndjson")  # type: ignore[arg-type]
    finally:
        spool.close()
    data = s3.objects["b", "results/a.csv/retry.jsonl"]
    records = list(read_records(io.BufferedReader(io.BytesIO(data)), Format.JSONL, 10_000))
    assert [r.line for r in records] == [1, 2]
    assert [validate_row(r.data or {}, None) for r in records] == rows
    assert data.startswith(b'{"provider":"oura","user_id":')


# Values near the line between plain and quoted: UUIDs, names, and short strings of the
# characters that decide it (separators, quotes, newlines, formula starts).
_near_plain = st.uuids().map(str) | st.text(alphabet="ab1_.:/ -\n\r,=+@\t\"'", max_size=6)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(min_value=1, max_value=10**9),
            st.text(max_size=40) | _near_plain,
            st.text(max_size=20) | _near_plain | st.sampled_from(["oura", ""]),
            st.sampled_from(list(Outcome)),
            st.text(max_size=60) | _near_plain | st.just(""),
        ),
        max_size=20,
    )
)
# Plain ids, but one starting with a character a plain value has only after its first.
@example([(1, "a", "oura", Outcome.IMPORTED, ""), (2, "-1", "oura", Outcome.IMPORTED, "")])
@example([(1, " a", "oura", Outcome.IMPORTED, "")])
@example([(1, "a", "", Outcome.IMPORTED, ""), (2, "b\n:c", "", Outcome.IMPORTED, "")])
def test_fast_outcome_lines_parse_like_the_csv_module(rows: list[tuple]) -> None:
    outcomes = [RowOutcome(*row) for row in rows]
    spool = OutcomeSpool()
    spool.write(outcomes)
    written = io.BytesIO(b"".join(spool.blocks()))
    spool.close()
    expected = io.StringIO()
    writer = csv.writer(expected, lineterminator="\n")
    for o in outcomes:
        writer.writerow(
            (
                o.line,
                neutralise(o.user_id),
                neutralise(o.provider),
                o.outcome.value,
                neutralise(o.detail),
            )
        )
    parse = lambda text: list(csv.reader(io.StringIO(text, newline="")))  # noqa: E731
    assert parse(written.getvalue().decode()) == parse(expected.getvalue())


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(min_value=1, max_value=10**9), st.text(max_size=40) | _near_plain),
        max_size=20,
    ),
    st.text(max_size=20) | _near_plain | st.sampled_from(["oura", ""]),
    st.sampled_from(list(Outcome)),
    st.text(max_size=60) | _near_plain | st.just(""),
)
def test_a_shared_outcome_writes_the_bytes_of_one_outcome_per_row(
    rows: list[tuple[int, str]], provider: str, outcome: Outcome, detail: str
) -> None:
    """``write_same`` (a whole chunk's one outcome, formatted once) is a shortcut, not a format."""
    pending = [PendingRow(line, user_id, b"{}") for line, user_id in rows]
    each, same = OutcomeSpool(), OutcomeSpool()
    each.write([RowOutcome(r.line, r.user_id, provider, outcome, detail) for r in pending])
    same.write_same(pending, provider, outcome, detail)
    expected, written = b"".join(each.blocks()), b"".join(same.blocks())
    assert (same.lines, written) == (each.lines, expected)
    each.close()
    same.close()


def test_a_spool_past_its_keep_size_lets_its_uploaded_lines_go() -> None:
    # /tmp is 512 MB by default: a spool keeps the lines it has uploaded (so the finishing
    # invocation need not read its parts back) only up to a size, then the parts are read back.
    line = lambda n: RowOutcome(n, f"u{n}", "oura", Outcome.IMPORTED, "")  # noqa: E731
    s3 = FakeS3()
    spool = OutcomeSpool(outcomes_header(), keep_bytes=60)
    kept = []
    try:
        for n in range(1, 6):  # each line is 20 bytes: kept until more than 60 are held
            spool.write([line(n)])
            kept.append(spool.upload(s3, "bucket", f"_state/part-{n}", "text/csv"))  # type: ignore[arg-type]
        held = b"".join(spool.blocks())
        spool.write([line(6)])
        assert kept == [True, True, True, False, True]
        assert held == b"5,u5,oura,imported,\n"  # parts 1-4 went; the spool holds part 5 on
        to_read = [f"_state/part-{n}" for n in range(1, 5)]  # up to the last upload let go
        assemble(s3, "bucket", "outcomes.csv", parts=to_read, spool=spool, content_type="text/csv")  # type: ignore[arg-type]
    finally:
        spool.close()
    written = s3.objects["bucket", "outcomes.csv"].decode()
    assert written.splitlines() == [
        "line,user_id,provider,outcome,detail",
        *(f"{n},u{n},oura,imported," for n in range(1, 7)),
    ]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.binary(max_size=40), max_size=30),
    st.integers(min_value=1, max_value=64),
)
def test_a_stream_of_blocks_reads_whole_amounts_until_its_end(
    blocks: list[bytes], amount: int
) -> None:
    """s3transfer cuts a stream into parts with read(n): a short read mid-stream would make a
    part smaller than S3 allows (5 MiB but the last)."""
    stream = io.BufferedReader(BlockReader(iter(blocks)), 16)
    pieces = list(iter(lambda: stream.read(amount), b""))
    assert b"".join(pieces) == b"".join(blocks)
    assert all(len(p) == amount for p in pieces[:-1])


def test_assembling_reads_each_stored_part_only_as_the_upload_reaches_it() -> None:
    """The final object is streamed from the parts, never gathered (on disk or in memory)
    first: /tmp would otherwise hold the file's outcomes once more at its end."""

    # Given two stored parts, and an upload that notes which parts were fetched as it reads
    class Watching(FakeS3):
        def __init__(self) -> None:
            super().__init__()
            self.fetched: list[str] = []
            self.fetched_when: list[list[str]] = []

        def get_object(self, *, Bucket: str, Key: str) -> dict[str, Any]:  # noqa: N803
            self.fetched.append(Key)
            return super().get_object(Bucket=Bucket, Key=Key)

        def upload_fileobj(self, fileobj: IO[bytes], bucket: str, key: str, **kw: Any) -> None:
            data = b""
            while block := fileobj.read(4):
                self.fetched_when.append(list(self.fetched))
                data += block
            self.objects[bucket, key] = data

    s3 = Watching()
    s3.objects["b", "p1"] = b"1,a\n" * 3
    s3.objects["b", "p2"] = b"2,b\n" * 3
    spool = OutcomeSpool(b"h\n")
    spool.write_bytes(b"3,c\n", 1)

    # When the final object is assembled
    assemble(s3, "b", "out", parts=["p1", "p2"], spool=spool, content_type="text/csv")  # type: ignore[arg-type]
    spool.close()

    # Then it holds everything in order, and the second part was fetched only once the
    # upload had read through the first
    assert s3.objects["b", "out"] == b"h\n" + b"1,a\n" * 3 + b"2,b\n" * 3 + b"3,c\n"
    assert s3.fetched_when[0] == ["p1"]
    assert ["p1"] in s3.fetched_when[1:4]
