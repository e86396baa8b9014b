"""A resume point's objects: the users claimed up to it and, for gzip, its access point."""

from __future__ import annotations

from typing import TYPE_CHECKING

from botocore.exceptions import ClientError

from bulk_import.errors import aws_error_code
from bulk_import.storage.aws import fetch
from bulk_import.storage.keys import access_key, seen_part_key

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client


class ResumeObjects:
    """Stored next to the checkpoint (``_state/``), named by the run that wrote them; the
    checkpoint names those in use, and the import's end removes them with the parts."""

    def __init__(
        self, s3: S3Client, bucket: str, results_prefix: str, retry_prefix: str, run: str
    ) -> None:
        self.s3 = s3
        self._bucket = bucket
        self._results = results_prefix
        self._retry = retry_prefix
        self._run = run

    def put(self, n: int, seen: bytes, access: bytes | None) -> tuple[str, str | None]:
        """Store point ``n``'s dedupe part and access point; their keys."""
        seen_key = seen_part_key(self._results, self._run, n)
        self._create(seen_key, seen)
        if access is None:
            return seen_key, None
        access_at = access_key(self._retry, self._run, n)
        self._create(access_at, access)
        return seen_key, access_at

    def _create(self, key: str, body: bytes) -> None:
        """Created only if absent: a point's objects are never replaced under it. The name is
        this run's own, so an object already there is this write's, stored by a try whose
        answer was lost (botocore tried again)."""
        try:
            self.s3.put_object(Bucket=self._bucket, Key=key, Body=body, IfNoneMatch="*")
        except ClientError as exc:
            if aws_error_code(exc) not in {"PreconditionFailed", "412"}:
                raise

    def read(self, key: str) -> bytes | None:
        """An object a checkpoint names; None when it is gone."""
        fetched = fetch(self.s3, self._bucket, key)
        return None if fetched is None else fetched[0]
