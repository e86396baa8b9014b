"""Property-based tests: readers round-trip, chunking invariants, count bookkeeping."""

from __future__ import annotations

import csv
import io
import itertools
import json
import re
from collections import defaultdict
from typing import Any

from hypothesis import assume, event, example, given, settings
from hypothesis import strategies as st

from bulk_import.ingest import read_records
from bulk_import.ingest.chunking import (
    Chunk,
    Chunker,
    PendingRow,
    RowOutcome,
    body_overhead,
    serialise,
)
from bulk_import.ingest.csv_quoting import Quoting
from bulk_import.ingest.csv_reader import read_csv
from bulk_import.ingest.file_type import Format
from bulk_import.ingest.json_array import read_json_array
from bulk_import.ingest.jsonl import WIDE_BOMS, jsonl_blocks
from bulk_import.ingest.record import CsvPlace
from bulk_import.ingest.validation import context_for, validate_json_row
from bulk_import.ingest.validation import validate_well_formed as validate_block
from bulk_import.model import OAUTH1_EXPIRES_AT, OAUTH1_PROVIDERS, ROW_FIELDS, Counts, Outcome
from bulk_import.model import PROVIDERS as KNOWN_PROVIDERS
from bulk_import.run.tally import Tally

FAST = settings(max_examples=60, deadline=None)
BIG = 10_000_000


def stream(data: bytes) -> io.BufferedReader:
    return io.BufferedReader(io.BytesIO(data))


def read(data: bytes, fmt: Format) -> list[tuple[int, dict[str, Any] | None, str | None]]:
    return [(r.line, r.data, r.error) for r in read_records(stream(data), fmt, BIG)]


def read_json(data: bytes, read_size: int) -> list[tuple[int, dict[str, Any] | None, str | None]]:
    """``read`` of a JSON array whose window takes ``read_size`` characters at a time."""
    records = read_json_array(stream(data), BIG, read_size=read_size)
    return [(r.line, r.data, r.error) for r in records]


# --- readers round-trip -----------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
json_rows = st.lists(st.dictionaries(st.text(max_size=8), json_values, max_size=5), max_size=8)


@FAST
@given(
    rows=json_rows,
    blanks=st.lists(st.integers(min_value=0, max_value=2), min_size=9, max_size=9),
    ascii_only=st.booleans(),
    bom=st.booleans(),
    crlf=st.booleans(),
)
def test_jsonl_round_trip(
    rows: list[dict[str, Any]], blanks: list[int], ascii_only: bool, bom: bool, crlf: bool
) -> None:
    newline = "\r\n" if crlf else "\n"
    lines: list[str] = []
    expected = []
    for row, blank in zip(rows, blanks, strict=False):
        lines.extend([""] * blank)
        lines.append(json.dumps(row, ensure_ascii=ascii_only))
        expected.append((len(lines), row, None))
    lines.extend([""] * blanks[-1])
    data = (b"\xef\xbb\xbf" if bom else b"") + newline.join(lines).encode()
    assert read(data, Format.JSONL) == expected


@FAST
@given(
    rows=json_rows,
    window=st.integers(min_value=1, max_value=40),
    indent=st.sampled_from([None, 0, 2]),
    ascii_only=st.booleans(),
)
def test_json_array_round_trip_with_tiny_read_windows(
    rows: list[dict[str, Any]], window: int, indent: int | None, ascii_only: bool
) -> None:
    data = json.dumps(rows, indent=indent, ensure_ascii=ascii_only).encode()
    got = read_json(data, window)
    assert got == [(i + 1, row, None) for i, row in enumerate(rows)]


def test_json_array_round_trip_with_read_size_7() -> None:
    rows = [
        {"user_id": f"u{i}", "expires_at": 1_700_000_000 + i, "s": ["a", "b"]} for i in range(50)
    ]
    assert read_json(json.dumps(rows).encode(), 7) == [
        (i + 1, row, None) for i, row in enumerate(rows)
    ]


