"""CSV: one row per record under a header that names every recipe column."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from typing import IO, TYPE_CHECKING

from bulk_import.errors import MalformedFile
from bulk_import.ingest.csv_lines import BoundedLines, RecordTooLong, runaway
from bulk_import.ingest.record import CsvPlace, Record, too_long
from bulk_import.model import RECIPE_FIELDS, ROW_FIELDS

if TYPE_CHECKING:
    from _csv import Reader

# A CSV record (all its fields and lines) may be this many times MAX_ROW_BYTES long.
CSV_RECORD_FACTOR = 4


def read_csv(
    stream: IO[bytes],
    limit: int,
    *,
    record_factor: int = CSV_RECORD_FACTOR,
    place: CsvPlace | None = None,
    first_line: int = 1,
) -> Iterator[Record]:
    """The rows of a CSV file with a header; a record may be ``record_factor`` x ``limit``
    characters long, over all its lines, before the file stops.

    With ``place.names``, ``stream`` starts at line ``first_line`` (a record's first), byte
    ``place.offset``, after the header: a resumed run's reading. ``place`` follows the records.
    """
    place = place if place is not None else CsvPlace()
    resumed = place.names is not None
    # Invalid UTF-8 is found line by line (``BoundedLines``), not where the decoder's read-ahead
    # happens to reach it: the same line however far back reading started.
    text = io.TextIOWrapper(stream, encoding="utf-8", errors="surrogateescape", newline="")
    csv.field_size_limit(limit)
    lines = BoundedLines(text, limit, record_factor * limit, place.offset if resumed else 0)
    lines.skipped = first_line - 1  # the lines before the stream's start
    # Strict: a quote that is never closed, or closed in the middle of a field, is an error of
    # its record instead of text that swallows the rows after it into one field.
    reader = csv.reader(lines, strict=True)
    start = first_line
    try:
        names = place.names if resumed else _csv_header(reader, lines)
        place.names = names
        while names:
            start = reader.line_num + lines.skipped + 1
            place.offset, place.clean = lines.offset, lines.between_records
            try:
                values = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                end = reader.line_num + lines.skipped
                if end > start and (
                    "field limit" not in str(exc) or lines.long_field_runs_over_lines()
                ):
                    raise MalformedFile(runaway(start, end, str(exc))) from None
                yield _unreadable_record(exc, lines, start, end, limit)
                continue
            except RecordTooLong as long:
                if not long.first_line or lines.pass_over().open:
                    raise RecordTooLong(first_line=False) from None  # the record runs on
                yield Record(start, None, too_long(limit))  # the reader starts afresh
                continue
            content, lines.record_chars = lines.record_content, 0
            if values and (len(values) > 1 or values[0].strip()):  # else a blank line
                end = reader.line_num + lines.skipped
                yield (
                    _csv_record(names, values, start, end)
                    if content <= limit
                    else _too_long_record(start, end, limit)
                )
    except UnicodeDecodeError:
        line_num = reader.line_num + lines.skipped
        where = f" after line {line_num}" if line_num else ""
        raise MalformedFile(f"not valid UTF-8{where}; save the file as UTF-8") from None
    except RecordTooLong:
        raise MalformedFile(
            runaway(
                start,
                reader.line_num + lines.skipped + 1,
                f"longer than {lines.record_limit} characters ({record_factor} x MAX_ROW_BYTES)",
            )
        ) from None
    finally:
        if not stream.closed:  # a reader dropped after its stream closed (a deadline) has none
            text.detach()


def _unreadable_record(
    exc: csv.Error, lines: BoundedLines, start: int, end: int, limit: int
) -> Record:
    """A record the reader gave up on at line ``end`` (for an error of that line alone):
    rejected, with the lines that a quoted field left open on that line takes (the reader drops
    the rest of the line, and would read them as rows)."""
    quoting = lines.record_quoting()
    end += lines.pass_over_quoted(quoting, start, end) if quoting.open else 0
    lines.record_chars = 0
    if "field limit" in str(exc):
        return _too_long_record(start, end, limit)
    where = f"record on lines {start}-{end}: " if end > start else ""
    return Record(start, None, f"{where}not valid CSV: {exc}")


def _too_long_record(start: int, end: int, limit: int) -> Record:
    where = "" if end == start else f"record on lines {start}-{end}: "
    return Record(start, None, where + too_long(limit))


def _csv_header(reader: Reader, lines: BoundedLines) -> list[str] | None:
    """The header's column names (None: an empty file); a header that cannot be read stops it."""
    try:
        header = next(reader, None)
    except csv.Error as exc:
        if reader.line_num > 1:
            raise MalformedFile(runaway(1, reader.line_num, str(exc))) from None
        raise MalformedFile(
            f"CSV header (line 1) cannot be read ({exc}); check its quoting"
        ) from None
    lines.record_chars = 0
    if header is not None and reader.line_num > 1:
        # A quote left open in the header takes the rows after it in as a column name.
        raise MalformedFile(
            f"CSV header runs over lines 1-{reader.line_num}: a quote opened in it is not "
            "closed where its name ends; fix the header's quoting"
        )
    return None if header is None else _csv_names(header)


_LINE_BREAK = re.compile(r"[\r\n]")


def _csv_record(names: list[str], values: list[str], start: int, end: int) -> Record:
    """The row of a record on lines ``start`` to ``end``; a broken one spanning lines stops
    the file (``runaway``)."""
    if len(values) != len(names):
        if end > start:
            raise MalformedFile(runaway(start, end, f"{len(values)} fields, not {len(names)}"))
        return Record(start, None, f"has {len(values)} fields, the header has {len(names)}")
    data = {k: v for k, v in zip(names, values, strict=True) if v != ""}
    if end > start:
        for field in ROW_FIELDS:
            if _LINE_BREAK.search(data.get(field, "")):
                # No field of a connection holds a line break. The record is valid CSV, as a
                # writer would quote a bad value; it may also be a quote that closed lines later
                # where a field happened to end, taking those rows in: the reason names them.
                return Record(
                    start,
                    None,
                    f"{field}: holds a line break (this record runs over lines {start}-{end}: "
                    "check its quoting)",
                )
    return Record(start, data)


def _csv_names(header: list[str]) -> list[str]:
    """The header's column names, checked: every recipe column present, none twice."""
    names = [normalise_header(h) for h in header]
    missing = [f for f in RECIPE_FIELDS if f not in names and f != "oauth_scopes"]
    if missing:
        raise MalformedFile(
            "CSV header (line 1) is missing column(s) "
            + ", ".join(missing)
            + "; expected "
            + ", ".join((*RECIPE_FIELDS, "provider"))
        )
    for name in ROW_FIELDS:
        columns = [str(n) for n, other in enumerate(names, 1) if other == name]
        if len(columns) > 1:
            # Each row would take whichever copy is not empty: never a guess with tokens.
            raise MalformedFile(
                f"CSV header (line 1) names column {name} more than once (columns "
                + ", ".join(columns)
                + ")"
            )
    return names


def normalise_header(name: str) -> str:
    return name.strip().lower()
