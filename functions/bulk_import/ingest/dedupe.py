"""A second row for the same (provider, user_id) is a duplicate: it is not sent."""

from __future__ import annotations

import itertools
import struct
import sys
from array import array
from collections import defaultdict
from collections.abc import Sequence

# A part: per provider, its name's length and the count, the name, the user ids (16 bytes
# each, big-endian) and their first lines (8 bytes each, little-endian).
_HEADER = struct.Struct("<HI")


class Dedupe:
    """The first line of every (provider, user id) claimed.

    provider → user id (its 16 bytes: hashed once, and the fastest to make and to load from a
    part) → first line: ~115 bytes a row. One dict per
    provider, not one keyed by both: several smaller tables take less room than one that
    doubled past the row count (~3 MB less at 100k rows).
    """

    __slots__ = ("_marks", "_seen")

    def __init__(self) -> None:
        self._seen: defaultdict[str, dict[bytes, int]] = defaultdict(dict)
        self._marks: dict[str, int] = {}  # per provider, the claims already in a part

    def clear(self) -> None:
        self._seen.clear()
        self._marks.clear()

    def __len__(self) -> int:
        """Claims made: a resume point's count, checked once its parts are loaded."""
        return sum(map(len, self._seen.values()))

    def part(self) -> bytes:
        """The claims since the last part, for a later invocation to ``load`` instead of
        reading the file again up to here. Claims are never removed, and dicts keep their
        order: the new ones are those past the mark."""
        out = []
        for provider, seen in self._seen.items():
            mark = self._marks.get(provider, 0)
            if len(seen) == mark:
                continue
            items = list(itertools.islice(seen.items(), mark, None))
            name = provider.encode()
            lines = array("q", [line for _, line in items])
            if sys.byteorder != "little":
                lines.byteswap()
            out.append(_HEADER.pack(len(name), len(items)) + name)
            out.append(b"".join([key for key, _ in items]))
            out.append(lines.tobytes())
            self._marks[provider] = len(seen)
        return b"".join(out)

    def load(self, part: bytes) -> None:
        """Claims a ``part`` holds, as if the rows they came from were read again."""
        view, pos = memoryview(part), 0
        while pos < len(view):
            size, count = _HEADER.unpack_from(view, pos)
            pos += _HEADER.size
            provider = bytes(view[pos : pos + size]).decode()
            pos += size
            keys = bytes(view[pos : pos + 16 * count])
            pos += 16 * count
            lines = array("q")
            lines.frombytes(view[pos : pos + 8 * count])
            if sys.byteorder != "little":
                lines.byteswap()
            pos += 8 * count
            seen = self._seen[provider]
            ids = [keys[i : i + 16] for i in range(0, len(keys), 16)]
            seen.update(zip(ids, lines, strict=True))
            self._marks[provider] = len(seen)

    def claim(self, provider: str, user_id: str, line: int) -> int | None:
        """None when ``line`` is the first for this user and provider (and it is recorded as
        such); otherwise the first line."""
        return self.claim_all((provider,), (user_id,), (line,))[0]

    def claim_all(
        self, providers: Sequence[str], user_ids: Sequence[str], lines: Sequence[int]
    ) -> list[int | None]:
        """``claim`` for many rows, in order, in one call: the hot path claims a block's rows
        at once."""
        seen = self._seen
        return [
            None
            if (first := seen[provider].setdefault(bytes.fromhex(uid.replace("-", "")), n)) == n
            else first
            for provider, uid, n in zip(providers, user_ids, lines, strict=True)
        ]

    def first_line(self, provider: str, user_id: str) -> int | None:
        """The line this user was first claimed on for this provider, without claiming."""
        return self._seen[provider].get(bytes.fromhex(user_id.replace("-", "")))
