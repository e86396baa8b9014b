"""Row readers for JSONL/NDJSON, JSON arrays and CSV over a decompressed byte stream.

Each reader yields one ``Record`` per input row with the row's line number (JSON arrays: the
element's 1-based position). A row that cannot be parsed becomes a ``Record`` with an error so
the rest of the file goes on; a file that cannot be parsed past some point raises
``MalformedFile`` with the line where it broke.
"""

from __future__ import annotations

import csv
import functools
import io
import itertools
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import IO, TYPE_CHECKING, Any, NoReturn

from bulk_import.errors import MalformedFile, UnsupportedFile
from bulk_import.model import RECIPE_FIELDS, ROW_FIELDS

if TYPE_CHECKING:
    from _csv import Reader

_BOM = b"\xef\xbb\xbf"
# UTF-16 (either order) and UTF-32 big-endian; UTF-32 little-endian starts as UTF-16 LE.
_WIDE_BOMS = (b"\xff\xfe", b"\xfe\xff", b"\x00\x00\xfe\xff")
_CUT_WINDOW = 16
_NUMBER_TAIL = re.compile(r"[0-9.eE+-]*")
_READ_SIZE = 256 * 1024
# JSONL is read in blocks this big: ~120 rows of 550 bytes, so the pipeline's deadline check
# between blocks comes every few milliseconds.
JSONL_BLOCK_BYTES = 64 * 1024
# A CSV record (all its fields and lines) may be this many times MAX_ROW_BYTES long.
_CSV_RECORD_FACTOR = 4


class Format(StrEnum):
    JSONL = "jsonl"
    JSON = "json"
    CSV = "csv"


class Compression(StrEnum):
    NONE = "none"
    GZIP = "gzip"
    ZSTD = "zstd"


_FORMATS = {
    ".jsonl": Format.JSONL,
    ".ndjson": Format.JSONL,
    ".json": Format.JSON,
    ".csv": Format.CSV,
}
_COMPRESSIONS = {".gz": Compression.GZIP, ".zst": Compression.ZSTD}


@dataclass(frozen=True, slots=True)
class Record:
    line: int
    data: dict[str, Any] | None
    error: str | None = None
    # A JSONL line the pipeline's fast path did not take: its bytes, for one-step
    # parse-and-validate in pydantic-core; parse_json_line gives the exact reason if that fails.
    raw: bytes | None = None


def detect(key: str) -> tuple[Format, Compression]:
    """Format and compression from the key's extensions, e.g. ``a/b.csv.gz``."""
    name = key.rsplit("/", 1)[-1].lower()
    compression = Compression.NONE
    for ext, comp in _COMPRESSIONS.items():
        if name.endswith(ext):
            compression, name = comp, name[: -len(ext)]
            break
    for ext, fmt in _FORMATS.items():
        if name.endswith(ext):
            return fmt, compression
    expected = ", ".join(sorted(_FORMATS)) + " (optionally ending in .gz or .zst)"
    raise UnsupportedFile(f"unsupported file type for '{key.rsplit('/', 1)[-1]}'; use {expected}")


def read_records(stream: IO[bytes], fmt: Format, max_row_bytes: int) -> Iterator[Record]:
    if fmt is Format.JSONL:
        return _read_jsonl(stream, max_row_bytes)
    if fmt is Format.CSV:
        return _read_csv(stream, max_row_bytes)
    return _read_json_array(stream, max_row_bytes)


def _object_or_error(line: int, value: Any) -> Record:
    if isinstance(value, dict):
        return Record(line, value)
    return Record(line, None, f"expected a JSON object, got {_json_type(value)}")


def _json_type(value: Any) -> str:
    names = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")


def _decode_error(exc: json.JSONDecodeError) -> str:
    # JSONDecodeError's own str() carries no input text, only a position.
    # Some of json's messages end in "at" ("Unterminated string starting at").
    return f"invalid JSON: {exc.msg.removesuffix(' at')} at column {exc.colno}"


def too_long(limit: int) -> str:
    return f"line is longer than {limit} bytes"


