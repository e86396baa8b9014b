"""JSONL/NDJSON: lines in blocks (the intake's hot loop) and one line as a ``Record``."""

from __future__ import annotations

import functools
import io
import itertools
import json
from collections.abc import Iterator
from typing import IO

from bulk_import.errors import MalformedFile
from bulk_import.ingest.record import Record, object_or_error, too_long

_BOM = b"\xef\xbb\xbf"
# UTF-16 (either order) and UTF-32 big-endian; UTF-32 little-endian starts as UTF-16 LE.
WIDE_BOMS = (b"\xff\xfe", b"\xfe\xff", b"\x00\x00\xfe\xff")
# JSONL is read in blocks this big: ~120 rows of 550 bytes, so the intake's deadline check
# between blocks comes every few milliseconds.
JSONL_BLOCK_BYTES = 64 * 1024
# JSONL and CSV chunks close at every multiple of this many lines (+1; CSV: at the first record
# from there): a later invocation can start reading there, its chunks cut as from the start.
# ~30-60 MB of rows; at most a few partial chunks more (one per provider) each time.
RESUME_EVERY_LINES = 100_000


def jsonl_blocks(
    stream: IO[bytes],
    limit: int,
    block_size: int = JSONL_BLOCK_BYTES,
    first_line: int = 1,
    offset: int = 0,
) -> Iterator[tuple[int, list[bytes | None], int]]:
    """JSONL lines in blocks: ``(number of the first line, lines, where that line starts)``,
    one entry per line; the start is a count of decompressed bytes, where a later invocation
    can start reading (``stream`` positioned at ``offset``, the start of line ``first_line``).

    Each line comes stripped of surrounding whitespace (and the UTF-8 BOM on line 1); a blank
    line is ``b""`` and a line longer than ``limit`` bytes is None, its bytes skipped without
    being held. Splitting a block in C instead of a ``readline`` per line is what lets the
    intake spend its time on rows, not on reading them. Memory: one block plus one line.

    A block of nothing but line endings comes as that many ``b""`` without a split: a file of
    blank lines (a few KB of gzip can hold gigabytes of them) then reads at the speed of
    decompression.
    """
    number = first_line
    carry = b""
    skipping = False  # inside a line already reported as too long: drop up to its newline
    if offset:
        # To the end of the block a read from the start would be in: the blocks after it are
        # the same ones, so are the checks the intake makes between blocks.
        head = stream.read(block_size - offset % block_size)
    else:
        head = stream.read(block_size)
        while len(head) < len(max(WIDE_BOMS, key=len)) and (more := stream.read(block_size)):
            head += more  # enough to tell a byte order mark, whatever the block size
    if offset == 0 and head.startswith(WIDE_BOMS):
        # Windows PowerShell 5's default: json would guess UTF-16 for the lines it can.
        raise MalformedFile("the file is UTF-16 or UTF-32, not UTF-8; save it as UTF-8")
    end = offset  # decompressed bytes read before the block
    for block in itertools.chain((head,), iter(functools.partial(stream.read, block_size), b"")):
        data = block
        end += len(block)
        if skipping:
            cut = data.find(b"\n")
            if cut < 0:
                continue
            data, skipping = data[cut + 1 :], False
        if not carry and data and not data.replace(b"\r\n", b"").strip(b"\n"):
            blank = data.count(b"\n")  # the block ends with one: no carry
            yield number, [b""] * blank, end - len(data)
            number += blank
            continue
        start = end - len(data) - len(carry)
        # BytesIO finds line ends with memchr; bytes.split tests byte after byte, at ~3x the cost.
        parts = io.BytesIO(carry + data if carry else data).readlines()
        carry = parts.pop() if parts and not parts[-1].endswith(b"\n") else b""  # unfinished
        lines: list[bytes | None] = _clean(parts, number, limit)
        if len(carry) > limit + 1:  # longer than allowed whatever comes next (+1: a "\r")
            lines.append(None)
            carry, skipping = b"", True
        if lines:
            yield number, lines, start
            number += len(lines)
    if carry and not skipping:
        yield number, _clean([carry], number, limit), end - len(carry)


def _clean(parts: list[bytes], number: int, limit: int) -> list[bytes | None]:
    """Lines as ``readlines`` gives them (each with its "\n", the file's last maybe without),
    stripped; None for those longer than ``limit``."""
    if max(map(len, parts), default=0) <= limit:  # the common case: no line near the limit
        lines: list[bytes | None] = [part.strip() for part in parts]
    else:
        lines = [None if _length(p) > limit else p.strip() for p in parts]
    if number == 1 and lines and lines[0] is not None and parts[0].startswith(_BOM):
        lines[0] = parts[0][len(_BOM) :].strip()
    return lines


def _length(line: bytes) -> int:
    """A line's length without its ending ("\n" or "\r\n"), nothing more: a stray "\r" before
    it counts, as it does while the line is still the carry between blocks."""
    line = line.removesuffix(b"\n")
    return len(line) - line.endswith(b"\r")


def read_jsonl(stream: IO[bytes], limit: int) -> Iterator[Record]:
    for first, lines, _ in jsonl_blocks(stream, limit):
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
    return object_or_error(line, value)


def _decode_error(exc: json.JSONDecodeError) -> str:
    # JSONDecodeError's own str() carries no input text, only a position.
    # Some of json's messages end in "at" ("Unterminated string starting at").
    return f"invalid JSON: {exc.msg.removesuffix(' at')} at column {exc.colno}"
