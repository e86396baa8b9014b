"""Row readers: format detection, JSONL, CSV and streamed JSON arrays."""

from __future__ import annotations

import gc
import io
import json
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from bulk_import.errors import MalformedFile, UnsupportedFile
from bulk_import.ingest import read_records
from bulk_import.ingest.csv_reader import read_csv
from bulk_import.ingest.file_type import Compression, Format, detect
from bulk_import.ingest.json_array import READ_SIZE, TextWindow, WindowFactory, read_json_array
from bulk_import.ingest.jsonl import jsonl_blocks
from bulk_import.ingest.record import Record

BOM = b"\xef\xbb\xbf"
SECRET = "tok_SECRET_abc123"
BIG = 1_000_000

Row = tuple[int, dict[str, Any] | None, str | None]


def stream(data: bytes) -> io.BufferedReader:
    return io.BufferedReader(io.BytesIO(data))


def read(data: bytes, fmt: Format, limit: int = BIG) -> list[Row]:
    return [(r.line, r.data, r.error) for r in read_records(stream(data), fmt, limit)]


def read_json(data: bytes, read_size: int, limit: int = BIG) -> list[Row]:
    """``read`` of a JSON array whose window takes ``read_size`` characters at a time."""
    records = read_json_array(stream(data), limit, read_size=read_size)
    return [(r.line, r.data, r.error) for r in records]


def _collect(records: Iterator[Record], into: list[Row]) -> None:
    for r in records:
        into.append((r.line, r.data, r.error))


def read_until_malformed(data: bytes, fmt: Format, limit: int = BIG) -> tuple[list[Row], str]:
    """The records yielded before the reader gave up, and its message."""
    return records_until_malformed(read_records(stream(data), fmt, limit))


def records_until_malformed(records: Iterator[Record]) -> tuple[list[Row], str]:
    got: list[Row] = []
    with pytest.raises(MalformedFile) as info:
        _collect(records, got)
    return got, str(info.value)


# --- detect -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "fmt", "compression"),
    [
        ("incoming/oura/export.jsonl", Format.JSONL, Compression.NONE),
        ("incoming/export.ndjson", Format.JSONL, Compression.NONE),
        ("incoming/export.json", Format.JSON, Compression.NONE),
        ("incoming/export.csv", Format.CSV, Compression.NONE),
        ("incoming/export.csv.gz", Format.CSV, Compression.GZIP),
        ("incoming/export.json.zst", Format.JSON, Compression.ZSTD),
        ("incoming/export.jsonl.gz", Format.JSONL, Compression.GZIP),
        ("incoming/export.ndjson.zst", Format.JSONL, Compression.ZSTD),
        ("incoming/OURA/EXPORT.CSV", Format.CSV, Compression.NONE),
        ("incoming/Export.JSONL.GZ", Format.JSONL, Compression.GZIP),
        ("incoming/Export.Json.Zst", Format.JSON, Compression.ZSTD),
        ("export.2024.01.csv", Format.CSV, Compression.NONE),
        ("a.json/b.csv", Format.CSV, Compression.NONE),
    ],
)
def test_detect(key: str, fmt: Format, compression: Compression) -> None:
    assert detect(key) == (fmt, compression)


def test_detect_unsupported_extension_message_names_file_and_choices() -> None:
    with pytest.raises(UnsupportedFile) as info:
        detect("incoming/oura/export.txt")
    assert str(info.value) == (
        "unsupported file type for 'export.txt'; use .csv, .json, .jsonl, .ndjson "
        "(optionally ending in .gz or .zst)"
    )


@pytest.mark.parametrize(
    "key", ["incoming/export.gz", "incoming/export.csv.bz2", "incoming/export", "a.csv/b.xlsx"]
)
def test_detect_rejects_unknown_extensions(key: str) -> None:
    with pytest.raises(UnsupportedFile, match="unsupported file type for"):
        detect(key)


# --- JSONL ------------------------------------------------------------------------------------


def test_jsonl_blank_lines_are_skipped_but_line_numbers_stay_physical() -> None:
    data = b'{"a":1}\n\n   \n\t\n{"b":2}\n\n{"c":3}'
    assert read(data, Format.JSONL) == [
        (1, {"a": 1}, None),
        (5, {"b": 2}, None),
        (7, {"c": 3}, None),
    ]


def test_jsonl_crlf_and_bom() -> None:
    data = BOM + b'{"a":1}\r\n{"b":"x"}\r\n'
    assert read(data, Format.JSONL) == [(1, {"a": 1}, None), (2, {"b": "x"}, None)]


def test_jsonl_bom_before_a_blank_first_line() -> None:
    assert read(BOM + b'\n{"a":1}\n', Format.JSONL) == [(2, {"a": 1}, None)]


def test_jsonl_empty_file_yields_nothing() -> None:
    assert read(b"", Format.JSONL) == []
    assert read(b"\n\n", Format.JSONL) == []


def test_jsonl_invalid_line_is_an_error_record_without_its_content() -> None:
    data = b'{"a":1}\n{"access_token": "' + SECRET.encode() + b'",\n{"c":3}\n'
    rows = read(data, Format.JSONL)
    assert rows == [
        (1, {"a": 1}, None),
        (2, None, "invalid JSON: Expecting property name enclosed in double quotes at column 38"),
        (3, {"c": 3}, None),
    ]
    assert SECRET not in repr(rows[1])


def test_jsonl_extra_data_after_object_is_an_error() -> None:
    data = b'{"a":1} trailing ' + SECRET.encode() + b"\n"
    assert read(data, Format.JSONL) == [(1, None, "invalid JSON: Extra data at column 9")]


