"""The physical lines of a CSV file, fed to ``csv.reader`` within a bound on each record."""

from __future__ import annotations

import csv
import io

from bulk_import.errors import MalformedFile
from bulk_import.ingest.csv_quoting import Quoting

_BOM = "\ufeff"


class RecordTooLong(Exception):
    """A record grew past its bound (``BoundedLines.record_limit``)."""

    def __init__(self, first_line: bool) -> None:
        super().__init__()
        self.first_line = first_line  # the record's first physical line alone is too long


class BoundedLines:
    """Feeds ``csv.reader`` one physical line at a time and stops a record that grows too long.

    The reader bounds single fields only (``field_size_limit``, which reports one long value
    first), so a long line of commas or many quoted lines would otherwise build one huge row.
    """

    def __init__(
        self, text: io.TextIOWrapper, limit: int, record_limit: int, offset: int = 0
    ) -> None:
        self._text = text
        self.limit = limit  # the bound on one field (csv.field_size_limit) and on one read
        self.record_limit = record_limit  # characters of one record, all its fields and lines
        self.record_chars = 0  # characters fed since the last complete record
        self.record_content = 0  # the same without the last line's ending
        self.skipped = 0  # physical lines passed over without the reader seeing them
        self._last = ""
        self._record: list[str] = []  # the lines of the record being read (within its budget)
        self._cut_at_cr = False  # the line passed over ended in '\r': its '\n' may follow
        # Bytes of the file before the next line (where a resume point can be): its UTF-8, not
        # its characters.
        self.offset = offset

    def __iter__(self) -> BoundedLines:
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
            raise RecordTooLong(first)
        return line

    def _read(self, size: int) -> str:
        line = self._readline(size)
        if self._cut_at_cr and line == "\n":  # the rest of a '\r\n' a bounded read cut in two
            line = self._readline(size)
        self._cut_at_cr = False
        return line

    def _readline(self, size: int) -> str:
        line = self._text.readline(size)
        if line.isascii():
            self.offset += len(line)
            return line
        try:
            size = len(line.encode())
        except UnicodeEncodeError as exc:  # a byte the decoder escaped: not UTF-8
            raise UnicodeDecodeError("utf-8", b"", 0, 1, "invalid UTF-8") from exc
        first, self.offset = self.offset == 0, self.offset + size
        if first and line.startswith(_BOM):
            return line[1:]  # the file's byte order mark: counted, not part of the header
        return line

    @property
    def between_records(self) -> bool:
        """Whether ``offset`` is where a record can start: no '\n' of a cut '\r\n' pending."""
        return self.record_chars == 0 and not self._cut_at_cr

    def record_quoting(self) -> Quoting:
        """The quoting at the end of the lines of the record the reader was given."""
        return Quoting("".join(self._record))

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

    def pass_over_quoted(self, quoting: Quoting, start: int, at: int) -> int:
        """After the reader gave up on line ``at`` of a record (from line ``start``) that leaves
        a quoted field open: pass over the lines up to where that field closes, in bounded
        reads, within the record's budget; how many lines that was. Where the record breaks as
        the reader would refuse one over several lines, the file stops as it would."""
        passed, piece, partial = 0, self._last, False
        quoting.broken = False  # the line the reader gave up on may be: that is its error
        self._check_quoted(quoting, start, at + 1)  # open at its end: it reaches the next
        while quoting.open or not piece.endswith(("\n", "\r")):
            piece = self._readline(self.limit)
            if not piece:  # the end of the file
                reached = passed + partial  # a last line without its line ending counts
                if quoting.open and at + reached > start:  # as the reader says of such a record
                    raise MalformedFile(runaway(start, at + reached, "unexpected end of data"))
                return reached  # a record closed at the end, or its one line, open
            partial = not piece.endswith(("\n", "\r"))
            self.record_chars += len(piece)
            cut = self._cut_at_cr and piece == "\n"  # the rest of a '\r\n' a read cut in two
            self._cut_at_cr = piece.endswith("\r")  # its '\n' may come as the next piece
            quoting.feed(piece)
            if cut:
                continue
            if self.record_chars - _ending(piece) > self.record_limit:
                raise RecordTooLong(first_line=False)
            self._check_quoted(quoting, start, at + passed + 1)
            if piece.endswith(("\n", "\r")):
                passed += 1
                self.skipped += 1  # counted as they pass: an error names the line it reached
        return passed

    def _check_quoted(self, quoting: Quoting, start: int, line: int) -> None:
        """What the reader refuses in a record over several lines stops the file, as it does."""
        if quoting.broken:
            raise MalformedFile(runaway(start, line, "',' expected after '\"'"))
        if quoting.open and quoting.field > self.limit:
            raise MalformedFile(
                runaway(start, line, f"field larger than field limit ({self.limit})")
            )

    def pass_over(self) -> Quoting:
        """Pass over the line that was too long to be a row: the rest of it, in bounded reads.
        Gives its quoting: a quoted field open at its end would run on to the next lines."""
        piece = self._last
        quoting = Quoting(piece)
        while piece and not piece.endswith(("\n", "\r")):
            piece = self._readline(self.limit)
            quoting.feed(piece)
        self._cut_at_cr = piece.endswith("\r")
        self.skipped += 1
        self.record_chars = 0
        return quoting


def _ending(line: str) -> int:
    """How many characters of ``line`` are its line ending."""
    if line.endswith("\r\n"):
        return 2
    return 1 if line.endswith(("\n", "\r")) else 0


def runaway(start: int, end: int, problem: str) -> str:
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
