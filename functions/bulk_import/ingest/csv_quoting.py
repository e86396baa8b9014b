"""Where a CSV record's quoting stands, by the csv module's rules, for text it never parsed."""

from __future__ import annotations

import re

_START, _FIELD, _QUOTED, _QUOTE = range(4)
# From a field's start: unquoted fields, each up to its comma; stops at a quote opening a field
# or at a line end. A quote after a field's first character is an ordinary one.
_UNQUOTED_FIELDS = re.compile(r'(?:[^",\r\n][^,\r\n]*)?(?:,(?:[^",\r\n][^,\r\n]*)?)*')
_REST_OF_FIELD = re.compile(r"[^,\r\n]*")


def _end_of(pattern: re.Pattern[str], text: str, i: int) -> int:
    match = pattern.match(text, i)  # both patterns match at least the empty string
    return i if match is None else match.end()


class Quoting:
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