# Cell text: anything CSV must quote, including line breaks, plus non-ASCII.
csv_text = st.text(
    alphabet=st.sampled_from([*"ab Z,\"'\r\n\t;=é😀", "\u2028"]),
    max_size=10,
)
csv_rows = st.lists(st.fixed_dictionaries(dict.fromkeys(ROW_FIELDS, csv_text)), max_size=8)
_NEWLINES = re.compile(r"\r\n|\r|\n")


@FAST
@given(rows=csv_rows, crlf=st.booleans(), bom=st.booleans())
def test_csv_round_trip_with_physical_line_numbers(
    rows: list[dict[str, str]], crlf: bool, bom: bool
) -> None:
    out = io.StringIO(newline="")
    writer = csv.writer(out, lineterminator="\r\n" if crlf else "\n")
    writer.writerow(ROW_FIELDS)
    expected = []
    for row in rows:
        line = len(_NEWLINES.findall(out.getvalue())) + 1
        writer.writerow([row[f] for f in ROW_FIELDS])
        broken = [f for f in ROW_FIELDS if _NEWLINES.search(row[f])]
        if broken:  # no field of a connection holds a line break: the record is rejected
            end = len(_NEWLINES.findall(out.getvalue()))
            reason = (
                f"{broken[0]}: holds a line break (this record runs over lines {line}-{end}: "
                "check its quoting)"
            )
            expected.append((line, None, reason))
            continue
        expected.append((line, {k: v for k, v in row.items() if v != ""}, None))
    data = (b"\xef\xbb\xbf" if bom else b"") + out.getvalue().encode()
    got = read(data, Format.CSV)
    # A record that is one empty-looking cell per column is still a record (all cells dropped).
    assert got == expected
    # And from where any record starts (as a resume point stores it), the records from there
    places = []
    place = CsvPlace()
    for record in read_csv(io.BufferedReader(io.BytesIO(data)), BIG, place=place):
        places.append((record.line, place.offset, place.clean))
    for line, offset, clean in places:
        assert clean
        resumed = read_csv(
            io.BufferedReader(io.BytesIO(data[offset:])),
            BIG,
            place=CsvPlace(offset, list(place.names or [])),
            first_line=line,
        )
        assert [(r.line, r.data, r.error) for r in resumed] == [e for e in expected if e[0] >= line]


# --- chunking ---------------------------------------------------------------------------------

PROVIDERS = ["oura", "garmin", "whoop_v2"]


def _payload(line: int, pad: int) -> bytes:
    return json.dumps({"line": line, "pad": "x" * pad}, separators=(",", ":")).encode()