def jsonl_blocks(
    stream: IO[bytes], limit: int, block_size: int = JSONL_BLOCK_BYTES
) -> Iterator[tuple[int, list[bytes | None]]]:
    """JSONL lines in blocks: ``(number of the first line, lines)``, one entry per line.

    Each line comes stripped of surrounding whitespace (and the UTF-8 BOM on line 1); a blank
    line is ``b""`` and a line longer than ``limit`` bytes is None, its bytes skipped without
    being held. Splitting a block in C instead of a ``readline`` per line is what lets the
    pipeline spend its time on rows, not on reading them. Memory: one block plus one line.
    """
    number = 1
    carry = b""
    skipping = False  # inside a line already reported as too long: drop up to its newline
    head = stream.read(block_size)
    while len(head) < len(max(_WIDE_BOMS, key=len)) and (more := stream.read(block_size)):
        head += more  # enough to tell a byte order mark, whatever the block size
    if head.startswith(_WIDE_BOMS):
        # Windows PowerShell 5's default: json would guess UTF-16 for the lines it can.
        raise MalformedFile("the file is UTF-16 or UTF-32, not UTF-8; save it as UTF-8")
    for block in itertools.chain((head,), iter(functools.partial(stream.read, block_size), b"")):
        data = block
        if skipping:
            cut = data.find(b"\n")
            if cut < 0:
                continue
            data, skipping = data[cut + 1 :], False
        parts = (carry + data).split(b"\n") if carry else data.split(b"\n")
        carry = parts.pop()  # the unfinished last line, if any
        lines: list[bytes | None] = _clean(parts, number, limit)
        if len(carry) > limit + 1:  # longer than allowed whatever comes next (+1: a "\r")
            lines.append(None)
            carry, skipping = b"", True
        if lines:
            yield number, lines
            number += len(lines)
    if carry and not skipping:
        yield number, _clean([carry], number, limit)


def _clean(parts: list[bytes], number: int, limit: int) -> list[bytes | None]:
    if max(map(len, parts), default=0) <= limit:  # the common case: no line near the limit
        lines: list[bytes | None] = [part.strip() for part in parts]
    else:
        # A line's length leaves out its ending ("\n" or "\r\n"), nothing more: a stray "\r"
        # before it counts, as it does while the line is still the carry between blocks.
        lines = [None if len(p) - p.endswith(b"\r") > limit else p.strip() for p in parts]
    if number == 1 and lines and lines[0] is not None and parts[0].startswith(_BOM):
        lines[0] = parts[0][len(_BOM) :].strip()
    return lines


def _read_jsonl(stream: IO[bytes], limit: int) -> Iterator[Record]:
    for first, lines in jsonl_blocks(stream, limit):
        for line, raw in enumerate(lines, first):
            if raw is None:
                yield Record(line, None, too_long(limit))
            elif raw:
                yield parse_json_line(line, raw)


def parse_json_line(line: int, raw: bytes) -> Record:
    """One JSONL line as an object, or the reason it is not one (never quoting the line)."""
    try:
        # Decoded here, strictly: given bytes, json guesses UTF-16 and UTF-32 too.
        value = json.loads(raw.decode("utf-8"))
    except json.JSONDecodeError as exc:
        return Record(line, None, _decode_error(exc))
    except UnicodeDecodeError as exc:
        return Record(line, None, f"not valid UTF-8 (byte {exc.start + 1} of the line)")
    except RecursionError:
        return Record(line, None, "JSON nested too deeply")
    except ValueError:  # json's int limit: more than sys.get_int_max_str_digits() digits
        return Record(line, None, "invalid JSON: a number has too many digits")
    return _object_or_error(line, value)


def normalise_header(name: str) -> str:
    return name.strip().lower()


class _ElementTooLarge(Exception):
    """A JSON array element over MAX_ROW_BYTES, already passed over."""


_OUTSIDE_STRING = re.compile(r'[\[\]{}",]')
_IN_STRING = re.compile(r'["\\]')


def _scan_value(buf: str, i: int, depth: int, in_string: bool) -> tuple[int, int, bool, bool]:
    """Scan a JSON value from ``i`` on: (where it stopped, depth, inside a string, value ended)."""
    while True:
        if in_string:
            i, in_string = _past_string(buf, i)
            if in_string or depth == 0:
                return i, depth, in_string, not in_string
        m = _OUTSIDE_STRING.search(buf, i)
        if m is None:
            return len(buf), depth, False, False
        c, i = m.group(), m.end()
        if c == '"':
            in_string = True
        elif c in "[{":
            depth += 1
        elif depth == 0:
            return m.start(), 0, False, True  # the ',' or ']' after a bare number or literal
        elif c in "]}":
            depth -= 1
            if depth == 0:
                return i, 0, False, True