@pytest.mark.parametrize(
    ("line", "kind"),
    [
        (b"[1, 2]", "an array"),
        (b'"' + SECRET.encode() + b'"', "a string"),
        (b"3", "a number"),
        (b"2.5", "a number"),
        (b"null", "null"),
        (b"true", "a boolean"),
    ],
)
def test_jsonl_non_object_line_is_rejected(line: bytes, kind: str) -> None:
    assert read(b'{"a":1}\n' + line + b'\n{"b":2}\n', Format.JSONL) == [
        (1, {"a": 1}, None),
        (2, None, f"expected a JSON object, got {kind}"),
        (3, {"b": 2}, None),
    ]


def test_jsonl_overlong_line_is_rejected_and_the_next_line_still_read() -> None:
    long_line = b'{"access_token":"' + b"x" * 200 + b'"}'
    data = b'{"a":1}\n' + long_line + b'\n{"b":2}\n' + long_line + b"\n" + long_line
    assert read(data, Format.JSONL, limit=40) == [
        (1, {"a": 1}, None),
        (2, None, "line is longer than 40 bytes"),
        (3, {"b": 2}, None),
        (4, None, "line is longer than 40 bytes"),
        (5, None, "line is longer than 40 bytes"),
    ]


def test_jsonl_line_of_exactly_the_limit_is_accepted() -> None:
    line = b'{"a":"' + b"y" * 12 + b'"}'
    assert len(line) == 20
    assert read(line + b"\n" + line, Format.JSONL, limit=20) == [
        (1, {"a": "y" * 12}, None),
        (2, {"a": "y" * 12}, None),
    ]
    assert read(line + b"z\n{}\n", Format.JSONL, limit=20) == [
        (1, None, "line is longer than 20 bytes"),
        (2, {}, None),
    ]


def test_jsonl_invalid_utf8_line_is_rejected_with_its_byte_position() -> None:
    data = b'{"a":1}\n{"a":"\xff"}\n{"b":2}\n'
    assert read(data, Format.JSONL) == [
        (1, {"a": 1}, None),
        (2, None, "not valid UTF-8 (byte 7 of the line)"),
        (3, {"b": 2}, None),
    ]


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-be", "utf-32", "utf-32-be"])
def test_jsonl_in_utf16_or_utf32_with_a_byte_order_mark_is_a_malformed_file(
    encoding: str,
) -> None:
    # Windows PowerShell 5's default. Left to itself, json guesses UTF-16 for line 1 and sends
    # it, rejects the other lines, and the trailing NUL byte makes a row of its own.
    text = '{"a":1}\n{"b":2}\n'
    data = ("\ufeff" + text).encode(encoding) if encoding.endswith("-be") else text.encode(encoding)
    got, message = read_until_malformed(data, Format.JSONL)
    assert got == []
    assert message == "the file is UTF-16 or UTF-32, not UTF-8; save it as UTF-8"


def test_jsonl_byte_order_mark_is_seen_whatever_the_block_size() -> None:
    data = '{"a":1}\n'.encode("utf-32")
    with pytest.raises(MalformedFile, match="UTF-16 or UTF-32"):
        list(jsonl_blocks(stream(data), 100, block_size=1))


def test_jsonl_a_utf16_line_without_a_byte_order_mark_is_rejected() -> None:
    # Given bytes, json would guess UTF-16 from the NUL bytes and take the row.
    data = b'{"a":1}\n' + '{"b":2}'.encode("utf-16-le") + b"\n"
    assert read(data, Format.JSONL) == [
        (1, {"a": 1}, None),
        (2, None, "invalid JSON: Expecting property name enclosed in double quotes at column 2"),
    ]


def test_jsonl_reason_for_an_unterminated_string_reads_well() -> None:
    assert read(b'{"access_token": "tok\n', Format.JSONL) == [
        (1, None, "invalid JSON: Unterminated string starting at column 18")
    ]


def test_jsonl_deeply_nested_line_is_rejected() -> None:
    data = b"[" * 100_000 + b"\n" + b'{"b":2}\n'
    assert read(data, Format.JSONL) == [(1, None, "JSON nested too deeply"), (2, {"b": 2}, None)]


def test_jsonl_non_ascii_text_round_trips() -> None:
    row = {"provider_id": "Zoë 😀", "k": "\u2028"}
    data = json.dumps(row, ensure_ascii=False).encode() + b"\n"
    assert read(data, Format.JSONL) == [(1, row, None)]


# --- CSV --------------------------------------------------------------------------------------

HEADER = b"user_id,access_token,refresh_token,provider_id,expires_at,oauth_scopes,provider\r\n"


def test_csv_header_names_are_case_and_space_insensitive() -> None:
    data = (
        b" User_ID ,ACCESS_TOKEN,  refresh_token,Provider_Id ,EXPIRES_AT,OAuth_Scopes,Provider\n"
        b"u1,a1,r1,p1,1700000000,a b,OURA\n"
    )
    assert read(data, Format.CSV) == [
        (
            2,
            {
                "user_id": "u1",
                "access_token": "a1",
                "refresh_token": "r1",
                "provider_id": "p1",
                "expires_at": "1700000000",
                "oauth_scopes": "a b",
                "provider": "OURA",
            },
            None,
        )
    ]


def test_csv_bom_is_not_part_of_the_first_header() -> None:
    data = BOM + HEADER + b"u1,a1,r1,p1,1,,oura\r\n"
    rows = read(data, Format.CSV)
    assert rows == [
        (
            2,
            {
                "user_id": "u1",
                "access_token": "a1",
                "refresh_token": "r1",
                "provider_id": "p1",
                "expires_at": "1",
                "provider": "oura",
            },
            None,
        )
    ]