@settings(max_examples=150, deadline=None)
@given(
    rows=st.lists(
        st.tuples(st.sampled_from(PROVIDERS), st.integers(min_value=0, max_value=120)),
        max_size=60,
    ),
    max_rows=st.integers(min_value=1, max_value=12),
    extra_bytes=st.integers(min_value=-20, max_value=700),
)
def test_chunker_invariants(rows: list[tuple[str, int]], max_rows: int, extra_bytes: int) -> None:
    max_bytes = body_overhead("whoop_v2") + extra_bytes
    chunker = Chunker(max_rows, max_bytes)
    emitted: list[Chunk] = []
    by_provider: dict[str, list[int]] = defaultdict(list)
    for line, (provider, pad) in enumerate(rows, start=1):
        by_provider[provider].append(line)
        closed = chunker.add(provider, PendingRow(line, f"user-{line}", _payload(line, pad)))
        assert all(c.provider == provider for c in closed)
        emitted.extend(closed)
        assert chunker.pending_rows() == line - sum(len(c.rows) for c in emitted)
    emitted.extend(chunker.flush())
    assert chunker.pending_rows() == 0
    assert chunker.flush() == []

    # Every row lands in exactly one chunk.
    lines = sorted(r.line for c in emitted for r in c.rows)
    assert lines == list(range(1, len(rows) + 1))

    # Order is preserved per provider, across chunks in the order they were emitted.
    seen: dict[str, list[int]] = defaultdict(list)
    for chunk in emitted:
        assert chunk.rows, "no empty chunks"
        seen[chunk.provider].extend(r.line for r in chunk.rows)
    assert seen == by_provider

    for chunk in emitted:
        assert 1 <= len(chunk.rows) <= max_rows
        size = chunk.size_bytes()
        assert size <= max_bytes or len(chunk.rows) == 1
        body = chunk.body(True)
        # The bound counts the longer (wait_for_completion false) body: both fit.
        assert size == len(chunk.body(False)) == len(body) + 1
        assert chunk.size_bytes(wait_for_completion=True) == len(body)
        assert chunk.payload_bytes == sum(len(r.payload) for r in chunk.rows)
        parsed = json.loads(body)
        assert parsed["provider"] == chunk.provider
        assert parsed["wait_for_completion"] is True
        assert [c["line"] for c in parsed["connections"]] == [r.line for r in chunk.rows]
        assert json.loads(chunk.body(False))["wait_for_completion"] is False
        assert (chunk.first_line, chunk.last_line) == (chunk.rows[0].line, chunk.rows[-1].line)


def _third_row_closes(chunker: Chunker, payload: bytes) -> Chunk:
    """Three rows into ``chunker``: the first two fit, the third closes a chunk of them."""
    assert not chunker.add("oura", PendingRow(1, "u1", payload))
    assert not chunker.add("oura", PendingRow(2, "u2", payload))
    [closed] = chunker.add("oura", PendingRow(3, "u3", payload))
    assert [r.line for r in closed.rows] == [1, 2]
    return closed


def test_chunker_closes_on_rows_then_on_bytes() -> None:
    p = _payload(1, 10)
    chunker = Chunker(max_rows=2, max_bytes=10_000)
    assert not chunker.add("oura", PendingRow(1, "u1", p))
    [full] = chunker.add("oura", PendingRow(2, "u2", p))
    assert [r.line for r in full.rows] == [1, 2]
    # Bytes: room for exactly two payloads and one comma.
    exact = body_overhead("oura") + 2 * len(p) + 1
    chunker = Chunker(max_rows=100, max_bytes=exact)
    assert _third_row_closes(chunker, p).size_bytes() == exact
    [rest] = chunker.flush()
    assert [r.line for r in rest.rows] == [3]
    assert chunker.fits_alone("oura", p)
    assert not chunker.fits_alone("oura", b"x" * exact)
    # The commas count: room for three payloads but only one comma holds two rows, not three.
    short_of_commas = body_overhead("oura") + 3 * len(p) + 1
    closed = _third_row_closes(Chunker(max_rows=100, max_bytes=short_of_commas), p)
    assert len(closed.body(False)) <= short_of_commas


def test_fits_any_is_the_largest_payload_every_known_provider_takes_alone() -> None:
    # The pipeline asks fits_alone only for payloads over fits_any: that must skip no refusal.
    chunker = Chunker(max_rows=10, max_bytes=10_000)
    edge = b"x" * chunker.fits_any
    assert all(chunker.fits_alone(provider, edge) for provider in KNOWN_PROVIDERS)
    assert not all(chunker.fits_alone(provider, edge + b"x") for provider in KNOWN_PROVIDERS)