def _past_string(buf: str, i: int) -> tuple[int, bool]:
    """From inside a string at ``i``: (where scanning stopped, still inside the string)."""
    while (m := _IN_STRING.search(buf, i)) is not None:
        if m.group() == '"':
            return m.end(), False
        if m.end() >= len(buf):
            return m.start(), True  # an escape at the window's edge: read on first
        i = m.end() + 1  # past the escaped character
    return len(buf), True


class _RecordTooLong(Exception):
    def __init__(self, first_line: bool) -> None:
        super().__init__()
        self.first_line = first_line  # the record's first physical line alone is too long


def _ending(line: str) -> int:
    """How many characters of ``line`` are its line ending."""
    if line.endswith("\r\n"):
        return 2
    return 1 if line.endswith(("\n", "\r")) else 0


class _BoundedLines:
    """Feeds ``csv.reader`` one physical line at a time and stops a record that grows too long.

    The reader bounds single fields only (``field_size_limit``, which reports one long value
    first), so a long line of commas or many quoted lines would otherwise build one huge row.
    """

    def __init__(self, text: io.TextIOWrapper, limit: int) -> None:
        self._text = text
        self.limit = limit
        self.record_limit = _CSV_RECORD_FACTOR * limit
        self.record_chars = 0  # characters fed since the last complete record
        self.record_content = 0  # the same without the last line's ending
        self.skipped = 0  # physical lines passed over without the reader seeing them
        self._last = ""
        self._record: list[str] = []  # the lines of the record being read (within its budget)
        self._cut_at_cr = False  # the line passed over ended in '\r': its '\n' may follow

    def __iter__(self) -> _BoundedLines:
        return self

    def __next__(self) -> str:
        # Whole lines only (the reader ends a record at the end of each string it is given),
        # and never more than the record's budget plus a line ending and one character.
        first = self.record_chars == 0
        line = self._read(self.record_limit - self.record_chars + 3)
        if not line:
            raise StopIteration
        self._last = line
        if first:
            self._record = [line]
        else:
            self._record.append(line)
        self.record_chars += len(line)
        self.record_content = self.record_chars - _ending(line)
        if self.record_content > self.record_limit:
            raise _RecordTooLong(first)
        return line

    def _read(self, size: int) -> str:
        line = self._text.readline(size)
        if self._cut_at_cr and line == "\n":  # the rest of a '\r\n' a bounded read cut in two
            line = self._text.readline(size)
        self._cut_at_cr = False
        return line

    def record_quoting(self) -> _Quoting:
        """The quoting at the end of the lines of the record the reader was given."""
        return _Quoting("".join(self._record))

    def long_field_runs_over_lines(self) -> bool:
        """Does the record's first field over the limit hold a line break, or run on past the
        last line given? The reader's "field larger than field limit" on a later line of a
        record says the same of a long field on that line alone. Told apart by the csv module
        itself, reading the record again without the limit (only this thread reads CSV)."""
        previous = csv.field_size_limit(max(csv.field_size_limit(), 2 * self.record_limit))
        try:
            row = next(csv.reader(self._record), [])
        finally:
            csv.field_size_limit(previous)
        runs_on = self.record_quoting().open
        for i, value in enumerate(row):
            if len(value) > self.limit:
                return "\n" in value or "\r" in value or (runs_on and i == len(row) - 1)
        return False

    def pass_over_quoted(self, quoting: _Quoting, start: int, at: int) -> int:
        """After the reader gave up on line ``at`` of a record (from line ``start``) that leaves
        a quoted field open: pass over the lines up to where that field closes, in bounded
        reads, within the record's budget; how many lines that was. Where the record breaks as
        the reader would refuse one over several lines, the file stops as it would."""
        passed, piece, partial = 0, self._last, False
        quoting.broken = False  # the line the reader gave up on may be: that is its error
        self._check_quoted(quoting, start, at + 1)  # open at its end: it reaches the next
        while quoting.open or not piece.endswith(("\n", "\r")):
            piece = self._text.readline(self.limit)
            if not piece:  # the end of the file
                reached = passed + partial  # a last line without its line ending counts
                if quoting.open and at + reached > start:  # as the reader says of such a record
                    raise MalformedFile(_runaway(start, at + reached, "unexpected end of data"))
                return reached  # a record closed at the end, or its one line, open
            partial = not piece.endswith(("\n", "\r"))
            self.record_chars += len(piece)
            cut = self._cut_at_cr and piece == "\n"  # the rest of a '\r\n' a read cut in two
            self._cut_at_cr = piece.endswith("\r")  # its '\n' may come as the next piece
            quoting.feed(piece)
            if cut:
                continue
            if self.record_chars - _ending(piece) > self.record_limit:
                raise _RecordTooLong(first_line=False)
            self._check_quoted(quoting, start, at + passed + 1)
            if piece.endswith(("\n", "\r")):
                passed += 1
                self.skipped += 1  # counted as they pass: an error names the line it reached
        return passed

    def _check_quoted(self, quoting: _Quoting, start: int, line: int) -> None:
        """What the reader refuses in a record over several lines stops the file, as it does."""
        if quoting.broken:
            raise MalformedFile(_runaway(start, line, "',' expected after '\"'"))
        if quoting.open and quoting.field > self.limit:
            raise MalformedFile(
                _runaway(start, line, f"field larger than field limit ({self.limit})")
            )

    def pass_over(self) -> _Quoting:
        """Pass over the line that was too long to be a row: the rest of it, in bounded reads.
        Gives its quoting: a quoted field open at its end would run on to the next lines."""
        piece = self._last
        quoting = _Quoting(piece)
        while piece and not piece.endswith(("\n", "\r")):
            piece = self._text.readline(self.limit)
            quoting.feed(piece)
        self._cut_at_cr = piece.endswith("\r")
        self.skipped += 1
        self.record_chars = 0
        return quoting