def test_csv_quoted_fields_with_newlines_report_the_first_physical_line() -> None:
    # Line breaks in a column the import ignores (notes): a record spans lines, legitimately.
    header = HEADER.replace(b"\r\n", b",notes\r\n")
    data = (
        header
        + b'u1,a1,r1,p1,1,,oura,"a\r\nb\r\nc"\r\n'  # lines 2-4
        + b"\r\n"  # line 5, blank
        + b'u2,"x, ""y""",r2,p2,2,,oura,"p\n2"\r\n'  # lines 6-7
        + b"u3,a3,r3,p3,3,,oura,\r\n"  # line 8
    )
    rows = read(data, Format.CSV)
    assert [(line, d and d["user_id"]) for line, d, _ in rows] == [(2, "u1"), (6, "u2"), (8, "u3")]
    assert rows[0][1] is not None
    assert rows[0][1]["notes"] == "a\r\nb\r\nc"
    assert rows[1][1] is not None
    assert rows[1][1]["access_token"] == 'x, "y"'


@pytest.mark.parametrize(
    ("lines", "problem", "end"),
    [
        # The quote is never closed: read leniently, the rows after it become one row's scopes
        # (their tokens sent to Vital as someone's oauth_scopes), the file "succeeding" with 1 row.
        (
            b'u1,a1,r1,p1,1,"daily heartrate,oura\nu2,a2,r2,p2,2,,oura\nu3,a3,r3,p3,3,,oura\n',
            "unexpected end of data",
            4,
        ),
        # Closed lines later, mid-field: read as one row, it is rejected and the rows inside it
        # are lost.
        (
            b'u1,a1,r1,"p1,1,,oura\nu2,a2,r2,p2,2,,oura\nu3,a3,r3,p3,3,"x",oura\n',
            "',' expected after '\"'",
            4,
        ),
        # Closed lines later where a field ends: a row with the wrong number of fields...
        (b'u1,a1,r1,"p1,1,,oura\nu2,a2",r2,p2,2,,oura\n', "9 fields, not 7", 3),
    ],
    ids=["never-closed", "closed-mid-field", "wrong-width"],
)
def test_csv_a_quote_that_runs_over_rows_stops_the_file_at_its_line(
    lines: bytes, problem: str, end: int
) -> None:
    data = HEADER + b"u0,a0,r0,p0,0,,oura\n" + lines.replace(b"u1,", b"u1,", 1)
    got, message = read_until_malformed(data, Format.CSV)
    assert [(line, d and d["user_id"]) for line, d, _ in got] == [(2, "u0")]
    assert message == (
        f"CSV record starting at line 3 runs to line {end + 1} ({problem}): a quote opened on "
        "line 3 is not closed where its field ends; fix the quoting on line 3"
    )


def test_csv_a_line_break_in_a_connections_field_rejects_the_record_naming_its_lines() -> None:
    # The right number of fields, but a quote in provider_id closed on the next line, where a
    # field happened to end. Valid CSV (a writer quotes a bad value so): the row is rejected,
    # its reason naming the lines it took in, and the rest goes on.
    data = HEADER + b'u1,a1,r1,"p1\nu2",1,,oura\nu3,a3,r3,p3,3,,oura\n'
    assert [(line, d and d["user_id"], err) for line, d, err in read(data, Format.CSV)] == [
        (
            2,
            None,
            "provider_id: holds a line break (this record runs over lines 2-3: check its quoting)",
        ),
        (4, "u3", None),
    ]


def test_csv_a_stray_quote_within_one_line_rejects_that_row_and_reading_goes_on() -> None:
    data = HEADER + b'u1,a1,r1,p1,1,,oura\nu2,"a"2,r2,p2,2,,oura\nu3,a3,r3,p3,3,,oura\n'
    assert [(line, d and d["user_id"], err) for line, d, err in read(data, Format.CSV)] == [
        (2, "u1", None),
        (3, None, "not valid CSV: ',' expected after '\"'"),
        (4, "u3", None),
    ]


def test_csv_a_column_named_twice_is_a_malformed_file() -> None:
    # Each row would take whichever copy is not empty: one row the old token, one the new.
    header = b"user_id,Access_Token,refresh_token,provider_id,expires_at,provider,access_token \n"
    got, message = read_until_malformed(header + b"u1,A,r,p,1,oura,B\n", Format.CSV)
    assert got == []
    assert message == "CSV header (line 1) names column access_token more than once (columns 2, 7)"


def test_csv_wrong_field_count_is_an_error_record_and_reading_goes_on() -> None:
    data = HEADER + b"u1,a1,r1\r\nu2,a2,r2,p2,2,,oura,extra\r\nu3,a3,r3,p3,3,,oura\r\n"
    rows = read(data, Format.CSV)
    assert [(line, err) for line, _, err in rows] == [
        (2, "has 3 fields, the header has 7"),
        (3, "has 8 fields, the header has 7"),
        (4, None),
    ]
    assert rows[0][1] is None
    assert rows[1][1] is None


def test_csv_empty_cells_are_dropped_but_spaces_kept() -> None:
    data = HEADER + b"u1,a1,r1,p1,1,, \r\n,,,,,,\r\n"
    assert read(data, Format.CSV) == [
        (
            2,
            {
                "user_id": "u1",
                "access_token": "a1",
                "refresh_token": "r1",
                "provider_id": "p1",
                "expires_at": "1",
                "provider": " ",
            },
            None,
        ),
        (3, {}, None),
    ]


