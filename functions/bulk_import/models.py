"""The records of every boundary: input rows, Vital bodies, the result manifest, checkpoints.

Dataclasses checked and written by pydantic-core (``records``): pydantic's ``BaseModel`` would
cost most of the cold start. Constraints and validators are core schemas in ``Annotated``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Annotated, Any, Literal, NotRequired, TypedDict

from pydantic_core import CoreConfig, core_schema

from bulk_import.records import Record

# Providers documented for Link bulk import (the enum is non-exhaustive; the SDK adds runkeeper).
PROVIDERS: frozenset[str] = frozenset(
    {
        "oura",
        "fitbit",
        "garmin",
        "strava",
        "wahoo",
        "ihealth",
        "withings",
        "google_fit",
        "dexcom_v3",
        "polar",
        "cronometer",
        "omron",
        "whoop_v2",
        "my_fitness_pal_v2",
        "ultrahuman",
        "runkeeper",
    }
)
RECIPE_FIELDS: tuple[str, ...] = (
    "user_id",
    "access_token",
    "refresh_token",
    "provider_id",
    "expires_at",
    "oauth_scopes",
)
ROW_FIELDS: tuple[str, ...] = (*RECIPE_FIELDS, "provider")

_SCOPE_SPLIT = re.compile(r"[\s,]+")
# Only the 8-4-4-4-12 form: Python's UUID() also reads 32 bare hex digits, {braces} and
# urn:uuid:, so a 32-hex token in the user_id column (columns swapped) would pass as a user id,
# go to Vital as one and come back in outcomes.csv.
CANONICAL_UUID = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)
USER_ID_FORM = "must be a Vital user id (a UUID written 8-4-4-4-12)"
_INT_TEXT = re.compile(r"[+-]?\d+")
_CANONICAL_LOWER_UUID = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
_PROVIDER_NAME = "^(" + "|".join(sorted(PROVIDERS)) + ")$"


class Outcome(StrEnum):
    IMPORTED = "imported"
    FAILED = "failed"
    ENQUEUED = "enqueued"
    REJECTED = "rejected"
    DUPLICATE = "duplicate"
    ERRORED = "errored"


def _scopes(value: Any) -> Any:
    """CSV cells and some exports carry scopes as one string: space- or comma-separated, or
    a list as a database exports one (a JSON array, a Postgres array literal)."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("[") and text.endswith("]"):
            try:
                return json.loads(text) or None  # then checked as a list of strings
            except (ValueError, RecursionError):  # RecursionError: "[[[[…" nested deep
                raise ValueError(
                    "looks like a JSON array of scopes, but is not valid JSON"
                ) from None
        if text.startswith("{") and text.endswith("}"):
            text = text[1:-1].replace('"', "")  # {daily,heartrate} or {"daily","heartrate"}
        parts = [p for p in _SCOPE_SPLIT.split(text) if p]
        return parts or None
    return value


def _expires_at(value: Any) -> Any:
    """Accept integer epoch seconds, also as text (CSV) or an integral float; never a bool."""
    if isinstance(value, bool):
        raise ValueError("must be an integer (UNIX epoch seconds), not a boolean")
    if isinstance(value, str) and _INT_TEXT.fullmatch(value.strip()):
        return int(value.strip())
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _provider_id(value: Any) -> Any:
    """Provider user ids are strings, but exports often store numeric ones as numbers."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


_NON_EMPTY = core_schema.str_schema(min_length=1)
NonEmptyStr = Annotated[str, _NON_EMPTY]
# Epoch seconds that fit a signed 64-bit integer; strict: a bool or "1.7e9" is not an int here.
_EPOCH = core_schema.int_schema(ge=0, lt=2**63, strict=True)


# Validation context key: the provider named by the object's key or metadata.
DEFAULT_PROVIDER = "default_provider"
NO_PROVIDER = (
    "missing; add a 'provider' field, put the file under incoming/<provider>/, "
    "or set the object's 'provider' metadata"
)


def _known_provider(value: Any, info: core_schema.ValidationInfo) -> Any:
    """Rows without a provider take the file's default from the validation context."""
    if value is None or (isinstance(value, str) and not value.strip()):
        value = (info.context or {}).get(DEFAULT_PROVIDER)
        if value is None:
            raise ValueError(NO_PROVIDER)
    if isinstance(value, str):
        value = value.strip().lower()
        if value not in PROVIDERS:
            raise ValueError("unknown provider; expected one of " + ", ".join(sorted(PROVIDERS)))
    return value