_START, _FIELD, _QUOTED, _QUOTE = range(4)
# From a field's start: unquoted fields, each up to its comma; stops at a quote opening a field
# or at a line end. A quote after a field's first character is an ordinary one.
_UNQUOTED_FIELDS = re.compile(r'(?:[^",\r\n][^,\r\n]*)?(?:,(?:[^",\r\n][^,\r\n]*)?)*')
_REST_OF_FIELD = re.compile(r"[^,\r\n]*")


def _end_of(pattern: re.Pattern[str], text: str, i: int) -> int:
    match = pattern.match(text, i)  # both patterns match at least the empty string
    return i if match is None else match.end()


class _Quoting:
    """Where a CSV record's quoting stands after the text fed so far, by the csv module's rules
    (default dialect): a quote opens a quoted field only at the field's start, two quotes in one
    are a quote, a quote elsewhere is an ordinary character (``a"b``), and a quoted field runs
    on over line ends until its closing quote. For the lines the reader gave up on or never saw:
    whether the record runs on past them."""

    __slots__ = ("broken", "field", "state")

    def __init__(self, text: str = "") -> None:
        self.state = _START
        self.field = 0  # characters of the quoted field being read, as the reader counts them
        self.broken = False  # a closing quote followed by more of its field (strict: an error)
        self.feed(text)

    @property
    def open(self) -> bool:
        """Inside a quoted field: at a line end, the record runs on to the next line."""
        return self.state == _QUOTED

    def feed(self, text: str) -> None:
        i, n = 0, len(text)
        while i < n:
            if self.state == _START:
                begin = i
                i = _end_of(_UNQUOTED_FIELDS, text, i)
                if i == n:
                    self.state = _START if i > begin and text[i - 1] == "," else _FIELD
                elif text[i] == '"':
                    self.state, self.field, i = _QUOTED, 0, i + 1
                else:  # a line end: the record ends, the next line starts one
                    i += 1
            elif self.state == _FIELD:
                i = _end_of(_REST_OF_FIELD, text, i)
                if i < n:  # its comma or the line end
                    self.state, i = _START, i + 1
            elif self.state == _QUOTED:
                quote = text.find('"', i)
                if quote < 0:
                    self.field += n - i
                    i = n
                else:
                    self.field += quote - i
                    self.state, i = _QUOTE, quote + 1
            elif text[i] == '"':  # _QUOTE, then another: a quote in the field
                self.field += 1
                self.state, i = _QUOTED, i + 1
            else:  # _QUOTE, then anything else: the field closed
                self.broken = self.broken or text[i] not in ",\r\n"
                self.state = _FIELD