def test_csv_oauth_scopes_and_provider_columns_are_optional() -> None:
    data = b"user_id,access_token,refresh_token,provider_id,expires_at\nu,a,r,p,1\n"
    assert read(data, Format.CSV) == [
        (
            2,
            {
                "user_id": "u",
                "access_token": "a",
                "refresh_token": "r",
                "provider_id": "p",
                "expires_at": "1",
            },
            None,
        )
    ]


def test_csv_missing_required_columns_raise_malformed_file_naming_them() -> None:
    data = b"User_Id,access_token,provider\nu,a,oura\n"
    with pytest.raises(MalformedFile) as info:
        read(data, Format.CSV)
    assert str(info.value) == (
        "CSV header (line 1) is missing column(s) refresh_token, provider_id, expires_at; "
        "expected user_id, access_token, refresh_token, provider_id, expires_at, oauth_scopes, "
        "provider"
    )


@pytest.mark.parametrize("data", [b"", BOM, HEADER, BOM + HEADER + b"\r\n\r\n"])
def test_csv_empty_file_or_header_only_yields_nothing(data: bytes) -> None:
    assert read(data, Format.CSV) == []


def test_csv_blank_lines_are_skipped_with_physical_line_numbers() -> None:
    data = HEADER + b"\r\n\r\nu1,a,r,p,1,,oura\r\n\r\nu2,a,r,p,1,,oura"
    assert [(line, d and d["user_id"]) for line, d, _ in read(data, Format.CSV)] == [
        (4, "u1"),
        (6, "u2"),
    ]


def test_csv_invalid_utf8_is_a_malformed_file() -> None:
    data = HEADER + b"u1,a\xff,r,p,1,,oura\r\n"
    pattern = r"^not valid UTF-8( after line \d+)?; save the file as UTF-8$"
    with pytest.raises(MalformedFile, match=pattern):
        read(data, Format.CSV)


def test_csv_field_over_the_limit_rejects_its_row_without_content() -> None:
    # As an over-long JSONL line does, not failing the whole file.
    data = HEADER + b"u1," + SECRET.encode() * 200 + b",r,p,1,,oura\r\nu2,a,r,p,1,,oura\r\n"
    rows = read(data, Format.CSV, limit=1024)
    assert [(line, d and d["user_id"], err) for line, d, err in rows] == [
        (2, None, "line is longer than 1024 bytes"),
        (3, "u2", None),
    ]


@pytest.mark.parametrize("factor", [2, 5])
def test_csv_row_over_the_limit_is_rejected_and_the_rest_goes_on(factor: int) -> None:
    """Every field under MAX_ROW_BYTES, the row over it (2x), or over the record bound (5x)."""
    field = b"t" * 900
    long_row = b"u1," + b",".join([field] * factor) + b",p,1,,oura\r\n"
    data = HEADER + long_row + b"u2,a,r,p,1,,oura\r\n\r\nu3,a,r,p,1,,oura\r\n"
    rows = read(data, Format.CSV, limit=1024)
    assert [(line, d and d["user_id"], err) for line, d, err in rows] == [
        (2, None, "line is longer than 1024 bytes"),
        (3, "u2", None),
        (5, "u3", None),
    ]


@pytest.mark.parametrize("ending", [b"\n", b"\r\n"])
@pytest.mark.parametrize("length", [*range(96, 104), *range(396, 404), 1000])
def test_csv_long_row_near_each_bound_loses_no_row_and_no_line(length: int, ending: bytes) -> None:
    """Around MAX_ROW_BYTES (100: rejected past it) and the record bound (400: passed over
    unparsed), wherever a bounded read cuts the line, even between its '\r' and '\n'."""
    prefix = b"u1,a,r,p,1,,oura,"
    data = b"user_id,access_token,refresh_token,provider_id,expires_at,oauth_scopes,provider,x"
    data += ending + b"u0,a,r,p,1,,oura," + ending
    data += prefix + b"y" * (length - len(prefix)) + ending
    data += b"u2,a,r,p,1,,oura," + ending + b"u3,a,r,p,1,,oura," + ending
    records = read_csv(stream(data), 100, record_factor=4)
    rows = [(r.line, r.data, r.error) for r in records]
    long_row = (3, None, "line is longer than 100 bytes") if length > 100 else (3, "u1", None)
    assert [(line, d and d["user_id"], err) for line, d, err in rows] == [
        (2, "u0", None),
        long_row,
        (4, "u2", None),
        (5, "u3", None),
    ]


def test_csv_long_first_line_of_a_quoted_record_is_read_whole_and_rejected() -> None:
    """Its quote opens a field that runs over lines: skipping the line alone would lose it."""
    data = HEADER + b"u1," + b"a" * 99 + b',"r\nr",p,1,,oura\r\nu2,a,r,p,1,,oura\r\n'
    rows = read(data, Format.CSV, limit=100)
    assert [(line, d and d["user_id"], err) for line, d, err in rows] == [
        (2, None, "record on lines 2-3: line is longer than 100 bytes"),
        (4, "u2", None),
    ]


@pytest.mark.parametrize("ending", [b"\n", b"\r\n"])
def test_csv_field_over_the_limit_takes_the_lines_a_later_quote_on_its_line_opens(
    ending: bytes,
) -> None:
    """The reader gives up on a line at its long field and drops the rest of the line: a quote
    opened further on still takes its lines with it, or their text would be read as rows (here
    one that looks like a connection)."""
    quoted = b'"x' + ending + b"u9,a,r,p,1,,oura" + ending + b'y"'
    data = HEADER + b"u1," + b"a" * 150 + b",r,p,1," + quoted + b",oura" + ending
    data += b"u2,a,r,p,1,,oura" + ending
    rows = read(data, Format.CSV, limit=100)
    assert [(line, d and d["user_id"], err) for line, d, err in rows] == [
        (2, None, "record on lines 2-4: line is longer than 100 bytes"),
        (5, "u2", None),
    ]


