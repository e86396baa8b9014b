"""Opens an S3 object as a decompressed, bounded byte stream (Range GETs, never the whole file)."""

from __future__ import annotations

import gzip
import io
import re
import zlib
from collections.abc import Callable
from typing import IO, TYPE_CHECKING, Any, NamedTuple, cast

from aws_lambda_powertools.utilities.streaming import S3Object
from botocore.exceptions import ClientError

from bulk_import.errors import FileTooLarge, MalformedFile, SourceNotFound, aws_error_code
from bulk_import.ingest.file_type import Compression
from bulk_import.model import PROVIDERS, SourceRef

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client

    from bulk_import.ingest.gzip_access import AccessPoint

_BUFFER = 1024 * 1024
# Largest zstd window accepted. The decoder allocates the window a frame declares (zstandard's
# default limit: 128 MiB) before MAX_DECOMPRESSED_BYTES can stop anything; 32 MiB covers every
# level up to 20 (`zstd --ultra -21/-22` and `--long` need more).
ZSTD_MAX_WINDOW = 32 * 1024 * 1024
_GZIP_MAGIC = b"\x1f\x8b"
_QUOTED_BYTES = re.compile(r"\s*\(b(['\"]).*\1\)")
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
# Object metadata (``x-amz-meta-dry-run``) that asks for a dry run: validate, send nothing.
DRY_RUN_METADATA = "dry-run"


class SourceObject(NamedTuple):
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
        code = aws_error_code(exc) or ""
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


class StartAt(NamedTuple):
    """Where a later invocation can start reading: ``offset`` decompressed bytes in (a line's
    start), entered through ``access`` for gzip (None there: inflate from the file's start)."""

    offset: int
    access: AccessPoint | None = None


def open_stream(
    s3: S3Client,
    source: SourceObject,
    compression: Compression,
    max_bytes: int,
    start: StartAt | None = None,
) -> IO[bytes]:
    """A buffered reader of the decompressed content, pinned to the object version (or ETag),
    from the file's start or from ``start`` (not for zstd: see ``start_at``)."""
    ref = source.ref
    if ref.size == 0 and compression is not Compression.NONE:
        # Decompressors read nothing as no data; a compressed file holds a header at least.
        raise MalformedFile(
            f"the object is empty, not {compression.value} data: it was cut off or never "
            "written; upload it again"
        )
    # Without a version, pin the ETag so a concurrent overwrite cannot change the bytes mid-read.
    pin: dict[str, Any] = {} if ref.version_id or not ref.etag else {"IfMatch": f'"{ref.etag}"'}
    raw: IO[bytes] = S3Object(
        bucket=ref.bucket, key=ref.key, version_id=ref.version_id, boto3_client=s3, **pin
    )
    return decoded(raw, compression, max_bytes, ref.size, start)


def decoded(
    raw: IO[bytes],
    compression: Compression,
    max_bytes: int,
    size: int | None = None,
    start: StartAt | None = None,
) -> IO[bytes]:
    """``raw`` decompressed, bounded by ``max_bytes``, with codec errors as MalformedFile;
    from ``start`` when given (``raw`` must then be seekable).

    ``raw`` must have ``tell()``: a codec error names how far into the compressed bytes it
    came (of ``size``, when known), which tells a cut-off upload from damage part-way through.
    """
    compressed = raw
    where = compressed.tell
    codec_errors: tuple[type[BaseException], ...] = ()
    complete: Callable[[], bool] | None = None
    skip = 0  # decompressed bytes between where inflating starts and ``start``
    if compression is Compression.GZIP:
        # Deferred, like zstandard: ctypes costs every cold start ~5 ms, gzip files only.
        from bulk_import.ingest import gzip_access  # noqa: PLC0415
    if compression is Compression.GZIP and (start is not None or gzip_access.available()):
        access = start.access if start is not None else None
        if access is not None:
            raw.seek(access.inp - (1 if access.bits else 0))
        try:
            reader = gzip_access.GzipReader(raw, access)
        except gzip_access.GzipError as exc:
            raise MalformedFile(f"gzip data ends before its resume point ({exc})") from None
        skip = 0 if start is None else start.offset - reader.offset
        if skip < 0:  # a point the resume checked (``AccessPoint.fits``) is never past it
            raise ValueError("the gzip access point lies past the resume point")
        raw, where = cast(IO[bytes], reader), lambda: reader.compressed_offset
        codec_errors = (gzip_access.GzipError,)
    elif compression is Compression.GZIP:  # no system zlib to drive: read, never entered
        raw = cast(IO[bytes], gzip.GzipFile(fileobj=raw, mode="rb"))
        codec_errors = (gzip.BadGzipFile, EOFError, zlib.error)
    elif compression is Compression.ZSTD:
        import zstandard  # noqa: PLC0415 - deferred: only .zst files pay for the import

        framing = ZstdFraming(raw)
        complete = framing.complete
        raw = zstandard.ZstdDecompressor(max_window_size=ZSTD_MAX_WINDOW).stream_reader(
            cast(IO[bytes], framing), read_across_frames=True
        )
        codec_errors = (zstandard.ZstdError,)
    elif start is not None:
        raw.seek(start.offset)
    guarded = _GuardedReader(
        raw,
        compression.value,
        codec_errors,
        max_bytes,
        complete=complete,
        compressed_offset=where,
        compressed_size=size,
        total=0 if start is None else start.offset - skip,
    )
    bounded = io.BufferedReader(guarded, _BUFFER)
    if start is None:
        _refuse_undeclared_compression(bounded, compression)
    while skip > 0:  # from the access point to the line (at most its spacing)
        passed = len(bounded.read(min(skip, _BUFFER)))
        if not passed:
            raise MalformedFile("the file is shorter than its stored resume point")
        skip -= passed
    return bounded