def _read_csv(stream: IO[bytes], limit: int) -> Iterator[Record]:
    text = io.TextIOWrapper(stream, encoding="utf-8-sig", newline="")
    csv.field_size_limit(limit)
    lines = _BoundedLines(text, limit)
    # Strict: a quote that is never closed, or closed in the middle of a field, is an error of
    # its record instead of text that swallows the rows after it into one field.
    reader = csv.reader(lines, strict=True)
    start = 1
    try:
        names = _csv_header(reader, lines)
        while names:
            start = reader.line_num + lines.skipped + 1
            try:
                values = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                end = reader.line_num + lines.skipped
                if end > start and (
                    "field limit" not in str(exc) or lines.long_field_runs_over_lines()
                ):
                    raise MalformedFile(_runaway(start, end, str(exc))) from None
                yield _unreadable_record(exc, lines, start, end, limit)
                continue
            except _RecordTooLong as long:
                if not long.first_line or lines.pass_over().open:
                    raise _RecordTooLong(first_line=False) from None  # the record runs on
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
    except _RecordTooLong:
        raise MalformedFile(
            _runaway(
                start,
                reader.line_num + lines.skipped + 1,
                f"longer than {lines.record_limit} characters ({_CSV_RECORD_FACTOR} x "
                "MAX_ROW_BYTES)",
            )
        ) from None
    finally:
        if not stream.closed:  # a reader dropped after its stream closed (a deadline) has none
            text.detach()