def test_csv_field_over_the_limit_then_a_quote_that_never_closes_stops_the_file() -> None:
    data = HEADER + b"u1," + b"a" * 150 + b',r,p,1,"x\n' + b"z" * 9 + b"\n"
    # The file ends inside the quotes, as the reader reports of any record
    _, message = read_until_malformed(data, Format.CSV, limit=100)
    assert message.startswith("CSV record starting at line 2 runs to line 3 (unexpected end")
    data += (b"z" * 9 + b"\n") * 30 + b'",oura\nu2,a,r,p,1,,oura\n'
    # The quoted field passes 100 characters on line 12 ("x\n" on line 2, then 10 a line), as
    # the reader says of any quoted field that grows too long over lines
    _, message = read_until_malformed(data, Format.CSV, limit=100)
    assert message.startswith("CSV record starting at line 2 has a field that runs to line 12")


_H20 = b"user_id,access_token,refresh_token,provider_id,expires_at,oauth_scopes,provider\n"
_LONG = b"u1," + b"a" * 21  # a field over a limit of 20


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param(
            _LONG + b',r,p,1,x"y,o\nu2,a,r,p,1,,o\n',
            [(2, None, "line is longer than 20 bytes"), (3, "u2", None)],
            id="a quote inside an unquoted field opens nothing",
        ),
        pytest.param(
            _LONG + b',r,p,1,"x\ny",q"r\nu2,a,r,p,1,,o\n',
            [(2, None, "record on lines 2-3: line is longer than 20 bytes"), (4, "u2", None)],
            id="nor one after a quoted field closed",
        ),
        pytest.param(
            _LONG + b',r,p,1,"x\ny",' + b"o" * 19 + b"," + b"o" * 19 + b",ooo\nu2,a,r,p,1,,o\n",
            [(2, None, "record on lines 2-3: line is longer than 20 bytes"), (4, "u2", None)],
            id="a record of exactly 4x the limit is within the budget",
        ),
        pytest.param(
            b'u1,"x\ny",' + b"a" * 21 + b",p,1,,o\nu2,a,r,p,1,,o\n",
            [(2, None, "record on lines 2-3: line is longer than 20 bytes"), (4, "u2", None)],
            id="a long field on a later line of a record, on that line alone",
        ),
        pytest.param(
            b'u1,"x\ny","' + b"a" * 21 + b'",p,1,"z\nz",o\nu2,a,r,p,1,,o\n',
            [(2, None, "record on lines 2-4: line is longer than 20 bytes"), (5, "u2", None)],
            id="the same, quoted, and a quote after it opening the next line",
        ),
        pytest.param(
            b'u1,"x"y,"open\nu9,a,r,p,1,,o\nz",o\nu2,a,r,p,1,,o\n',
            [
                (2, None, "record on lines 2-4: not valid CSV: ',' expected after '\"'"),
                (5, "u2", None),
            ],
            id="an invalid record takes the lines its open quote runs over",
        ),
    ],
)
def test_csv_record_the_reader_gave_up_on_takes_exactly_its_lines(
    body: bytes, expected: list[tuple[int, str | None, str | None]]
) -> None:
    rows = read(_H20 + body, Format.CSV, limit=20)
    assert [(line, d and d["user_id"], err) for line, d, err in rows] == expected


@pytest.mark.parametrize(
    ("body", "message"),
    [
        pytest.param(
            b"u1," + b"a" * 81 + b',r,p,1,"x\nu9,a,r,p,1,,o\ny",o\nu2,a,r,p,1,,o\n',
            "CSV record starting at line 2 runs to line 3 (longer than 80 characters",
            id="a line over 4x the limit that leaves a quote open",
        ),
        pytest.param(
            b'u1,"' + b"a" * 21 + b'\nb",r,p,1,,o\nu2,a,r,p,1,,o\n',
            "CSV record starting at line 2 has a field that runs to line 3 and is longer",
            id="a quoted field over the limit on its first line that runs on",
        ),
        pytest.param(
            _LONG + b',r,p,1,"x\nq"zz,o\nu2,a,r,p,1,,o\n',
            "CSV record starting at line 2 runs to line 3 (',' expected after '\"')",
            id="a quote closed mid-field on a later line",
        ),
    ],
)
def test_csv_record_the_reader_gave_up_on_stops_the_file_as_the_reader_would(
    body: bytes, message: str
) -> None:
    _, got = read_until_malformed(_H20 + body, Format.CSV, limit=20)
    assert got.startswith(message)


def test_csv_header_longer_than_a_row_may_be_is_read() -> None:
    names = b"user_id,access_token,refresh_token,provider_id,expires_at,provider"
    header = names + b"," + b",".join(b"extra_column_%d" % i for i in range(8))
    rows = read(header + b"\nu1,a,r,p,1,oura" + b"," * 8 + b"\n", Format.CSV, limit=100)
    assert len(header) > 100
    assert [(line, d and d["user_id"], err) for line, d, err in rows] == [(2, "u1", None)]


