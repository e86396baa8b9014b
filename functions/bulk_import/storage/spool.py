"""Outcome and retry lines spooled to a temporary file as rows finish.

A checkpoint uploads the lines written since the last one as a part object; the spool keeps
them (up to ``keep_bytes``) so that the invocation that finishes a file sends its spool as the
final object instead of reading its own parts back. Neither memory nor /tmp holds the whole
outcome list.
"""

from __future__ import annotations

import io
import json
import operator
import os
import re
import string
import tempfile
from collections.abc import Iterator, Sequence
from typing import IO, TYPE_CHECKING

from boto3.s3.transfer import TransferConfig

from bulk_import.ingest.chunking import PendingRow
from bulk_import.model import Outcome, RowOutcome

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client

OUTCOMES_HEADER = ("line", "user_id", "provider", "outcome", "detail")
_PART = 16 * 1024 * 1024
TRANSFER = TransferConfig(multipart_threshold=_PART, multipart_chunksize=_PART)
# s3transfer reads each part of a file object (a spool, or the stream of parts read back) into
# memory until it is sent: at most this many at once (its default, 10, is 160 MiB).
TRANSFER.max_in_memory_upload_chunks = 3
# What a spool keeps of the lines it has uploaded, so that the finishing invocation need not
# read its own parts back. Lambda's /tmp is 512 MB unless the template raises it, and an
# invocation can write ~70 bytes of outcomes a row for millions of rows: past this, a spool
# lets its uploaded lines go and the end of the run reads those parts back instead.
SPOOL_KEEP_BYTES = 64 * 1024 * 1024
COPY_CHUNK = 1024 * 1024
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
# Values that need neither CSV quoting nor formula neutralising (UUIDs, provider names, "").
_PLAIN = re.compile(r"[0-9A-Za-z_][0-9A-Za-z_.:/ -]*|")
# A spool's write buffer. Each write to the file is a system call that lets go of the GIL, and
# getting it back from busy posting threads can take a switch interval (CPython's 5 ms, 1 ms
# during a run): one write per chunk's outcomes (~40 KB) costs ~0.1 s per 100k rows at 5 ms.
_SPOOL_BUFFER = 1024 * 1024


def _plain(detail: str) -> bool:
    return not detail or (
        not detail.startswith(_FORMULA_START) and not any(c in detail for c in ',"\n\r')
    )


def neutralise(value: str) -> str:
    """Neutralise spreadsheet formulas (CSV injection) in values that came from the input."""
    return "'" + value if value.startswith(_FORMULA_START) else value


def outcomes_header() -> bytes:
    return (",".join(OUTCOMES_HEADER) + "\n").encode()


class Spool:
    """Lines appended to an anonymous temp file, behind an optional header.

    ``upload`` stores the lines written since the last upload as a part object (a checkpoint's),
    and the spool keeps them: a run that finishes in the invocation that wrote them sends the
    whole spool as the final object (``assemble``) instead of reading its parts back from S3.
    """

    def __init__(self, header: bytes = b"", keep_bytes: int = SPOOL_KEEP_BYTES) -> None:
        # Closed in close(), not by a with-block: the spool lives as long as the run.
        self._file: IO[bytes] = tempfile.TemporaryFile(buffering=_SPOOL_BUFFER)  # noqa: SIM115
        self._file.write(header)
        self.header = header
        self.keep_bytes = keep_bytes
        # Counted here, not asked of the file: ``tell()`` is a system call each time, and a
        # system call lets go of the GIL, which busy posting threads keep for up to 1 ms.
        self._size = len(header)
        self._uploaded = len(header)  # bytes up to here are in part objects (or the header)
        self.lines = 0  # lines since the last upload
        self.written = 0  # lines in all

    def write_bytes(self, data: bytes, lines: int) -> None:
        self._file.write(data)
        self._size += len(data)
        self.lines += lines
        self.written += lines

    def upload(self, s3: S3Client, bucket: str, key: str, content_type: str) -> bool:
        """The lines written since the last upload, as one object.

        False when the spool has let go of every line uploaded so far (it had kept more than
        ``keep_bytes``): the final object must then read back the parts stored until now.
        """
        self._send(s3, bucket, key, content_type, self._uploaded)
        self.lines = 0
        kept = self._size - len(self.header) <= self.keep_bytes
        if not kept:
            self._file.truncate(len(self.header))
            self._file.seek(0, io.SEEK_END)
            self._size = len(self.header)
        self._uploaded = self._size
        return kept

    @property
    def unsaved_bytes(self) -> int:
        """Bytes written since the last upload."""
        return self._size - self._uploaded

    def upload_whole(self, s3: S3Client, bucket: str, key: str, content_type: str) -> None:
        """Header and every line, as one object."""
        self._send(s3, bucket, key, content_type, 0)

    def _send(self, s3: S3Client, bucket: str, key: str, content_type: str, start: int) -> None:
        self._file.flush()
        # s3transfer closes the file object it reads, and sends from its position on: hand it
        # a duplicate descriptor at ``start``.
        with os.fdopen(os.dup(self._file.fileno()), "rb") as view:
            view.seek(start)
            s3.upload_fileobj(
                view, bucket, key, ExtraArgs={"ContentType": content_type}, Config=TRANSFER
            )
        self._file.seek(0, io.SEEK_END)

    def blocks(self) -> Iterator[bytes]:
        """Every line it holds (not the header), a block at a time."""
        self._file.flush()
        self._file.seek(len(self.header))
        try:
            while block := self._file.read(COPY_CHUNK):
                yield block
        finally:
            self._file.seek(0, io.SEEK_END)

    def close(self) -> None:
        self._file.close()