def _unreadable_record(
    exc: csv.Error, lines: _BoundedLines, start: int, end: int, limit: int
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


def _csv_header(reader: Reader, lines: _BoundedLines) -> list[str] | None:
    """The header's column names (None: an empty file); a header that cannot be read stops it."""
    try:
        header = next(reader, None)
    except csv.Error as exc:
        if reader.line_num > 1:
            raise MalformedFile(_runaway(1, reader.line_num, str(exc))) from None
        raise MalformedFile(
            f"CSV header (line 1) cannot be read ({exc}); check its quoting"
        ) from None
    lines.record_chars = 0
    return None if header is None else _csv_names(header)


_LINE_BREAK = re.compile(r"[\r\n]")


def _csv_record(names: list[str], values: list[str], start: int, end: int) -> Record:
    """The row of a record on lines ``start`` to ``end``; a broken one spanning lines stops
    the file (``_runaway``)."""
    if len(values) != len(names):
        if end > start:
            raise MalformedFile(_runaway(start, end, f"{len(values)} fields, not {len(names)}"))
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


def _runaway(start: int, end: int, problem: str) -> str:
    """A record that ran over several lines and is broken: its quoting went wrong at its start,
    and the rows it took in have no outcome, so the file stops there."""
    if end <= start:
        return f"CSV record at line {start} is {problem}; check the file's quoting"
    if "field limit" in problem:  # a quoted field over several lines, longer than MAX_ROW_BYTES
        return (
            f"CSV record starting at line {start} has a field that runs to line {end} and is "
            f"longer than MAX_ROW_BYTES ({problem}): a quote opened on line {start} is not "
            "closed where its field ends, or the field is that long; fix it on line "
            f"{start}"
        )
    return (
        f"CSV record starting at line {start} runs to line {end} ({problem}): a quote opened "
        f"on line {start} is not closed where its field ends; fix the quoting on line {start}"
    )


def _read_json_array(stream: IO[bytes], limit: int) -> Iterator[Record]:
    """Streams the elements of one top-level array without holding the file in memory."""
    text = io.TextIOWrapper(stream, encoding="utf-8-sig")
    decoder = json.JSONDecoder()
    reader = _TextWindow(text)
    try:
        if reader.next_significant() != "[":
            raise MalformedFile("a .json file must hold one JSON array of objects, '[{...}, ...]'")
        reader.advance(1)
        index = 0
        if reader.next_significant() == "]":
            reader.advance(1)
            reader.expect_end()
            return
        while True:
            index += 1
            try:
                value = reader.decode_value(decoder, limit, index)
            except _ElementTooLarge:
                yield Record(index, None, f"element is larger than {limit} bytes")
            else:
                yield _object_or_error(index, value)
            separator = reader.next_significant()
            reader.advance(1)
            if separator == "]":
                reader.expect_end()
                return
            if separator != ",":
                found = "the end of the file" if separator == "" else f"'{separator}'"
                raise MalformedFile(
                    f"invalid JSON after element {index}: expected ',' or ']', found {found}"
                )
    except UnicodeDecodeError:
        raise MalformedFile("not valid UTF-8; save the file as UTF-8") from None
    finally:
        if not stream.closed:  # a reader dropped after its stream closed (a deadline) has none
            text.detach()


class _TextWindow:
    """A sliding window over a text stream for incremental ``raw_decode``."""

    def __init__(self, text: io.TextIOWrapper) -> None:
        self._text = text
        self._buf = ""
        self._pos = 0
        self._eof = False

    def _fill(self) -> bool:
        if self._eof:
            return False
        chunk = self._text.read(_READ_SIZE)
        if not chunk:
            self._eof = True
            return False
        self._buf = self._buf[self._pos :] + chunk
        self._pos = 0
        return True

    def next_significant(self) -> str:
        """The next non-whitespace character ('' at end of input), without consuming it."""
        while True:
            while self._pos < len(self._buf) and self._buf[self._pos] in " \t\r\n":
                self._pos += 1
            if self._pos < len(self._buf):
                return self._buf[self._pos]
            if not self._fill():
                return ""

    def advance(self, n: int) -> None:
        self._pos += n

    def expect_end(self) -> None:
        if self.next_significant() != "":
            raise MalformedFile("unexpected content after the closing ']' of the JSON array")

    def decode_value(self, decoder: json.JSONDecoder, limit: int, index: int) -> Any:
        self.next_significant()
        while True:
            try:
                value, end = decoder.raw_decode(self._buf, self._pos)
            except json.JSONDecodeError as exc:
                if not self._cut_short(exc):
                    raise MalformedFile(f"invalid JSON in element {index}: {exc.msg}") from None
                if len(self._buf) - self._pos > limit:
                    self._skip_too_large(index)
                if self._fill():
                    continue
                raise MalformedFile(f"invalid JSON in element {index}: {exc.msg}") from None
            except RecursionError:
                raise MalformedFile(f"element {index} is nested too deeply") from None
            except ValueError:  # json's int limit (JSONDecodeError is handled above)
                raise MalformedFile(
                    f"element {index} holds a number with too many digits"
                ) from None
            # A number cut at the window's edge ('1.' of '1.5') may continue in the next read,
            # but not past the limit: a bare number of gigabytes must not be buffered whole.
            if end - self._pos > limit:
                self._skip_too_large(index)
            if not self._eof and _NUMBER_TAIL.fullmatch(self._buf, end) and self._fill():
                continue
            self._pos = end
            return value

    def _skip_too_large(self, index: int) -> NoReturn:
        """Pass over an element over the limit, so it is a rejected row, not a failed file."""
        if not self._skip_value():
            raise MalformedFile(f"invalid JSON in element {index}: the file ends inside it")
        raise _ElementTooLarge

    def _skip_value(self) -> bool:
        """Move past one JSON value without building it, holding one window at a time; False
        when the input ends first. Its syntax is not checked: it is rejected either way."""
        depth, in_string = 0, False
        while True:
            self._pos, depth, in_string, done = _scan_value(self._buf, self._pos, depth, in_string)
            if done:
                return True
            if not self._fill():
                return False

    def _cut_short(self, exc: json.JSONDecodeError) -> bool:
        """Whether the error may only mean the element continues past the buffered text."""
        if self._eof:
            return False
        if exc.msg.startswith("Unterminated string"):
            return True
        # Errors near the end (a literal, number or key cut in half) may be a cut; further in
        # they are real: after a refill the same broken text is no longer near the end.
        return exc.pos >= len(self._buf) - _CUT_WINDOW
