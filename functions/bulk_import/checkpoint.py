"""Checkpoint and part objects in S3, next to the file's results (or retry rows).

Layout for ``incoming/<path>``: ``results/<path>/_state/checkpoint.json`` and
``results/<path>/_state/outcomes-00001.csv`` …; ``retry/<path>/_state/retry-00001.jsonl`` …
(retry parts hold tokens, so they live under the retry prefix with its encryption and expiry).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from botocore.exceptions import ClientError

from bulk_import.models import Checkpoint, Manifest
from bulk_import.results import MANIFEST_NAME, STATE_DIR

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client
    from mypy_boto3_s3.type_defs import ObjectIdentifierTypeDef


class CheckpointStore:
    def __init__(self, s3: S3Client, bucket: str, results_prefix: str, retry_prefix: str) -> None:
        self._s3 = s3
        self._bucket = bucket
        self._results = results_prefix
        self._retry = retry_prefix
        self.key = results_prefix + STATE_DIR + "checkpoint.json"

    def load(self) -> Checkpoint | None:
        body = self._get(self.key)
        return None if body is None else Checkpoint.model_validate_json(body)

    def save(self, checkpoint: Checkpoint) -> None:
        self._s3.put_object(
            Bucket=self._bucket,
            Key=self.key,
            Body=checkpoint.model_dump_json().encode(),
            ContentType="application/json",
        )

    def existing_manifest(self) -> Manifest | None:
        body = self._get(self._results + MANIFEST_NAME)
        if body is None:
            return None
        try:
            return Manifest.model_validate_json(body)
        except ValueError:
            return None

    def outcome_part_key(self, n: int) -> str:
        return f"{self._results}{STATE_DIR}outcomes-{n:05d}.csv"

    def retry_part_key(self, n: int) -> str:
        return f"{self._retry}{STATE_DIR}retry-{n:05d}.jsonl"

    def delete(self, parts: list[str]) -> None:
        """Remove an import's part objects, then its checkpoint (the commit record) last."""
        keys = list(parts)
        for start in range(0, len(keys), 1000):
            batch: list[ObjectIdentifierTypeDef] = [{"Key": k} for k in keys[start : start + 1000]]
            self._s3.delete_objects(Bucket=self._bucket, Delete={"Objects": batch, "Quiet": True})
        self._s3.delete_object(Bucket=self._bucket, Key=self.key)

    def _get(self, key: str) -> bytes | None:
        try:
            body: bytes = self._s3.get_object(Bucket=self._bucket, Key=key)["Body"].read()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in {"NoSuchKey", "404"}:
                return None
            raise
        return body
