"""The final objects of a file: ``outcomes.csv``, ``retry.jsonl`` and ``manifest.json``.

The invocation that finishes a file uploads its spool as the final object, streamed after the
parts it does not hold (earlier invocations', and its own once the spool has let them go), if
there are any (boto3's managed transfer: multipart when large).
"""

from __future__ import annotations

import io
from collections.abc import Buffer, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bulk_import.model import Manifest
from bulk_import.storage.spool import (
    COPY_CHUNK,
    SPOOL_KEEP_BYTES,
    TRANSFER,
    OutcomeSpool,
    RetrySpool,
    Spool,
    outcomes_header,
)

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client


@dataclass(frozen=True, slots=True)
class ResultWriter:
    """Makes a run's spools and writes its final objects; tests pass a subclass to fail a write."""

    s3: S3Client
    spool_keep_bytes: int = SPOOL_KEEP_BYTES

    def outcome_spool(self) -> OutcomeSpool:
        return OutcomeSpool(outcomes_header(), self.spool_keep_bytes)

    def retry_spool(self) -> RetrySpool:
        return RetrySpool(keep_bytes=self.spool_keep_bytes)

    def assemble(
        self, bucket: str, key: str, *, parts: list[str], spool: Spool, content_type: str
    ) -> None:
        assemble(self.s3, bucket, key, parts=parts, spool=spool, content_type=content_type)

    def write_manifest(self, bucket: str, key: str, manifest: Manifest) -> None:
        write_manifest(self.s3, bucket, key, manifest)


def assemble(
    s3: S3Client,
    bucket: str,
    key: str,
    *,
    parts: list[str],
    spool: Spool,
    content_type: str,
) -> None:
    """The final object at ``key``: the spool's header, the parts it does not hold, then every
    line it holds. With no such parts the spool is sent as it is.

    The parts are read back as the object is sent, not gathered on disk first: /tmp would
    otherwise hold the file's outcomes once more at its end.
    """
    if not parts:
        spool.upload_whole(s3, bucket, key, content_type)
        return
    stream = io.BufferedReader(BlockReader(_blocks(s3, bucket, parts, spool)), COPY_CHUNK)
    s3.upload_fileobj(stream, bucket, key, ExtraArgs={"ContentType": content_type}, Config=TRANSFER)


def _blocks(s3: S3Client, bucket: str, parts: list[str], spool: Spool) -> Iterator[bytes]:
    yield spool.header
    for part in parts:
        body = s3.get_object(Bucket=bucket, Key=part)["Body"]
        try:
            yield from body.iter_chunks(COPY_CHUNK)
        finally:
            body.close()
    yield from spool.blocks()


class BlockReader(io.RawIOBase):
    """A readable stream of blocks. Wrapped in a BufferedReader, ``read(n)`` gives n bytes
    until the end, which s3transfer needs: a short read mid-stream would make a part smaller
    than S3's minimum."""

    def __init__(self, blocks: Iterator[bytes]) -> None:
        self._blocks = blocks
        self._pending = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Buffer) -> int:
        while not self._pending:
            block = next(self._blocks, None)
            if block is None:
                return 0
            self._pending = memoryview(block)
        with memoryview(buffer) as target:
            n = min(len(target), len(self._pending))
            target[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n


def write_manifest(s3: S3Client, bucket: str, key: str, manifest: Manifest) -> None:
    s3.put_object(
        Bucket=bucket,
        Key=key,
        Body=manifest.model_dump_json(indent=2),
        ContentType="application/json",
    )