def test_chunk_body_exact_bytes() -> None:
    chunk = Chunk("oura")
    chunk = chunk.subset([PendingRow(1, "u1", b'{"a":1}'), PendingRow(2, "u2", b'{"b":2}')])
    assert chunk.body(True) == (
        b'{"provider":"oura","connections":[{"a":1},{"b":2}],"wait_for_completion":true}'
    )
    assert chunk.body(False) == (
        b'{"provider":"oura","connections":[{"a":1},{"b":2}],"wait_for_completion":false}'
    )
    assert chunk.payload_bytes == 14
    one = chunk.subset(chunk.rows[:1])
    assert one.body(True) == (
        b'{"provider":"oura","connections":[{"a":1}],"wait_for_completion":true}'
    )
    assert Chunk("oura").body(False) == (
        b'{"provider":"oura","connections":[],"wait_for_completion":false}'
    )


def test_chunk_body_never_exceeds_max_bytes_without_wait_for_completion() -> None:
    p = _payload(1, 30)
    max_bytes = body_overhead("oura") + 2 * len(p) + 1
    chunker = Chunker(max_rows=100, max_bytes=max_bytes)
    chunker.add("oura", PendingRow(1, "u1", p))
    chunker.add("oura", PendingRow(2, "u2", p))
    [chunk] = chunker.flush()
    assert len(chunk.rows) == 2
    assert len(chunk.body(False)) <= max_bytes


# --- counts -----------------------------------------------------------------------------------

outcomes = st.lists(
    st.tuples(st.sampled_from(list(Outcome)), st.integers(min_value=0, max_value=5)), max_size=40
)


def _tally(items: list[tuple[Outcome, int]], provider: str = "oura") -> Tally:
    tally = Tally()
    for outcome, n in items:
        tally.add([RowOutcome(1, "", provider, outcome, "")] * n)
    return tally


def _balanced(counts: Counts) -> bool:
    return counts.rows == sum(v for k, v in counts.model_dump().items() if k != "rows")


@FAST
@given(a=outcomes, b=outcomes)
def test_tally_counts_add_up_per_outcome_and_provider(
    a: list[tuple[Outcome, int]], b: list[tuple[Outcome, int]]
) -> None:
    tally = _tally(a)
    tally.add(
        [
            RowOutcome(1, "", provider, outcome, "")
            for provider, items in (("fitbit", b), ("", b))
            for outcome, n in items
            for _ in range(n)
        ]
    )
    counts = tally.counts()
    assert _balanced(counts)
    assert counts.rows == sum(n for _, n in a) + 2 * sum(n for _, n in b)
    field = {
        Outcome.IMPORTED: "imported",
        Outcome.FAILED: "failed",
        Outcome.ENQUEUED: "enqueued",
        Outcome.REJECTED: "rejected",
        Outcome.DUPLICATE: "duplicates",
        Outcome.ERRORED: "errored",
    }
    providers = tally.providers()
    assert "" not in providers  # rows without a provider count in the totals only
    for outcome, name in field.items():
        in_a = sum(n for o, n in a if o is outcome)
        in_b = sum(n for o, n in b if o is outcome)
        assert tally[outcome] == getattr(counts, name) == in_a + 2 * in_b
        assert getattr(providers.get("oura", Counts()), name) == in_a
        assert getattr(providers.get("fitbit", Counts()), name) == in_b
    restored = Tally.restore(counts, providers)
    assert restored.counts() == counts
    assert restored.providers() == providers


@FAST
@given(items=outcomes, provider=st.sampled_from(["oura", "fitbit", ""]))
def test_a_shared_outcome_counts_as_that_many_rows(
    items: list[tuple[Outcome, int]], provider: str
) -> None:
    each, same = _tally(items, provider), Tally()
    for outcome, n in items:
        same.add_same(provider, outcome, n)
    assert (same.counts(), same.providers()) == (each.counts(), each.providers())


def test_unbalanced_counts_are_detected() -> None:
    assert not _balanced(Counts(rows=2, imported=1))
    assert _balanced(Counts(rows=2, imported=1, duplicates=1))


# --- the well-formed fast path agrees with the full model ---------------------------------------

