"""Opens an S3 object as a decompressed, bounded byte stream (Range GETs, never the whole file)."""

from __future__ import annotations

import gzip
import io
import zlib
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any, cast

from aws_lambda_powertools.utilities.streaming import S3Object
from botocore.exceptions import ClientError

from bulk_import.errors import FileTooLarge, MalformedFile, SourceNotFound
from bulk_import.formats import Compression
from bulk_import.models import PROVIDERS, SourceRef

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client

_BUFFER = 1024 * 1024
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


@dataclass(frozen=True, slots=True)
class SourceObject:
    ref: SourceRef
    metadata: dict[str, str]


def describe(s3: S3Client, bucket: str, key: str, version_id: str | None) -> SourceObject:
    """HEAD the object: version, ETag, size and user metadata (the ``provider`` fallback)."""
    params = {"Bucket": bucket, "Key": key}
    if version_id:
        params["VersionId"] = version_id
    try:
        head = s3.head_object(**params)  # type: ignore[arg-type]
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code in {"404", "NoSuchKey", "NoSuchVersion", "NotFound"}:
            raise SourceNotFound(
                f"s3://{bucket}/{key} does not exist (deleted before it was read?)"
            ) from None
        if code in {"403", "AccessDenied"}:
            raise SourceNotFound(
                f"access denied reading s3://{bucket}/{key}; check the function's role and "
                "the bucket's KMS key policy"
            ) from None
        raise
    return SourceObject(
        ref=SourceRef(
            bucket=bucket,
            key=key,
            version_id=head.get("VersionId") or version_id,
            etag=head.get("ETag", "").strip('"') or None,
            size=head.get("ContentLength"),
        ),
        metadata={k.lower(): v for k, v in head.get("Metadata", {}).items()},
    )


def open_stream(
    s3: S3Client, source: SourceObject, compression: Compression, max_bytes: int
) -> IO[bytes]:
    """A buffered reader of the decompressed content, pinned to the object version (or ETag)."""
    ref = source.ref
    # Without a version, pin the ETag so a concurrent overwrite cannot change the bytes mid-read.
    pin: dict[str, Any] = {} if ref.version_id or not ref.etag else {"IfMatch": f'"{ref.etag}"'}
    raw: IO[bytes] = S3Object(
        bucket=ref.bucket, key=ref.key, version_id=ref.version_id, boto3_client=s3, **pin
    )
    codec_errors: tuple[type[BaseException], ...] = ()
    if compression is Compression.GZIP:
        raw = cast(IO[bytes], gzip.GzipFile(fileobj=raw, mode="rb"))
        codec_errors = (gzip.BadGzipFile, EOFError, zlib.error)
    elif compression is Compression.ZSTD:
        import zstandard  # noqa: PLC0415 - deferred: only .zst files pay for the import

        raw = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
        codec_errors = (zstandard.ZstdError,)
    guarded = _GuardedReader(raw, compression.value, codec_errors, max_bytes)
    bounded = io.BufferedReader(guarded, _BUFFER)
    _refuse_undeclared_compression(bounded, compression)
    return bounded


def _refuse_undeclared_compression(
    stream: io.BufferedReader[Any], compression: Compression
) -> None:
    head = stream.peek(4)[:4]
    if compression is Compression.NONE and (head.startswith((_GZIP_MAGIC, _ZSTD_MAGIC))):
        kind = "gzip" if head.startswith(_GZIP_MAGIC) else "zstd"
        suffix = ".gz" if kind == "gzip" else ".zst"
        raise MalformedFile(f"the content is {kind}-compressed; name the file with '{suffix}'")


class _GuardedReader(io.RawIOBase):
    """Counts decompressed bytes against the limit and turns codec errors into MalformedFile."""

    def __init__(
        self,
        inner: IO[bytes],
        codec: str,
        codec_errors: tuple[type[BaseException], ...],
        max_bytes: int,
    ) -> None:
        self._inner = inner
        self._codec = codec
        self._codec_errors = codec_errors
        self._max = max_bytes
        self.total = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        try:
            data = self._inner.read(len(buffer))
        except self._codec_errors as exc:
            raise MalformedFile(
                f"{self._codec} data is corrupt or truncated after {self.total} decompressed "
                f"bytes ({type(exc).__name__}); upload the file again"
            ) from None
        n = len(data)
        self.total += n
        if self.total > self._max:
            raise FileTooLarge(
                f"decompressed content exceeds MAX_DECOMPRESSED_BYTES ({self._max} bytes); "
                "split the file or raise the limit"
            )
        buffer[:n] = data
        return n


def provider_from_key(key: str, incoming_prefix: str) -> str | None:
    """``incoming/oura/export.csv`` → ``oura``; None when that segment is not a provider."""
    if not key.startswith(incoming_prefix):
        return None
    rest = key[len(incoming_prefix) :]
    segment, sep, _ = rest.partition("/")
    candidate = segment.strip().lower()
    return candidate if sep and candidate in PROVIDERS else None