def _user_id(value: str) -> str:
    if CANONICAL_UUID.fullmatch(value):
        return value.lower()
    raise ValueError(USER_ID_FORM)


@dataclass(kw_only=True, frozen=True)
class ConnectionRow(Record):
    """One validated input row: Vital's ConnectionRecipe plus the provider it belongs to."""

    core_config = CoreConfig(str_strip_whitespace=True)

    # Validated first; rows without one take the file's default from the validation context.
    # Not part of the recipe Vital takes (the request names it once): never serialised.
    provider: Annotated[
        str,
        core_schema.with_info_before_validator_function(_known_provider, core_schema.str_schema()),
    ] = field(default="", metadata={"exclude": True, "validate_default": True})
    user_id: Annotated[str, core_schema.no_info_after_validator_function(_user_id, _NON_EMPTY)]
    access_token: NonEmptyStr
    refresh_token: NonEmptyStr
    provider_id: Annotated[
        str, core_schema.no_info_before_validator_function(_provider_id, _NON_EMPTY)
    ]
    expires_at: Annotated[int, core_schema.no_info_before_validator_function(_expires_at, _EPOCH)]
    oauth_scopes: Annotated[
        list[str] | None,
        core_schema.no_info_before_validator_function(
            _scopes, core_schema.nullable_schema(core_schema.list_schema(_NON_EMPTY))
        ),
    ] = None


class WellFormedRow(TypedDict):
    """A row already in canonical form, checked by pydantic-core alone.

    Most rows of most files look like this. ConnectionRow calls back into Python for five
    fields of every row; this type calls none, and as a TypedDict it builds no instance:
    together about half the hot path's validation time. A row it refuses is not invalid: it goes
    on to ConnectionRow, which also takes the lenient spellings (numeric provider ids, epoch
    seconds as text or 1.7e9, scopes in one string, other UUID forms, capitalised providers) and
    says what is wrong. Every row it accepts, ConnectionRow accepts with the same values and the
    same recipe (tests/unit/test_properties.py). ``provider`` may be absent or None (the file's
    default applies); the caller takes it out of the row, leaving exactly the recipe
    (``oauth_scopes`` is filled in when absent). Checked strictly, extra keys ignored, strings
    stripped (``WELL_FORMED_CONFIG``).
    """

    provider: NotRequired[Annotated[str, core_schema.str_schema(pattern=_PROVIDER_NAME)] | None]
    user_id: Annotated[str, core_schema.str_schema(pattern=_CANONICAL_LOWER_UUID)]
    access_token: NonEmptyStr
    refresh_token: NonEmptyStr
    provider_id: NonEmptyStr
    expires_at: Annotated[int, _EPOCH]
    # Filled in when absent: ConnectionRow's default, so both give the same recipe.
    oauth_scopes: NotRequired[
        Annotated[
            list[str] | None,
            core_schema.with_default_schema(
                core_schema.nullable_schema(core_schema.list_schema(_NON_EMPTY)), default=None
            ),
        ]
    ]


WELL_FORMED_CONFIG = CoreConfig(strict=True, str_strip_whitespace=True)


# --- Vital API bodies -------------------------------------------------------------------------


@dataclass(kw_only=True)
class BulkImportResponse(Record):
    """200 body. 202 carries no body (or one we ignore)."""

    user_ids_imported: list[str] = field(default_factory=list)
    user_ids_failed: list[str] = field(default_factory=list)


@dataclass(kw_only=True)
class ValidationIssue(Record):
    """One entry of a 422's ``detail``: where in the body, and what is wrong."""

    loc: list[str | int] = field(default_factory=list)
    msg: str = ""
    type: str = ""


@dataclass(kw_only=True)
class ValidationErrorBody(Record):
    """FastAPI's 422 shape. ``detail`` may also be a plain string on other errors."""

    detail: list[ValidationIssue] | str = field(default_factory=list)


@dataclass(kw_only=True)
class BulkOp(Record):
    """One bulk operation as ``GET /v2/link/bulk_op`` lists it."""

    type: str | None = None
    status: str
    provider: str | None = None
    pending: int | None = None
    processed: int | None = None
    started_at: str | None = None
    ended_at: str | None = None


@dataclass(kw_only=True)
class BulkOpPage(Record):
    """A page of ``GET /v2/link/bulk_op``."""

    data: list[BulkOp] = field(default_factory=list)
    next_cursor: str | None = None


# --- Output contract --------------------------------------------------------------------------

SCHEMA_VERSION = 1
FileStatus = Literal["succeeded", "partial", "failed"]


