"""Writers for ``outcomes.csv`` and ``manifest.json`` under the file's results prefix.

Outcomes stream to a temporary file as rows finish and go up with boto3's managed transfer
(multipart for large files), so memory never holds the whole outcome list.
"""

from __future__ import annotations

import csv
import tempfile
from typing import IO, TYPE_CHECKING

from boto3.s3.transfer import TransferConfig

from bulk_import.chunking import RowOutcome
from bulk_import.models import Manifest

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client

OUTCOMES_HEADER = ("line", "user_id", "provider", "outcome", "detail")
MANIFEST_NAME = "manifest.json"
OUTCOMES_NAME = "outcomes.csv"
_TRANSFER = TransferConfig(
    multipart_threshold=16 * 1024 * 1024, multipart_chunksize=16 * 1024 * 1024
)
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def results_prefix(key: str, incoming_prefix: str, results_prefix: str) -> str:
    """``incoming/a/b.csv`` → ``results/a/b.csv/``; keys outside incoming/ keep their full path."""
    path = key[len(incoming_prefix) :] if key.startswith(incoming_prefix) else key
    return f"{results_prefix}{path}/"


def _cell(value: str) -> str:
    """Neutralise spreadsheet formulas (CSV injection) in values that came from the input."""
    return "'" + value if value.startswith(_FORMULA_START) else value


class OutcomeWriter:
    """Appends outcome lines to a spooled temp file; ``upload`` sends it to S3."""

    def __init__(self) -> None:
        self._file: IO[str] = tempfile.TemporaryFile(  # noqa: SIM115 - closed in close()
            mode="w+", encoding="utf-8", newline=""
        )
        self._csv = csv.writer(self._file, lineterminator="\n")
        self._csv.writerow(OUTCOMES_HEADER)
        self.lines = 0

    def write(self, outcomes: list[RowOutcome]) -> None:
        self._csv.writerows(
            (o.line, _cell(o.user_id), _cell(o.provider), o.outcome.value, _cell(o.detail))
            for o in outcomes
        )
        self.lines += len(outcomes)

    def upload(self, s3: S3Client, bucket: str, key: str) -> None:
        self._file.flush()
        binary = self._file.buffer  # type: ignore[attr-defined]
        binary.seek(0)
        s3.upload_fileobj(
            binary, bucket, key, ExtraArgs={"ContentType": "text/csv"}, Config=_TRANSFER
        )

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> OutcomeWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_manifest(s3: S3Client, bucket: str, key: str, manifest: Manifest) -> None:
    s3.put_object(
        Bucket=bucket,
        Key=key,
        Body=manifest.model_dump_json(indent=2).encode(),
        ContentType="application/json",
    )
