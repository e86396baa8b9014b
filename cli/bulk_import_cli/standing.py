"""Where an import in S3 stands, from what the function keeps next to its results: the
manifest (finished), the checkpoint (running, or stopped between invocations) and the object
itself (uploaded, not started yet)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

from botocore.exceptions import ClientError

from bulk_import.errors import aws_error_code
from bulk_import.model import Checkpoint, Counts, Manifest, SourceRef
from bulk_import.storage.keys import CHECKPOINT_NAME, MANIFEST_NAME, STATE_DIR, results_prefix

if TYPE_CHECKING:
    from bulk_import.config import Settings

# The states that are not a manifest's status.
PENDING, RUNNING, NOT_FOUND = "pending", "running", "not found"


class Standing(NamedTuple):
    """An import's state, its counts so far and the last error it met."""

    bucket: str
    key: str
    state: str
    counts: Counts
    chunks: int = 0
    lines: int = 0
    invocations: int = 0
    started_at: str | None = None
    finished_at: str | None = None
    dry_run: bool = False
    last_error: str | None = None
    manifest_key: str | None = None

    @property
    def final(self) -> bool:
        return self.state not in {PENDING, RUNNING}

    def document(self) -> dict[str, Any]:
        """The ``--json`` form."""
        doc = self._asdict()
        doc["counts"] = self.counts.model_dump()
        return doc


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/key`` → (bucket, key); ValueError otherwise."""
    rest = uri.removeprefix("s3://")
    bucket, _, key = rest.partition("/")
    if rest == uri or not bucket or not key:
        raise ValueError(f"{uri}: not an s3://BUCKET/KEY address")
    return bucket, key


def _get(s3: Any, bucket: str, key: str) -> bytes | None:
    try:
        body: bytes = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as exc:
        if aws_error_code(exc) in {"NoSuchKey", "404"}:
            return None
        raise
    return body


def _head(s3: Any, bucket: str, key: str) -> dict[str, Any] | None:
    try:
        head: dict[str, Any] = s3.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if aws_error_code(exc) in {"NoSuchKey", "404", "NotFound"}:
            return None
        raise
    return head


def same_upload(head: dict[str, Any] | None, source: SourceRef) -> bool:
    """Whether ``source`` (a manifest's or checkpoint's) is the object S3 holds now; True when
    the object is gone (the results are all there is)."""
    if head is None:
        return True
    version = head.get("VersionId")
    if version and source.version_id:
        return bool(version == source.version_id)
    return str(head.get("ETag", "")).strip('"') == (source.etag or "")


def standing(s3: Any, bucket: str, key: str, settings: Settings) -> Standing:
    """Read the manifest, the checkpoint and the object's HEAD; say where the import is."""
    prefix = results_prefix(key, settings.incoming_prefix, settings.results_prefix)
    head = _head(s3, bucket, key)
    manifest_body = _get(s3, bucket, prefix + MANIFEST_NAME)
    manifest = Manifest.model_validate_json(manifest_body) if manifest_body else None
    if manifest is not None and same_upload(head, manifest.source):
        return _finished(bucket, key, manifest, prefix + MANIFEST_NAME)
    checkpoint_body = _get(s3, bucket, prefix + STATE_DIR + CHECKPOINT_NAME)
    checkpoint = Checkpoint.model_validate_json(checkpoint_body) if checkpoint_body else None
    if checkpoint is not None and same_upload(head, checkpoint.source):
        return _running(bucket, key, checkpoint)
    state = NOT_FOUND if head is None else PENDING
    return Standing(bucket, key, state, Counts())


def _finished(bucket: str, key: str, manifest: Manifest, manifest_key: str) -> Standing:
    error = manifest.error
    return Standing(
        bucket,
        key,
        manifest.status,
        manifest.counts,
        chunks=len(manifest.chunks),
        lines=manifest.counts.rows,
        invocations=manifest.segments,
        started_at=manifest.started_at,
        finished_at=manifest.finished_at,
        dry_run=manifest.dry_run,
        last_error=f"{error.type}: {error.message}" if error else _last_note(manifest.chunks),
        manifest_key=manifest_key,
    )


def _running(bucket: str, key: str, checkpoint: Checkpoint) -> Standing:
    reason = checkpoint.stop_reason
    return Standing(
        bucket,
        key,
        RUNNING,
        checkpoint.counts,
        chunks=len(checkpoint.chunks),
        lines=checkpoint.lines_done,
        invocations=checkpoint.next_segment,
        started_at=checkpoint.started_at,
        last_error=f"{reason.type}: {reason.message}" if reason else _last_note(checkpoint.chunks),
    )


def _last_note(chunks: list[Any]) -> str | None:
    """The last request that did not go well, as the chunk table notes it."""
    for chunk in reversed(chunks):
        if chunk.note:
            return f"lines {chunk.first_line}-{chunk.last_line}: {chunk.note}"
    return None
