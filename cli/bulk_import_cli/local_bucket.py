"""The S3 calls an import makes, answered from the operator's disk.

The importer talks to S3 only through ``wiring.s3``. Given this object instead, the real run
(resume, intake, dispatch, finish, the checkpoint's conditional writes) reads the operator's
file and writes ``manifest.json``, ``outcomes.csv``, ``retry.jsonl`` and its state under one
directory: one code path for the Lambda and the laptop.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, NamedTuple

from botocore.exceptions import ClientError

# The source's bytes are read in blocks of this size when a part is copied.
_COPY = 1024 * 1024


def _error(code: str, operation: str, status: int) -> ClientError:
    """The error botocore raises for S3's answer ``status`` with ``code``."""
    response: Any = {
        "Error": {"Code": code, "Message": code},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    return ClientError(response, operation)


class Route(NamedTuple):
    """Keys under ``prefix`` are files under ``directory``."""

    prefix: str
    directory: Path


class Body:
    """A GET's streaming body over an open file: ``read``, ``iter_chunks`` and ``close``.
    ``on_read`` hears how many bytes each read gave (the run's progress through its source)."""

    def __init__(self, file: IO[bytes], on_read: Any = None) -> None:
        self._file = file
        self._on_read = on_read

    def read(self, size: int | None = None) -> bytes:
        data = self._file.read(-1 if size is None else size)
        if self._on_read is not None:
            self._on_read(len(data))
        return data

    def iter_chunks(self, chunk_size: int = _COPY) -> Iterator[bytes]:
        while block := self.read(chunk_size):
            yield block

    def close(self) -> None:
        self._file.close()


class LocalBucket:
    """One source object (``source_key`` → ``source``, with its ``metadata``) and the keys of
    ``routes`` (longest prefix first) as files. Every write replaces its file atomically."""

    def __init__(
        self,
        source_key: str,
        source: Path,
        metadata: dict[str, str],
        routes: list[Route],
    ) -> None:
        self.source_key = source_key
        self.source = source
        self.metadata = dict(metadata)
        self.routes = sorted(routes, key=lambda r: len(r.prefix), reverse=True)
        self.source_bytes_read = 0
        self._lock = threading.Lock()

    # --- reads -------------------------------------------------------------------------------

    def head_object(self, *, Bucket: str, Key: str, **kwargs: Any) -> dict[str, Any]:
        path = self._existing(Key, "HeadObject", "404")
        head: dict[str, Any] = {
            "ContentLength": path.stat().st_size,
            "ETag": self._etag(Key, path),
        }
        if Key == self.source_key:
            head["Metadata"] = dict(self.metadata)
        return head

    def get_object(
        self,
        *,
        Bucket: str,
        Key: str,
        Range: str = "",
        IfMatch: str | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        path = self._existing(Key, "GetObject", "NoSuchKey")
        etag = self._etag(Key, path)
        if IfMatch is not None and IfMatch != etag:
            raise _error("PreconditionFailed", "GetObject", 412)
        size = path.stat().st_size
        start = int(Range.removeprefix("bytes=").split("-")[0]) if Range else 0
        if Range and start >= size:
            raise _error("InvalidRange", "GetObject", 416)
        file = path.open("rb")
        file.seek(start)
        on_read = self._count_source if Key == self.source_key else None
        return {"Body": Body(file, on_read), "ETag": etag, "ContentLength": size - start}

    def get_paginator(self, name: str) -> LocalPaginator:
        if name != "list_objects_v2":
            raise NotImplementedError(name)
        return LocalPaginator(self)

    def list_keys(self, prefix: str) -> list[str]:
        """Every key under ``prefix`` that a route holds, sorted as S3 lists them."""
        keys = set()
        for route in self.routes:
            if not (prefix.startswith(route.prefix) or route.prefix.startswith(prefix)):
                continue
            if not route.directory.is_dir():
                continue
            for path in route.directory.rglob("*"):
                if path.is_file() and not path.name.startswith(".tmp-"):
                    key = route.prefix + path.relative_to(route.directory).as_posix()
                    if key.startswith(prefix) and self._path(key) == path:
                        keys.add(key)
        return sorted(keys)

    # --- writes ------------------------------------------------------------------------------

    def put_object(
        self,
        *,
        Bucket: str,
        Key: str,
        Body: bytes | str,
        IfNoneMatch: str | None = None,
        IfMatch: str | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        data = Body.encode() if isinstance(Body, str) else Body
        path = self._path(Key)
        with self._lock:
            exists = path.is_file()
            if IfNoneMatch == "*" and exists:
                raise _error("PreconditionFailed", "PutObject", 412)
            if IfMatch is not None:
                if not exists:
                    raise _error("NoSuchKey", "PutObject", 404)
                if self._etag(Key, path) != IfMatch:
                    raise _error("PreconditionFailed", "PutObject", 412)
            _replace(path, [data])
        return {"ETag": _md5_etag(data)}

    def upload_fileobj(self, fileobj: IO[bytes], bucket: str, key: str, **kwargs: Any) -> None:
        _replace(self._path(key), iter(lambda: fileobj.read(_COPY), b""))

    def delete_object(
        self,
        *,
        Bucket: str,
        Key: str,
        IfMatch: str | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        path = self._path(Key)
        with self._lock:
            if IfMatch not in (None, "*") and path.is_file() and self._etag(Key, path) != IfMatch:
                raise _error("PreconditionFailed", "DeleteObject", 412)
            path.unlink(missing_ok=True)
        return {}

    def delete_objects(
        self, *, Bucket: str, Delete: dict[str, Any], **kwargs: Any
    ) -> dict[str, Any]:
        for obj in Delete.get("Objects", []):
            self._path(obj["Key"]).unlink(missing_ok=True)
        return {}

    # --- keys and files ----------------------------------------------------------------------

    def _path(self, key: str) -> Path:
        if key == self.source_key:
            return self.source
        for route in self.routes:
            if key.startswith(route.prefix):
                rest = key[len(route.prefix) :]
                path = (route.directory / rest).resolve()
                if rest and path.is_relative_to(route.directory.resolve()):
                    return path
        raise _error("AccessDenied", "LocalBucket", 403)

    def _existing(self, key: str, operation: str, missing: str) -> Path:
        path = self._path(key)
        if not path.is_file():
            raise _error(missing, operation, 404)
        return path

    def _etag(self, key: str, path: Path) -> str:
        """The source's from its size and modification time (it may be gigabytes); any other
        object's from its content, as S3's ETag of a single-part upload."""
        if key == self.source_key:
            stat = path.stat()
            return f'"{stat.st_size:x}-{stat.st_mtime_ns:x}"'
        digest = hashlib.md5(usedforsecurity=False)
        with path.open("rb") as file:
            while block := file.read(_COPY):
                digest.update(block)
        return f'"{digest.hexdigest()}"'

    def _count_source(self, n: int) -> None:
        self.source_bytes_read += n


class LocalPaginator:
    """``list_objects_v2``'s paginator: one page holding every key under the prefix."""

    def __init__(self, bucket: LocalBucket) -> None:
        self._bucket = bucket

    def paginate(self, *, Bucket: str, Prefix: str = "", **kwargs: Any) -> Iterator[dict[str, Any]]:
        yield {"Contents": [{"Key": key} for key in self._bucket.list_keys(Prefix)]}


def _md5_etag(data: bytes) -> str:
    return f'"{hashlib.md5(data, usedforsecurity=False).hexdigest()}"'


def _replace(path: Path, blocks: Any) -> None:
    """Write ``blocks`` to a temporary file beside ``path``, then rename it over ``path``: a
    reader (or a run stopped mid-write) never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            for block in blocks:
                out.write(block)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