def can_resume(compression: Compression) -> bool:
    """Whether a stream of this compression can be entered at a resume point."""
    if compression is Compression.GZIP:
        from bulk_import.ingest import gzip_access  # noqa: PLC0415 - see ``decoded``

        return gzip_access.available()
    return compression is Compression.NONE


def start_at(stream: IO[bytes], offset: int) -> StartAt | None:
    """How a later invocation can start reading ``stream`` (as ``open_stream`` made it) at
    decompressed ``offset``; None for zstd, which is read from the start.

    zstd can only be entered at a frame's start (seekable-format files are frames of a few
    MiB with a table of them); a file of one frame, what ``zstd`` writes, cannot be entered
    mid-way at all.
    """
    guarded = getattr(stream, "raw", None)
    inner = guarded.inner if isinstance(guarded, _GuardedReader) else None
    if guarded is not None and guarded.codec == Compression.GZIP.value:
        from bulk_import.ingest import gzip_access  # noqa: PLC0415 - see ``decoded``

        if not isinstance(inner, gzip_access.GzipReader):
            return None  # read by the gzip module: never entered part-way
        access = gzip_access.point_before(inner.points, offset)
        if access is None and offset > 2 * gzip_access.SPACING:
            return None  # read past the points kept (not expected: they reach back 32 MiB)
        return StartAt(offset, access)
    if guarded is not None and inner is not None and guarded.codec == Compression.NONE.value:
        return StartAt(offset)
    return None


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
        *,
        complete: Callable[[], bool] | None,
        compressed_offset: Callable[[], int],
        compressed_size: int | None,
        total: int = 0,
    ) -> None:
        self.inner = inner
        self._compressed_offset = compressed_offset
        self._compressed_size = compressed_size
        self.codec = codec
        self.codec_errors = codec_errors
        self._max = max_bytes
        self._complete = complete
        self.total = total

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        try:
            data = self.inner.read(len(buffer))
        except self.codec_errors as exc:
            if "too much memory" in str(exc):  # zstd: the frame's window is over the limit
                raise MalformedFile(
                    f"{self.codec} data needs a decoding window over {ZSTD_MAX_WINDOW >> 20} "
                    "MiB (compressed with --long or --ultra); compress it again at level 19"
                ) from None
            raise MalformedFile(
                f"{self.codec} data is corrupt or truncated {self._where()} "
                f"({_reason(exc)}); upload the file again"
            ) from None
        n = len(data)
        if n == 0 and self._complete is not None and not self._complete():
            raise MalformedFile(
                f"{self.codec} data is truncated or corrupt {self._where()} "
                "(the stream ends inside a frame); upload the file again"
            )
        self.total += n
        if self.total > self._max:
            raise FileTooLarge(
                f"decompressed content exceeds MAX_DECOMPRESSED_BYTES ({self._max} bytes); "
                "split the file or raise the limit"
            )
        buffer[:n] = data
        return n

    def _where(self) -> str:
        """Where decoding broke: the decompressed count alone understates it by up to a read."""
        of = "" if self._compressed_size is None else f" of {self._compressed_size:,}"
        return (
            f"within the first {self._compressed_offset():,}{of} compressed bytes "
            f"(after {self.total:,} decompressed bytes)"
        )