_uuids = st.uuids().map(str)
_texts = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=0, max_size=6
) | st.sampled_from(["", " ", "tok", " tok ", "\t", "a\u00a0", "\u2028x"])
_field_values: dict[str, st.SearchStrategy[Any]] = {
    "provider": st.sampled_from(
        [*sorted(KNOWN_PROVIDERS), "OURA", " oura ", "Fitbit", "", "myspace"]
    )
    | st.none(),
    "user_id": _uuids
    | _uuids.map(str.upper)
    | _uuids.map(lambda u: f" {u} ")
    | _uuids.map(lambda u: u.replace("-", ""))
    | _uuids.map(lambda u: "{" + u + "}")
    | _texts,
    "access_token": _texts,
    "refresh_token": _texts,
    "provider_id": _texts | st.integers(-5, 2**65) | st.floats(allow_nan=False),
    "expires_at": st.integers(-5, 2**64)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.booleans()
    | st.integers(0, 2**40).map(str)
    | st.sampled_from(
        [f"{OAUTH1_EXPIRES_AT}", f" {OAUTH1_EXPIRES_AT} ", float(OAUTH1_EXPIRES_AT), ""]
    )
    | st.none(),
    "oauth_scopes": st.none() | st.lists(_texts, max_size=3) | _texts | st.integers(),
}
# Garmin (OAuth 1.0) rows half the time, the constant expiry half the time: Garmin rows with the
# constant, with another value and (a missing field, below) with none.
_canonical: dict[str, st.SearchStrategy[Any]] = {
    "provider": st.sampled_from(sorted(KNOWN_PROVIDERS))
    | st.sampled_from(sorted(OAUTH1_PROVIDERS)),
    "user_id": _uuids,
    "access_token": st.text(min_size=1, max_size=8),
    "refresh_token": st.text(min_size=1, max_size=8),
    "provider_id": st.text(min_size=1, max_size=8),
    "expires_at": st.integers(0, 2**63 - 1) | st.just(OAUTH1_EXPIRES_AT),
    "oauth_scopes": st.lists(st.text(min_size=1, max_size=5), max_size=3) | st.none(),
}


@st.composite
def _rows(draw: st.DrawFn) -> dict[str, Any]:
    """Mostly canonical rows, each field now and then odd, missing or replaced by a variant."""
    row: dict[str, Any] = {}
    for name, canonical in _canonical.items():
        kind = draw(st.sampled_from(["canonical"] * 6 + ["variant", "missing"]))
        if kind != "missing":
            row[name] = draw(canonical if kind == "canonical" else _field_values[name])
    if draw(st.booleans()):
        row["extra"] = draw(json_values)
    order = draw(st.permutations(list(row)))  # the recipe's field order must not depend on it
    return {name: row[name] for name in order}


def validate_well_formed(raw: bytes) -> tuple[str | None, dict[str, Any]] | None:
    """One line through the hot path's block validator: (its own provider, its recipe)."""
    (row,) = validate_block([raw])
    if row is None:
        return None
    recipe = dict(row)
    return recipe.pop("provider", None), recipe


def fast_path_takes(provider: str, recipe: dict[str, Any]) -> bool:
    """The hot loop's one check past the block validator (``Intake._take_jsonl``): an OAuth 1.0
    row whose expiry is not the constant goes to the full model."""
    return provider not in OAUTH1_PROVIDERS or recipe["expires_at"] == OAUTH1_EXPIRES_AT


@settings(max_examples=400, deadline=None)
@given(row=_rows(), default=st.sampled_from([None, "garmin"]), indent=st.sampled_from([None, 1]))
def test_well_formed_rows_validate_as_the_full_model_does(
    row: dict[str, Any], default: str | None, indent: int | None
) -> None:
    raw = json.dumps(row, indent=indent).encode()
    fast = validate_well_formed(raw)
    full = validate_json_row(raw, context_for(default))
    if fast is None:
        event("full model only")
        return  # the full model decides alone
    own_provider, recipe = fast
    provider = own_provider or default
    if provider is None:
        event("full model only")
        assert full is None  # no provider anywhere: the full model explains why
        return
    if not fast_path_takes(provider, recipe):
        event("OAuth 1.0 row sent to the full model")
        assert full is None  # another expiry than the constant: rejected
        return
    event("fast path: OAuth 1.0" if provider in OAUTH1_PROVIDERS else "fast path")
    assert full is not None, row
    assert (provider, recipe["user_id"], serialise(recipe)) == (
        full.provider,
        full.user_id,
        serialise(full),
    )


