"""From an S3 object to rows ready to send: the range stream and decompression, one reader per
format, validation, and chunking. Pure but for the stream's S3 calls."""

from bulk_import.ingest.chunking import (
    LINE_OF,
    USER_ID_OF,
    Chunk,
    Chunker,
    PendingRow,
    serialise,
)
from bulk_import.ingest.dedupe import Dedupe
from bulk_import.ingest.file_type import Compression, Format, detect
from bulk_import.ingest.formats import read_records
from bulk_import.ingest.jsonl import jsonl_blocks, parse_json_line
from bulk_import.ingest.record import CsvPlace, Record, too_long
from bulk_import.ingest.source import (
    DRY_RUN_METADATA,
    SourceObject,
    StartAt,
    can_resume,
    describe,
    dry_run_requested,
    open_stream,
    provider_from_key,
    start_at,
)
from bulk_import.ingest.validation import (
    context_for,
    describe_errors,
    display_provider,
    display_user_id,
    validate_json_row,
    validate_row,
    validate_well_formed,
)

__all__ = [
    "DRY_RUN_METADATA",
    "LINE_OF",
    "USER_ID_OF",
    "Chunk",
    "Chunker",
    "Compression",
    "CsvPlace",
    "Dedupe",
    "Format",
    "PendingRow",
    "Record",
    "SourceObject",
    "StartAt",
    "can_resume",
    "context_for",
    "describe",
    "describe_errors",
    "detect",
    "display_provider",
    "display_user_id",
    "dry_run_requested",
    "jsonl_blocks",
    "open_stream",
    "parse_json_line",
    "provider_from_key",
    "read_records",
    "serialise",
    "start_at",
    "too_long",
    "validate_json_row",
    "validate_row",
    "validate_well_formed",
]