class OutcomeSpool(Spool):
    def write_same(
        self, rows: Sequence[PendingRow], provider: str, outcome: Outcome, detail: str
    ) -> None:
        """Rows sharing one outcome (a whole chunk's): the common part is formatted once."""
        if not rows:
            return
        if not (_PLAIN.fullmatch(provider) and _plain(detail) and _plain_ids(rows)):
            self.write([RowOutcome(r.line, r.user_id, provider, outcome, detail) for r in rows])
            return
        tail = f",{provider},{outcome.value},{detail}\n"
        heads = [f"{line},{user_id}" for line, user_id, _ in rows]
        self.write_bytes((tail.join(heads) + tail).encode(), len(rows))

    def write(self, outcomes: Sequence[RowOutcome]) -> None:
        if not outcomes:
            return
        if _all_plain(outcomes):
            # The common case (validated ids, known providers, fixed details): one C-level
            # format per row, no quoting, no per-value checks.
            text = "".join([_LINE % o for o in outcomes])
        else:
            text = "".join([_LINE % o if _plain_row(o) else _quoted_line(o) for o in outcomes])
        self.write_bytes(text.encode(), len(outcomes))


_LINE = "%d,%s,%s,%s,%s\n"  # line, user_id, provider, outcome (a StrEnum: its value), detail
_USER_ID = operator.attrgetter("user_id")  # of a RowOutcome or a PendingRow
_PROVIDER_AND_DETAIL = operator.attrgetter("provider", "detail")
# ``_PLAIN`` for many values on lines of their own (newlines cannot occur inside a plain value,
# so the count of newlines tells that no value hid one): only these bytes, and no value starting
# with one of the characters a plain value has only after its first.
_PLAIN_BYTES = (string.digits + string.ascii_letters + "_.:/ -\n").encode()
_INNER_FIRST = re.compile(r"\n[.:/ -]")


def _all_plain(outcomes: Sequence[RowOutcome]) -> bool:
    """True when no value of any row needs CSV quoting or formula neutralising."""
    if not _plain_ids(outcomes):
        return False
    return all(
        _PLAIN.fullmatch(provider) and _plain(detail)
        for provider, detail in set(map(_PROVIDER_AND_DETAIL, outcomes))
    )


def _plain_ids(rows: Sequence[RowOutcome] | Sequence[PendingRow]) -> bool:
    """True when no row's user id needs quoting (each is ``_PLAIN``): a few scans of all of
    them at once, in C. Every chunk's ids pass through here: a regex over them costs ~2 % of
    a run's instructions."""
    ids = "\n".join(map(_USER_ID, rows))
    if ids.count("\n") != len(rows) - 1 or not ids.isascii():
        return False
    return not ids.encode().translate(None, _PLAIN_BYTES) and not _INNER_FIRST.search("\n" + ids)


def _plain_row(o: RowOutcome) -> bool:
    return bool(_PLAIN.fullmatch(o.user_id) and _PLAIN.fullmatch(o.provider) and _plain(o.detail))


def _quoted_line(o: RowOutcome) -> str:
    import csv  # noqa: PLC0415 - only rows whose values need quoting: rare, and not at import

    text = io.StringIO()
    csv.writer(text, lineterminator="\n").writerow(
        (
            o.line,
            neutralise(o.user_id),
            neutralise(o.provider),
            o.outcome.value,
            neutralise(o.detail),
        )
    )
    return text.getvalue()


class RetrySpool(Spool):
    """Original rows (ConnectionRecipe + provider) of rows to fix and upload again."""

    def write(self, provider: str, payload: bytes) -> None:
        # payload is the recipe's compact JSON object: put the provider first, keep the rest.
        self.write_bytes(
            b'{"provider":' + json.dumps(provider).encode() + b"," + payload[1:] + b"\n", 1
        )
