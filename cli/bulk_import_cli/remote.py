"""``bulk-import status`` and ``bulk-import upload``: an import in S3, seen from the laptop.

``upload`` sends the file with boto3's managed transfer (multipart when large), under the
bucket's own KMS key when its default encryption names one (the deployed bucket refuses any
other), and with ``--follow`` watches the import's checkpoint until its manifest is written.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from boto3.s3.transfer import TransferConfig
from botocore.exceptions import BotoCoreError, ClientError
from rich.table import Table

from bulk_import.errors import aws_error_code
from bulk_import.ingest import DRY_RUN_METADATA
from bulk_import.storage import aws
from bulk_import_cli import console, summary
from bulk_import_cli.local_import import settings_for
from bulk_import_cli.standing import NOT_FOUND, Standing, parse_s3_uri, standing

TRANSFER = TransferConfig(multipart_threshold=16 * 1024 * 1024, multipart_chunksize=16 * 1024**2)
FOLLOW_POLL_SECONDS = 2.0
FOLLOW_TIMEOUT_SECONDS = 6 * 3600.0
EXIT_CODES = {**summary.EXIT_CODES, NOT_FOUND: console.FAILED}


def status(uri: str, as_json: bool) -> int:
    bucket, key = parse_s3_uri(uri)
    found = _standing(bucket, key)
    if as_json:
        console.print_json(found.document())
    else:
        show(found)
    return EXIT_CODES.get(found.state, console.OK)


def _standing(bucket: str, key: str) -> Standing:
    try:
        return standing(aws.s3_client(), bucket, key, settings_for({}))
    except (ClientError, BotoCoreError) as exc:
        raise OSError(f"S3 could not be read: {_aws_reason(exc)}") from None


def _aws_reason(exc: Exception) -> str:
    return aws_error_code(exc) or type(exc).__name__


def show(found: Standing) -> None:
    table = Table(show_header=False, title=f"s3://{found.bucket}/{found.key}")
    table.add_column("", style="bold")
    table.add_column("")
    table.add_row("status", found.state + (" (dry run)" if found.dry_run else ""))
    table.add_row("rows done", f"{found.counts.rows:,}")
    table.add_row("lines read", f"{found.lines:,}")
    table.add_row("requests", f"{found.chunks:,}")
    for name, value in found.counts.model_dump().items():
        if value and name != "rows":
            table.add_row(name, f"{value:,}")
    if found.invocations:
        table.add_row("invocations", str(found.invocations))
    for name, value in (("started", found.started_at), ("finished", found.finished_at)):
        if value:
            table.add_row(name, value)
    if found.last_error:
        table.add_row("last error", console.clean(found.last_error))
    if found.manifest_key:
        table.add_row("manifest", f"s3://{found.bucket}/{found.manifest_key}")
    console.out().print(table)


def upload(
    file: Path,
    uri: str,
    *,
    dry_run: bool,
    provider: str | None,
    follow: bool,
    poll_seconds: float = FOLLOW_POLL_SECONDS,
) -> int:
    """Upload ``file`` to ``uri`` (a key, or a prefix ending in ``/``); follow it if asked."""
    if not file.is_file():
        console.fail(f"{file}: no such file")
    bucket, key = parse_s3_uri(uri)
    if key.endswith("/"):
        key += file.name
    incoming = settings_for({}).incoming_prefix
    if not key.startswith(incoming):
        console.fail(f"{key}: the function imports only keys under {incoming}")
    metadata = {DRY_RUN_METADATA: "true"} if dry_run else {}
    if provider:
        metadata["provider"] = provider
    s3 = aws.s3_client()
    extra: dict[str, Any] = {"Metadata": metadata, **_encryption(s3, bucket)}
    try:
        s3.upload_file(str(file), bucket, key, ExtraArgs=extra, Config=TRANSFER)
    except (ClientError, BotoCoreError) as exc:
        console.fail(f"the upload to s3://{bucket}/{key} failed: {_aws_reason(exc)}")
    what = "uploaded (dry run: validated, nothing sent)" if dry_run else "uploaded"
    console.info(f"{what}: s3://{bucket}/{key}")
    if not follow:
        return console.OK
    found = watch(lambda: _standing(bucket, key), poll_seconds, time.monotonic, time.sleep)
    show(found)
    if not found.final:
        console.fail(f"no result after {FOLLOW_TIMEOUT_SECONDS / 3600:g} h; see `status`")
    return EXIT_CODES.get(found.state, console.OK)


def _encryption(s3: Any, bucket: str) -> dict[str, str]:
    """The bucket's own KMS key, named, when its default encryption has one; else nothing (the
    bucket's default applies). Never ``aws:kms`` alone: that is S3's AWS-managed key."""
    try:
        rules = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]
    except (ClientError, BotoCoreError):
        return {}
    for rule in rules.get("Rules", []):
        default = rule.get("ApplyServerSideEncryptionByDefault", {})
        if default.get("SSEAlgorithm") == "aws:kms" and default.get("KMSMasterKeyID"):
            return {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": default["KMSMasterKeyID"]}
    return {}


def watch(
    look: Callable[[], Standing],
    poll_seconds: float,
    clock: Callable[[], float],
    sleep: Callable[[float], None],
    timeout: float = FOLLOW_TIMEOUT_SECONDS,
) -> Standing:
    """Look every ``poll_seconds`` until the import is final or ``timeout`` passes, printing
    a line whenever its progress moves."""
    deadline = clock() + timeout
    said = ""
    while True:
        found = look()
        line = _progress_line(found)
        if line != said:
            console.info(line)
            said = line
        left = deadline - clock()
        if found.final or left <= 0:
            return found
        sleep(min(poll_seconds, left))


def _progress_line(found: Standing) -> str:
    if found.state == "pending":
        return "waiting for the function to start the import"
    return (
        f"{found.state}: {found.counts.rows:,} rows done, {found.lines:,} lines read, "
        f"{found.chunks:,} requests"
    )
