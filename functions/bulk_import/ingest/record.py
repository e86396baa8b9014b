"""``Record``: one row as a reader gives it, parsed or with the reason it could not be."""

from __future__ import annotations

from typing import Any, NamedTuple


class Record(NamedTuple):
    line: int
    data: dict[str, Any] | None
    error: str | None = None
    # A JSONL line the intake's fast path did not take: its bytes, for one-step
    # parse-and-validate in pydantic-core; parse_json_line gives the exact reason if that fails.
    raw: bytes | None = None


def too_long(limit: int) -> str:
    return f"line is longer than {limit} bytes"


def object_or_error(line: int, value: Any) -> Record:
    """A parsed JSON value as a row: an object, or the reason anything else is not one."""
    if isinstance(value, dict):
        return Record(line, value)
    return Record(line, None, f"expected a JSON object, got {_json_type(value)}")


def _json_type(value: Any) -> str:
    names = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")


class CsvPlace:
    """Where the record last read starts: ``line`` and the file's byte ``offset`` (``clean``:
    a reader can start there), and the header's column ``names``. A resume point stores them."""

    __slots__ = ("clean", "names", "offset")

    def __init__(self, offset: int = 0, names: list[str] | None = None) -> None:
        self.offset = offset
        self.clean = True
        self.names = names