def test_csv_quoted_field_over_the_limit_across_lines_names_both_causes() -> None:
    data = HEADER + b'u1,"' + b"a" * 60 + b"\n" + b"b" * 60 + b'",r,p,1,,oura\nu2,a,r,p,1,,oura\n'
    _, message = read_until_malformed(data, Format.CSV, limit=100)
    assert message.startswith("CSV record starting at line 2 has a field that runs to line 3")
    assert "not closed where its field ends, or the field is that long" in message


def test_csv_record_over_several_short_lines_and_over_the_limit_is_rejected() -> None:
    notes = b'"' + b"a note\n" * 100 + b'"'  # 700 characters in each extra column: valid CSV
    data = b"user_id,access_token,refresh_token,provider_id,expires_at,notes,more\n"
    data += b"u1,a,r,p,1," + notes + b"," + notes + b"\nu2,a,r,p,1,,\n"
    rows = read(data, Format.CSV, limit=1024)
    assert [(line, d and d["user_id"], err) for line, d, err in rows] == [
        (2, None, "record on lines 2-202: line is longer than 1024 bytes"),
        (203, "u2", None),
    ]


def test_csv_a_record_over_the_record_limit_stops_the_file_naming_where_it_started() -> None:
    # Fields under the limit, each over many lines: the record as a whole is bounded too.
    field = b'"' + b"x\n" * 400 + b'"'
    data = HEADER + b"u0,a,r,p,1,,oura\r\n" + b",".join([field] * 7) + b"\n"
    got, message = read_until_malformed(data, Format.CSV, limit=1024)
    assert [line for line, _, _ in got] == [2]
    assert message.startswith("CSV record starting at line 3 runs to line ")
    assert "(longer than 4096 characters (4 x MAX_ROW_BYTES))" in message


def test_csv_record_bound_is_record_factor_times_the_limit() -> None:
    """Given ``record_factor`` 2, when a record grows past 2 x the limit over its lines, then the
    file stops there and says so: the record bound the other tests set is the one applied."""
    field = b'"' + b"x\n" * 40 + b'"'  # 82 characters: each field under the limit of 100
    data = HEADER + b"u0,a,r,p,1,,oura\r\n" + b",".join([field] * 3) + b"\n"
    got, message = records_until_malformed(read_csv(stream(data), 100, record_factor=2))
    assert [line for line, _, _ in got] == [2]
    assert message.startswith("CSV record starting at line 3 runs to line ")
    assert "(longer than 200 characters (2 x MAX_ROW_BYTES))" in message


def test_csv_does_not_close_the_underlying_stream() -> None:
    s = stream(HEADER + b"u,a,r,p,1,,oura\r\n")
    assert len(list(read_records(s, Format.CSV, BIG))) == 1
    assert not s.closed


# --- JSON array -------------------------------------------------------------------------------


@pytest.mark.parametrize("data", [b"[]", b"  [ \n ]  \n", BOM + b"[]", b"\n[\r\n]"])
def test_json_empty_array_yields_nothing(data: bytes) -> None:
    assert read(data, Format.JSON) == []


def test_json_pretty_printed_array_uses_element_index_as_line() -> None:
    rows = [{"user_id": f"u{i}", "n": i, "scopes": ["a", "b"], "x": None} for i in range(5)]
    data = json.dumps(rows, indent=2).encode()
    assert read(data, Format.JSON) == [(i + 1, row, None) for i, row in enumerate(rows)]


def test_json_bom_is_accepted() -> None:
    assert read(BOM + b'[{"a":1}]', Format.JSON) == [(1, {"a": 1}, None)]


def test_json_non_object_elements_are_error_records() -> None:
    data = b'[{"a":1}, [1], "' + SECRET.encode() + b'", 7, null, false, {"b":2}]'
    assert read(data, Format.JSON) == [
        (1, {"a": 1}, None),
        (2, None, "expected a JSON object, got an array"),
        (3, None, "expected a JSON object, got a string"),
        (4, None, "expected a JSON object, got a number"),
        (5, None, "expected a JSON object, got null"),
        (6, None, "expected a JSON object, got a boolean"),
        (7, {"b": 2}, None),
    ]


def test_json_trailing_garbage_is_malformed_after_the_elements() -> None:
    got, message = read_until_malformed(b'[{"a":1}] {"b":2}', Format.JSON)
    assert got == [(1, {"a": 1}, None)]
    assert message == "unexpected content after the closing ']' of the JSON array"


@pytest.mark.parametrize("data", [b'{"a":1}', b"", b"   \n", b'"[1]"', b"null"])
def test_json_not_an_array_is_malformed(data: bytes) -> None:
    got, message = read_until_malformed(data, Format.JSON)
    assert got == []
    assert message == "a .json file must hold one JSON array of objects, '[{...}, ...]'"


def test_json_broken_element_midway_is_malformed_after_earlier_elements() -> None:
    data = b'[{"a":1},\n{"b":2},\n{"access_token": "' + SECRET.encode() + b'" "c"},\n{"d":4}]'
    got, message = read_until_malformed(data, Format.JSON)
    assert got == [(1, {"a": 1}, None), (2, {"b": 2}, None)]
    assert message == "invalid JSON in element 3: Expecting ',' delimiter"
    assert SECRET not in message


def test_json_missing_separator_is_malformed() -> None:
    got, message = read_until_malformed(b'[{"a":1} {"b":2}]', Format.JSON)
    assert got == [(1, {"a": 1}, None)]
    assert message == "invalid JSON after element 1: expected ',' or ']', found '{'"


def test_json_unterminated_array_is_malformed() -> None:
    got, message = read_until_malformed(b'[{"a":1}, {"b":2}', Format.JSON)
    assert got == [(1, {"a": 1}, None), (2, {"b": 2}, None)]
    assert message == "invalid JSON after element 2: expected ',' or ']', found the end of the file"


