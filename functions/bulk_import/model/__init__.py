"""The pydantic models of every boundary: input rows, outcomes, the manifest, checkpoints and
work items, and Vital's answers. Each builds its schema on first use (``defer_build``): a cold
start pays only for the models its invocation touches."""

from bulk_import.model.checkpoint import (
    Checkpoint,
    ContinuationMessage,
    DoneChunk,
    DoneRows,
    Handoff,
    LeaseMark,
    ObjectRef,
    ResumePoint,
)
from bulk_import.model.manifest import (
    SCHEMA_VERSION,
    ChunkRecord,
    ErrorInfo,
    FileStatus,
    Manifest,
    SourceRef,
    Verification,
)
from bulk_import.model.outcome import COUNT_FIELD, Counts, Outcome, RowOutcome
from bulk_import.model.providers import (
    OAUTH1_EXPIRES_AT,
    OAUTH1_PROVIDERS,
    PROVIDERS,
    provider_list,
)
from bulk_import.model.row import (
    CANONICAL_UUID,
    DEFAULT_PROVIDER,
    KNOWN_PROVIDERS,
    PROVIDER_PATTERN,
    RECIPE_FIELDS,
    ROW_FIELDS,
    ConnectionRow,
    WellFormedRow,
    provider_pattern,
)
from bulk_import.model.vital_api import (
    BulkImportResponse,
    BulkOp,
    BulkOpPage,
    UserProvider,
    UserProviders,
    ValidationErrorBody,
    ValidationIssue,
)

__all__ = [
    "CANONICAL_UUID",
    "COUNT_FIELD",
    "DEFAULT_PROVIDER",
    "KNOWN_PROVIDERS",
    "OAUTH1_EXPIRES_AT",
    "OAUTH1_PROVIDERS",
    "PROVIDERS",
    "PROVIDER_PATTERN",
    "RECIPE_FIELDS",
    "ROW_FIELDS",
    "SCHEMA_VERSION",
    "BulkImportResponse",
    "BulkOp",
    "BulkOpPage",
    "Checkpoint",
    "ChunkRecord",
    "ConnectionRow",
    "ContinuationMessage",
    "Counts",
    "DoneChunk",
    "DoneRows",
    "ErrorInfo",
    "FileStatus",
    "Handoff",
    "LeaseMark",
    "Manifest",
    "ObjectRef",
    "Outcome",
    "ResumePoint",
    "RowOutcome",
    "SourceRef",
    "UserProvider",
    "UserProviders",
    "ValidationErrorBody",
    "ValidationIssue",
    "Verification",
    "WellFormedRow",
    "provider_list",
    "provider_pattern",
]
