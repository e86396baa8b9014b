"""JSON arrays: the elements of one top-level array, streamed through a window of the text."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable, Iterator
from typing import IO, Any, NoReturn

from bulk_import.errors import MalformedFile
from bulk_import.ingest.record import Record, object_or_error

# Characters read into the window at a time.
READ_SIZE = 256 * 1024
_CUT_WINDOW = 16
_NUMBER_TAIL = re.compile(r"[0-9.eE+-]*")
# The reasons for an element Python's json cannot build: passed over and rejected.
TOO_DEEP = "element is nested too deeply"
TOO_MANY_DIGITS = "invalid JSON: a number has too many digits"

# Makes the window over a text stream: ``(text, read_size) -> TextWindow``.
type WindowFactory = Callable[[io.TextIOWrapper, int], TextWindow]


class TextWindow:
    """A sliding window over a text stream for incremental ``raw_decode``."""

    def __init__(self, text: io.TextIOWrapper, read_size: int = READ_SIZE) -> None:
        self._text = text
        self._read_size = read_size
        self._buf = ""
        self._pos = 0
        self._eof = False

    @property
    def buffered(self) -> int:
        """Characters the window holds, those already consumed included."""
        return len(self._buf)

    def fill(self) -> bool:
        """Read ``read_size`` more characters, dropping those consumed; False at the end."""
        if self._eof:
            return False
        chunk = self._text.read(self._read_size)
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
            if not self.fill():
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
                if self.fill():
                    continue
                raise MalformedFile(f"invalid JSON in element {index}: {exc.msg}") from None
            except RecursionError:
                self._pass_over(index, TOO_DEEP)
            except ValueError:  # json's int limit (JSONDecodeError is handled above)
                self._pass_over(index, TOO_MANY_DIGITS)
            # A number cut at the window's edge ('1.' of '1.5') may continue in the next read,
            # but not past the limit: a bare number of gigabytes must not be buffered whole.
            if end - self._pos > limit:
                self._skip_too_large(index)
            if not self._eof and _NUMBER_TAIL.fullmatch(self._buf, end) and self.fill():
                continue
            self._pos = end
            return value

    def _skip_too_large(self, index: int) -> NoReturn:
        """Pass over an element over the limit, so it is a rejected row, not a failed file."""
        self._pass_over(index, None)

    def _pass_over(self, index: int, reason: str | None) -> NoReturn:
        """Pass over an element that cannot be decoded (``reason``; None: over the limit), so
        it is a rejected row, not a failed file: the value scanner needs no recursion and
        builds no number. An element the file ends inside still fails the file."""
        if not self._skip_value():
            raise MalformedFile(f"invalid JSON in element {index}: the file ends inside it")
        raise _Rejected(reason)

    def _skip_value(self) -> bool:
        """Move past one JSON value without building it, holding one window at a time; False
        when the input ends first. Its syntax is not checked: it is rejected either way."""
        depth, in_string = 0, False
        while True:
            self._pos, depth, in_string, done = _scan_value(self._buf, self._pos, depth, in_string)
            if done:
                return True
            if not self.fill():
                return False

    def _cut_short(self, exc: json.JSONDecodeError) -> bool:
        """Whether the error may only mean the element continues past the buffered text."""
        if self._eof:
            return False
        if exc.msg.startswith("Unterminated string"):
            return True
        # Errors near the end (a literal, number or key cut in half) may be a cut; further in
        # they are real: after a refill the same broken text sits far from the end.
        return exc.pos >= len(self._buf) - _CUT_WINDOW


def read_json_array(
    stream: IO[bytes],
    limit: int,
    *,
    read_size: int = READ_SIZE,
    window: WindowFactory = TextWindow,
) -> Iterator[Record]:
    """Streams the elements of one top-level array without holding the file in memory.

    ``read_size``: the characters each read adds to the window; ``window`` makes the window.
    """
    text = io.TextIOWrapper(stream, encoding="utf-8-sig")
    decoder = json.JSONDecoder()
    reader = window(text, read_size)
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
            except _Rejected as rejected:
                yield Record(
                    index, None, rejected.reason or f"element is larger than {limit} bytes"
                )
            else:
                yield object_or_error(index, value)
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


class _Rejected(Exception):
    """A JSON array element already passed over: over MAX_ROW_BYTES (``reason`` None), nested
    too deeply, or holding a number with too many digits."""

    def __init__(self, reason: str | None) -> None:
        super().__init__(reason)
        self.reason = reason


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