def test_json_trailing_comma_is_malformed() -> None:
    got, message = read_until_malformed(b'[{"a":1},]', Format.JSON)
    assert got == [(1, {"a": 1}, None)]
    assert message.startswith("invalid JSON in element 2: ")


def test_json_invalid_utf8_is_malformed() -> None:
    _, message = read_until_malformed(b'[{"a":"\xff"}]', Format.JSON)
    assert message == "not valid UTF-8; save the file as UTF-8"


def test_json_elements_larger_than_the_read_window() -> None:
    size = 600 * 1024  # each element spans more than two 256 KiB windows
    rows = [{"i": i, "blob": chr(ord("a") + i) * size} for i in range(3)]
    data = json.dumps(rows).encode()
    got = read(data, Format.JSON, limit=2 * size)
    assert [(line, d and d["i"], err) for line, d, err in got] == [
        (1, 0, None),
        (2, 1, None),
        (3, 2, None),
    ]
    assert got == [(i + 1, row, None) for i, row in enumerate(rows)]


def test_json_multibyte_characters_across_window_edges() -> None:
    rows = [{"name": "Zoë😀" * 7, "i": i} for i in range(4)]
    data = json.dumps(rows, ensure_ascii=False).encode()
    for window in range(1, 12):
        assert read_json(data, window) == [(i + 1, r, None) for i, r in enumerate(rows)]


@pytest.mark.parametrize("window", range(1, 14))
def test_json_integers_and_literals_split_at_window_edges(window: int) -> None:
    data = b'[123456789, {"n": 98765432101}, -4200, true, null, false, {"z": -1}, 7]'
    rows = read_json(data, window)
    assert rows == [
        (1, None, "expected a JSON object, got a number"),
        (2, {"n": 98765432101}, None),
        (3, None, "expected a JSON object, got a number"),
        (4, None, "expected a JSON object, got a boolean"),
        (5, None, "expected a JSON object, got null"),
        (6, None, "expected a JSON object, got a boolean"),
        (7, {"z": -1}, None),
        (8, None, "expected a JSON object, got a number"),
    ]


@pytest.mark.parametrize("window", range(1, 14))
def test_json_objects_with_floats_split_at_window_edges(window: int) -> None:
    data = b'[{"f": 1.25e-3, "g": -0.5}, {"h": 6E3}]'
    assert read_json(data, window) == [
        (1, {"f": 0.00125, "g": -0.5}, None),
        (2, {"h": 6000.0}, None),
    ]


def test_json_top_level_floats_split_at_window_edges() -> None:
    # e.g. window 3: '[1.' | '5, ' -> 1 is decoded and '.' taken as the separator
    data = b'[1.5, 12e3, {"a": 1}]'
    for window in range(1, 14):
        rows = read_json(data, window)
        assert rows == [
            (1, None, "expected a JSON object, got a number"),
            (2, None, "expected a JSON object, got a number"),
            (3, {"a": 1}, None),
        ], f"window {window}"


def test_json_broken_small_element_followed_by_much_data_is_reported_as_invalid() -> None:
    tail = b",".join(b'{"ok":%d}' % i for i in range(400))  # ~4 KB of valid elements
    data = b'[{"a":1}, {"b":2,,}, ' + tail + b"]"
    got, message = read_until_malformed(data, Format.JSON, limit=1024)
    assert got == [(1, {"a": 1}, None)]
    assert message.startswith("invalid JSON in element 2: ")


TOO_LARGE = "element is larger than 1024 bytes"


@pytest.mark.parametrize("window", [7, 64, 4096, 256 * 1024])
@pytest.mark.parametrize(
    "element",
    [
        b'{"blob":"' + b"x" * 5000 + b'"}',
        # Brackets, braces, commas and escaped quotes inside strings do not end it early.
        b'{"a":"]},[{\\"' + b"y" * 3000 + b'\\"","b":[1,{"c":"}"}],"d":"\\\\"}',
        b'["' + b"z" * 3000 + b'", {"e": [[[]]]}]',
        b'"' + b"s" * 3000 + b'"',
        b"1." + b"0" * 3000,
    ],
    ids=["object", "tricky-strings", "array", "string", "number"],
)
def test_json_element_over_the_limit_is_rejected_and_the_rest_goes_on(
    window: int, element: bytes
) -> None:
    data = b'[{"a":1}, ' + element + b' ,{"b":2}, {"c":3}]'
    rows = read_json(data, window, limit=1024)
    assert rows == [
        (1, {"a": 1}, None),
        (2, None, TOO_LARGE),
        (3, {"b": 2}, None),
        (4, {"c": 3}, None),
    ]


def test_json_element_over_the_limit_that_never_ends_is_a_malformed_file() -> None:
    data = b'[{"a":1}, {"blob":"' + b"x" * 5000
    got, message = records_until_malformed(read_json_array(stream(data), 1024, read_size=64))
    assert got == [(1, {"a": 1}, None)]
    assert message == "invalid JSON in element 2: the file ends inside it"


def test_json_element_over_the_limit_is_passed_over_one_window_at_a_time() -> None:
    # A gzip of '[1.' and gigabytes of zeros must not be buffered whole (nor re-parsed at
    # each read): past the limit the element is scanned, not decoded.
    data = b'[{"a":1}, 1.' + b"0" * (4 * 1024 * 1024) + b', {"b":2}]'
    windows: list[MeasuredWindow] = []
    records = read_json_array(stream(data), 10_000, window=MeasuredWindow.into(windows))
    rows = [(r.line, r.data, r.error) for r in records]
    assert rows == [
        (1, {"a": 1}, None),
        (2, None, "element is larger than 10000 bytes"),
        (3, {"b": 2}, None),
    ]
    [window] = windows
    assert 0 < window.largest < 10_000 + 2 * READ_SIZE


