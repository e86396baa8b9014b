"""Row readers for JSONL/NDJSON, JSON arrays and CSV over a decompressed byte stream.

Each reader yields one ``Record`` per input row with the row's line number (JSON arrays: the
element's 1-based position). A row that cannot be parsed becomes a ``Record`` with an error so
the rest of the file goes on; a file that cannot be parsed past some point raises
``MalformedFile`` with the line where it broke.

``read_records`` picks the reader for a format. The CSV and JSON-array readers are imported
when a file of theirs is read: most files are JSONL, and every cold start would pay for them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import IO, TYPE_CHECKING

from bulk_import.ingest.file_type import Format
from bulk_import.ingest.jsonl import read_jsonl
from bulk_import.ingest.record import Record

if TYPE_CHECKING:
    from bulk_import.ingest.record import CsvPlace


def read_records(
    stream: IO[bytes],
    fmt: Format,
    max_row_bytes: int,
    place: CsvPlace | None = None,
    first_line: int = 1,
) -> Iterator[Record]:
    """The file's records; CSV with ``place`` and ``first_line`` as ``read_csv`` takes them."""
    if fmt is Format.JSONL:
        return read_jsonl(stream, max_row_bytes)
    if fmt is Format.CSV:
        from bulk_import.ingest.csv_reader import read_csv  # noqa: PLC0415 - see the docstring

        return read_csv(stream, max_row_bytes, place=place, first_line=first_line)
    from bulk_import.ingest.json_array import read_json_array  # noqa: PLC0415

    return read_json_array(stream, max_row_bytes)