def test_canonical_rows_take_the_fast_path() -> None:
    """The fast path is not vacuous: the rows the benchmark and most exports carry take it."""
    row = {
        "provider": "oura",
        "user_id": "c1fa22f9-2917-49aa-9257-afac6e510cd0",
        "access_token": "a",
        "refresh_token": "r",
        "provider_id": "148151911",
        "expires_at": 1764763117,
        "oauth_scopes": ["daily"],
    }
    fast = validate_well_formed(json.dumps(row).encode())
    assert fast is not None
    assert validate_well_formed(json.dumps({**row, "provider": None}).encode()) is not None
    # Both optional keys absent: what files with one provider per key usually hold.
    bare = {k: v for k, v in row.items() if k not in ("provider", "oauth_scopes")}
    assert validate_well_formed(json.dumps(bare).encode()) == (None, {**bare, "oauth_scopes": None})
    assert validate_well_formed(json.dumps({**row, "expires_at": "1764763117"}).encode()) is None
    assert validate_well_formed(json.dumps({**row, "provider_id": 148151911}).encode()) is None


def test_the_block_validator_alone_takes_a_garmin_row_with_any_expiry() -> None:
    """Why the hot loop checks OAuth 1.0 rows itself: WellFormedRow cannot compare two fields."""
    row = {
        "provider": "garmin",
        "user_id": "c1fa22f9-2917-49aa-9257-afac6e510cd0",
        "access_token": "a",
        "refresh_token": "secret",
        "provider_id": "p",
        "expires_at": 1764763117,
    }
    fast = validate_well_formed(json.dumps(row).encode())
    assert fast is not None
    assert not fast_path_takes("garmin", fast[1])
    assert validate_json_row(json.dumps(row).encode(), context_for(None)) is None
    constant = {**row, "expires_at": OAUTH1_EXPIRES_AT}
    fast = validate_well_formed(json.dumps(constant).encode())
    assert fast is not None
    assert fast_path_takes("garmin", fast[1])
    # No expiry at all: not canonical, so the full model fills it in.
    bare = {k: v for k, v in row.items() if k != "expires_at"}
    assert validate_well_formed(json.dumps(bare).encode()) is None
    full = validate_json_row(json.dumps(bare).encode(), context_for(None))
    assert full is not None
    assert full.expires_at == OAUTH1_EXPIRES_AT


# --- JSONL blocks: the same lines whatever the block size ---------------------------------------


def _lines_one_by_one(data: bytes, limit: int) -> list[tuple[int, bytes | None]]:
    """The reference: one ``readline`` per line; a line's length leaves out its ending only."""
    out: list[tuple[int, bytes | None]] = []
    stream = io.BytesIO(data)
    number = 0
    while raw := stream.readline():
        number += 1
        content = raw.removesuffix(b"\n").removesuffix(b"\r")  # the line ending only
        if len(content) > limit:
            out.append((number, None))
            continue
        if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        out.append((number, raw.strip()))
    return out


_line_bytes = st.sampled_from(
    [b"{}", b' {"a": 1} ', b"\r", b"", b"  ", b"\xef\xbb\xbf{}", b"x" * 9]
)