@dataclass(kw_only=True)
class SourceRef(Record):
    """The object version a manifest or checkpoint belongs to."""

    bucket: str
    key: str
    version_id: str | None = None
    etag: str | None = None
    size: int | None = None
    # S3's event sequencer: with the ETag, tells two uploads of one unversioned key apart.
    sequencer: str | None = None


@dataclass(kw_only=True)
class Counts(Record):
    """Rows per outcome; ``rows`` is their sum."""

    rows: int = 0
    rejected: int = 0
    duplicates: int = 0
    imported: int = 0
    failed: int = 0
    enqueued: int = 0
    errored: int = 0


COUNT_FIELD: dict[Outcome, str] = {
    Outcome.IMPORTED: "imported",
    Outcome.FAILED: "failed",
    Outcome.ENQUEUED: "enqueued",
    Outcome.REJECTED: "rejected",
    Outcome.DUPLICATE: "duplicates",
    Outcome.ERRORED: "errored",
}


@dataclass(kw_only=True)
class ChunkRecord(Record):
    """One request to Vital, as the manifest lists it: which lines, and how it went."""

    provider: str
    first_line: int
    last_line: int
    size: int
    bytes: int
    http_status: int | None = None
    attempts: int = 0
    duration_ms: int = 0
    note: str | None = None


@dataclass(kw_only=True)
class ErrorInfo(Record):
    """Why a file stopped: the error's kind and its message, masked of tokens."""

    type: str
    message: str


@dataclass(kw_only=True)
class Manifest(Record):
    """The output contract, ``results/<path>/manifest.json`` for ``incoming/<path>``."""

    schema_version: int = SCHEMA_VERSION
    source: SourceRef
    status: FileStatus
    started_at: str
    finished_at: str
    counts: Counts
    providers: dict[str, Counts] = field(default_factory=dict)
    chunks: list[ChunkRecord] = field(default_factory=list)
    bulk_ops: list[BulkOp] = field(default_factory=list)
    outcomes_key: str
    # Where the original rows of failed and errored rows are, to fix and upload again.
    retry_key: str | None = None
    # How many invocations the import took (long files continue in fresh invocations).
    segments: int = 1
    error: ErrorInfo | None = None


# --- Work items and checkpoints ---------------------------------------------------------------


@dataclass(kw_only=True, frozen=True)
class ObjectRef(Record):
    """One object version to import, and which invocation (segment) of its import this is.

    The idempotency key: a redelivered S3 event or continuation message maps to the same ref.
    """

    bucket: Annotated[str, core_schema.str_schema(min_length=1)]
    key: str
    version_id: str | None = None
    # Without versioning, the ETag and S3's sequencer tell two uploads of one key apart.
    etag: str | None = None
    sequencer: str | None = None
    segment: Annotated[int, core_schema.int_schema(ge=0)] = 0


@dataclass(kw_only=True)
class ContinuationMessage(Record):
    """The SQS message that hands the rest of a file to a fresh invocation (no tokens)."""

    core_config = CoreConfig(extra_fields_behavior="forbid")

    kind: Literal["bulk-import-continuation"] = "bulk-import-continuation"
    ref: ObjectRef


@dataclass(kw_only=True)
class Checkpoint(Record):
    """What a later invocation needs to resume a file without re-sending any chunk.

    Chunks are numbered in the deterministic order the chunker emits them. ``lease`` is the
    number of chunks that may have been sent; every chunk below ``settled_below`` or in
    ``settled_extra`` has its outcomes stored in ``parts``. A chunk under the lease that is not
    settled is in doubt after a crash: it is reported ``errored``, never sent again. Rejected and
    duplicate rows up to ``lines_done`` are in the parts too.
    """

    schema_version: int = 1
    # Which write this is, "<run>:<n>" (the invocation's token, drawn by each, and its n-th
    # write): a run tells its own write from another import's when S3's answer was lost.
    write: str = ""
    source: SourceRef
    fingerprint: str
    started_at: str
    next_segment: int
    lease: int = 0
    settled_below: int = 0
    settled_extra: list[int] = field(default_factory=list)
    lines_done: int = 0
    # Rows reported in doubt so far (errored, though Vital failed none of them).
    in_doubt: int = 0
    counts: Counts = field(default_factory=Counts)
    providers: dict[str, Counts] = field(default_factory=dict)
    chunks: list[ChunkRecord] = field(default_factory=list)
    outcome_parts: list[str] = field(default_factory=list)
    retry_parts: list[str] = field(default_factory=list)
    stop_reason: ErrorInfo | None = None