DEPTH = 100_000


@pytest.mark.parametrize("window", [64, READ_SIZE])
@pytest.mark.parametrize(
    ("element", "reason"),
    [
        (b"[" * DEPTH + b"]" * DEPTH, "element is nested too deeply"),
        (b'{"a":' * DEPTH + b"1" + b"}" * DEPTH, "element is nested too deeply"),
        # Inside an object, strings with brackets: the scanner still finds its end.
        (
            b'{"s":"]}", "x":' + b"[" * DEPTH + b'"[{"' + b"]" * DEPTH + b"}",
            "element is nested too deeply",
        ),
        (b'{"n":' + b"9" * 5000 + b"}", "invalid JSON: a number has too many digits"),
        (b"9" * 5000, "invalid JSON: a number has too many digits"),
    ],
    ids=["arrays", "objects", "with-strings", "digits-in-object", "bare-digits"],
)
def test_json_element_that_cannot_be_decoded_is_rejected_and_the_rest_goes_on(
    window: int, element: bytes, reason: str
) -> None:
    # Within the size limit, but too deep for json's recursion or with a number over Python's
    # int limit: the element is passed over unbuilt, and only it is rejected.
    data = b'[{"a":1}, ' + element + b' ,{"b":2}, {"c":3}]'
    rows = read_json(data, window, limit=10 * DEPTH)
    assert rows == [
        (1, {"a": 1}, None),
        (2, None, reason),
        (3, {"b": 2}, None),
        (4, {"c": 3}, None),
    ]


def test_json_deeply_nested_element_the_file_ends_inside_is_a_malformed_file() -> None:
    data = b'[{"a":1}, ' + b"[" * DEPTH
    got, message = records_until_malformed(
        read_json_array(stream(data), 10 * DEPTH, read_size=1024)
    )
    assert got == [(1, {"a": 1}, None)]
    assert message == "invalid JSON in element 2: the file ends inside it"


def test_json_deeply_nested_element_followed_by_broken_text_is_a_malformed_file() -> None:
    data = b'[{"a":1}, ' + b"[" * DEPTH + b"]" * DEPTH + b' {"b":2}]'
    got, message = records_until_malformed(read_json_array(stream(data), 10 * DEPTH))
    assert got == [(1, {"a": 1}, None), (2, None, "element is nested too deeply")]
    assert message == "invalid JSON after element 2: expected ',' or ']', found '{'"


def test_json_window_reads_read_size_characters_at_a_time() -> None:
    """Given ``read_size`` 5, when an array is read, then each read takes 5 characters: the
    window-edge tests above cut the text where they mean to."""
    data = b'[{"a": 1}, {"b": 2}, 3]'  # 23 characters: 5 reads of 5, the last one of 3
    windows: list[MeasuredWindow] = []
    records = read_json_array(stream(data), BIG, read_size=5, window=MeasuredWindow.into(windows))
    assert len(list(records)) == 3
    [window] = windows
    assert window.reads == 5


class MeasuredWindow(TextWindow):
    """A ``TextWindow`` that notes the most text it ever held and how many reads added to it."""

    def __init__(self, text: io.TextIOWrapper, read_size: int) -> None:
        super().__init__(text, read_size)
        self.largest = 0
        self.reads = 0

    @classmethod
    def into(cls, windows: list[MeasuredWindow]) -> WindowFactory:
        """A window factory that keeps each window it makes in ``windows``."""

        def make(text: io.TextIOWrapper, read_size: int) -> MeasuredWindow:
            windows.append(cls(text, read_size))
            return windows[-1]

        return make

    def fill(self) -> bool:
        filled = super().fill()
        self.largest = max(self.largest, self.buffered)
        self.reads += filled
        return filled


def test_json_array_stream_is_not_closed() -> None:
    s = stream(b'[{"a":1}]')
    assert len(list(read_records(s, Format.JSON, BIG))) == 1
    assert not s.closed


@pytest.mark.parametrize(
    ("fmt", "data"),
    [
        (Format.JSON, b"[" + b",".join(b'{"a":%d}' % i for i in range(200)) + b"]"),
        (
            Format.CSV,
            b"user_id,access_token,refresh_token,provider_id,expires_at\n"
            + b"".join(b"u%d,a,r,p,1\n" % i for i in range(200)),
        ),
    ],
)
def test_a_reader_dropped_after_its_stream_closed_raises_nothing_later(
    fmt: Format, data: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A deadline leaves the reader mid-file; the stream closes first, the reader is collected
    # later: its clean-up must not print "Exception ignored" into the function's logs.
    unraisable: list[Any] = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    source = stream(data)
    with source:
        records = read_records(source, fmt, BIG)
        next(records)
    del records
    gc.collect()
    assert unraisable == []


def test_csv_a_header_whose_quote_runs_over_lines_stops_the_file() -> None:
    # A quote left open in the header would take the next row, tokens and all, as a name
    data = (
        b'provider,user_id,access_token,refresh_token,provider_id,"expires_at\n'
        b'oura,x,tok-a",oauth_scopes\noura,x,tok-b,tok-r,p,1,\n'
    )
    message = read_until_malformed(data, Format.CSV)[1]
    assert message.startswith("CSV header runs over lines 1-")
    assert "tok-" not in message