@settings(max_examples=300, deadline=None)
@given(
    lines=st.lists(
        _line_bytes | st.binary(max_size=12).filter(lambda b: b"\n" not in b), max_size=30
    ),
    newline=st.sampled_from([b"\n", b"\r\n"]),
    final_newline=st.booleans(),
    limit=st.integers(min_value=1, max_value=12),
    block=st.integers(min_value=1, max_value=20),
)
# A block that ends on the "\r" of a line exactly at the limit: not too long once "\n" comes.
@example(lines=[b"abc", b"{}"], newline=b"\r\n", final_newline=True, limit=3, block=4)
# A stray "\r" before the "\r\n" is part of the line, whichever block it ends up in.
@example(
    lines=[b"\x00\x00\x00\x00\r", b"{}"], newline=b"\r\n", final_newline=False, limit=4, block=1
)
@example(
    lines=[b"\x00\x00\x00\x00\r", b"{}"], newline=b"\r\n", final_newline=False, limit=4, block=20
)
# Whole blocks of blank lines (counted, not split), between rows and after the last one.
@example(
    lines=[b"{}", *[b""] * 12, b"  ", b"{}", b"", b""],
    newline=b"\r\n",
    final_newline=True,
    limit=4,
    block=5,
)
@example(lines=[b"x" * 9, *[b""] * 9, b" "], newline=b"\n", final_newline=False, limit=3, block=2)
def test_jsonl_blocks_match_reading_line_by_line(
    lines: list[bytes], newline: bytes, final_newline: bool, limit: int, block: int
) -> None:
    data = newline.join(lines) + (newline if final_newline and lines else b"")
    assume(not data.startswith(WIDE_BOMS))  # a UTF-16/32 file (test_formats.py)
    blocks = list(jsonl_blocks(io.BytesIO(data), limit, block_size=block))
    numbered = [(first + i, raw) for first, chunk, _ in blocks for i, raw in enumerate(chunk)]
    assert numbered == _lines_one_by_one(data, limit)
    assert all(chunk for _, chunk, _ in blocks)  # no empty blocks
    # Then reading from where any block's first line starts gives the same lines from there.
    # in the same blocks (the intake checks its deadline and thresholds between blocks)
    for first, _, start in blocks[1:]:
        stream = io.BytesIO(data)
        stream.seek(start)
        again = list(jsonl_blocks(stream, limit, block, first_line=first, offset=start))
        resumed = [(f + i, raw) for f, chunk, _ in again for i, raw in enumerate(chunk)]
        assert resumed == [(n, raw) for n, raw in numbered if n >= first]
        assert [(f, len(c)) for f, c, _ in again] == [
            (f, len(c)) for f, c, _ in blocks if f >= first
        ]


# --- CSV quoting on lines the reader gave up on ------------------------------------------------


@settings(max_examples=600, deadline=None)
@given(
    body=st.text(alphabet='ab,"', max_size=30),
    ending=st.sampled_from(["\n", "\r\n", "\r"]),
    cuts=st.lists(st.integers(0, 32), max_size=3),
)
@example(body='a"b', ending="\n", cuts=[])  # an ordinary character: opens nothing
@example(body='"x"y,"z', ending="\n", cuts=[])  # a field closed early, then one left open
@example(body='"a""', ending="\r\n", cuts=[4])  # an escaped quote, the line still open
def test_quoting_of_a_line_agrees_with_the_csv_module(
    body: str, ending: str, cuts: list[int]
) -> None:
    """``Quoting`` says a line leaves a quoted field open exactly when the csv module reads the
    next line into the same record, however the line is cut into pieces (bounded reads)."""
    line = body + ending
    quoting = Quoting()
    for piece in _pieces(line, cuts):
        quoting.feed(piece)
    records = list(csv.reader(io.StringIO(line + "next\n", newline="")))
    assert quoting.open == (len(records) == 1)


def _pieces(text: str, cuts: list[int]) -> list[str]:
    bounds = sorted({0, len(text), *(c for c in cuts if c < len(text))})
    return [text[a:b] for a, b in itertools.pairwise(bounds)]