def _reason(exc: BaseException) -> str:
    """The codec's own words ("CRC check failed", "invalid block type"), without the bytes
    gzip quotes ("Not a gzipped file (b'sk')": the first bytes of the data)."""
    return _QUOTED_BYTES.sub("", str(exc)).strip()[:200] or type(exc).__name__


class ZstdFraming:
    """Passes compressed bytes through while following zstd's frame layout (RFC 8878).

    zstandard's stream reader ends quietly where a truncated stream ends, so a cut-off upload
    would look complete; ``complete()`` tells whether the bytes so far end between frames. It
    reads headers only: the decoder still checks the content (and its checksums).
    """

    _MAGIC = 0xFD2FB528
    _SKIPPABLE_MIN, _SKIPPABLE_MAX = 0x184D2A50, 0x184D2A5F

    def __init__(self, inner: IO[bytes]) -> None:
        self._inner = inner
        self._state = "magic"  # the field expected next
        self._want = 4  # its size
        self._field = bytearray()
        self._skip = 0  # content bytes to pass before the next field
        self._checksum = False
        self._corrupt = False

    def read(self, size: int = -1) -> bytes:
        data = self._inner.read(size)
        if not self._corrupt:
            self._follow(data)
        return data

    def close(self) -> None:
        self._inner.close()

    def complete(self) -> bool:
        return not self._corrupt and self._state == "magic" and not self._field and not self._skip

    def _follow(self, data: bytes) -> None:
        pos, end = 0, len(data)
        while pos < end and not self._corrupt:
            if self._skip:
                step = min(self._skip, end - pos)
                self._skip -= step
                pos += step
                continue
            step = min(self._want - len(self._field), end - pos)
            self._field += data[pos : pos + step]
            pos += step
            if len(self._field) == self._want:
                field = bytes(self._field)
                self._field.clear()
                self._advance(field)

    def _advance(self, field: bytes) -> None:
        value = int.from_bytes(field, "little")
        if self._state == "magic":
            self._on_magic(value)
        elif self._state == "skippable_size":
            self._skip = value
            self._next("magic", 4)
        elif self._state == "descriptor":
            self._on_descriptor(value)
        elif self._state == "header_rest":
            self._next("block", 3)
        elif self._state == "block":
            self._on_block_header(value)
        else:  # the checksum after the last block
            self._next("magic", 4)

    def _on_magic(self, value: int) -> None:
        if value == self._MAGIC:
            self._next("descriptor", 1)
        elif self._SKIPPABLE_MIN <= value <= self._SKIPPABLE_MAX:
            self._next("skippable_size", 4)
        else:
            self._corrupt = True  # not a frame: the decoder says so, or the stream is incomplete

    def _on_descriptor(self, value: int) -> None:
        single_segment = bool(value & 0x20)
        self._checksum = bool(value & 0x04)
        rest = (
            (0 if single_segment else 1)  # window descriptor
            + (0, 1, 2, 4)[value & 0x03]  # dictionary id
            + ((1 if single_segment else 0), 2, 4, 8)[value >> 6]  # frame content size
        )
        if rest:
            self._next("header_rest", rest)
        else:
            self._next("block", 3)

    def _on_block_header(self, value: int) -> None:
        last, kind, block_size = value & 1, (value >> 1) & 3, value >> 3
        self._skip = 1 if kind == 1 else block_size  # an RLE block's content is one byte
        if not last:
            self._next("block", 3)
        elif self._checksum:
            self._next("checksum", 4)
        else:
            self._next("magic", 4)

    def _next(self, state: str, size: int) -> None:
        self._state, self._want = state, size


def provider_from_key(
    key: str, incoming_prefix: str, providers: frozenset[str] = PROVIDERS
) -> str | None:
    """``incoming/oura/export.csv`` → ``oura``; None when that segment is not a provider."""
    if not key.startswith(incoming_prefix):
        return None
    rest = key[len(incoming_prefix) :]
    segment, sep, _ = rest.partition("/")
    candidate = segment.strip().lower()
    return candidate if sep and candidate in providers else None


def dry_run_requested(metadata: dict[str, str]) -> bool:
    """Whether the object's metadata says ``dry-run: true`` (any case)."""
    return metadata.get(DRY_RUN_METADATA, "").strip().lower() == "true"
