"""The output contract: ``results/<path>/manifest.json`` for ``incoming/<path>``."""

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from bulk_import.model.outcome import Counts
from bulk_import.model.vital_api import BulkOp

SCHEMA_VERSION = 1
FileStatus = Literal["succeeded", "partial", "failed", "validated", "superseded"]
_CONFIG = ConfigDict(defer_build=True)


class SourceRef(BaseModel):
    """The object version a manifest or checkpoint belongs to."""

    model_config = _CONFIG

    bucket: str
    key: str
    version_id: str | None = None
    etag: str | None = None
    size: int | None = None
    # S3's event sequencer: with the ETag, tells two uploads of one unversioned key apart.
    sequencer: str | None = None


class ChunkRecord(BaseModel):
    """One request to Vital, as the manifest lists it: which lines, and how it went."""

    model_config = _CONFIG

    provider: str
    first_line: int
    last_line: int
    size: int = Field(description="Rows in the request.")
    bytes: int = Field(description="Bytes of the request body.")
    http_status: int | None = None
    attempts: int = 0
    duration_ms: int = 0
    note: str | None = None


class ErrorInfo(BaseModel):
    """Why a file stopped: the error's kind and its message, masked of tokens."""

    model_config = _CONFIG

    type: str
    message: str


class Verification(BaseModel):
    """The verification pass (VERIFY_AFTER_IMPORT): imported and enqueued rows' users looked up
    once the file was done."""

    model_config = _CONFIG

    key: str | None = Field(default=None, description="verification.csv, when written.")
    connected: int = 0
    error: int = 0
    missing: int = 0
    unchecked: int = Field(
        default=0, description="Rows not looked up: no time left, or Vital could not be asked."
    )


class Manifest(BaseModel):
    """The result of one file: its status, the counts, every request made."""

    model_config = ConfigDict(defer_build=True, title="Bulk import manifest")

    schema_version: int = SCHEMA_VERSION
    source: SourceRef
    status: FileStatus
    dry_run: bool = Field(
        default=False,
        description="Uploaded with metadata dry-run: true: validated, nothing sent to Vital.",
    )
    started_at: str
    finished_at: str
    counts: Counts
    providers: dict[str, Counts] = Field(default_factory=dict)
    chunks: list[ChunkRecord] = Field(default_factory=list)
    bulk_ops: list[BulkOp] = Field(
        default_factory=list, description="Vital's bulk ops matched to this run after 202s."
    )
    outcomes_key: str | None = Field(
        description="outcomes.csv; null for a superseded import, whose outcomes were not written."
    )
    # Where the original rows of failed and errored rows are, to fix and upload again.
    retry_key: str | None = None
    segments: int = Field(
        default=1, description="Invocations the import took (long files continue in fresh ones)."
    )
    error: ErrorInfo | None = None
    verification: Verification | None = None
    superseded_by: SourceRef | None = Field(
        default=None,
        description="The newer upload of the key that took this import over (status superseded).",
    )
