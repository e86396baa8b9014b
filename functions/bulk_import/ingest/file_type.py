"""The format and compression of an object, from its key's extensions."""

from __future__ import annotations

from enum import StrEnum

from bulk_import.errors import UnsupportedFile


class Format(StrEnum):
    JSONL = "jsonl"
    JSON = "json"
    CSV = "csv"


class Compression(StrEnum):
    NONE = "none"
    GZIP = "gzip"
    ZSTD = "zstd"


_FORMATS = {
    ".jsonl": Format.JSONL,
    ".ndjson": Format.JSONL,
    ".json": Format.JSON,
    ".csv": Format.CSV,
}
_COMPRESSIONS = {".gz": Compression.GZIP, ".zst": Compression.ZSTD}


def detect(key: str) -> tuple[Format, Compression]:
    """Format and compression from the key's extensions, e.g. ``a/b.csv.gz``."""
    name = key.rsplit("/", 1)[-1].lower()
    compression = Compression.NONE
    for ext, comp in _COMPRESSIONS.items():
        if name.endswith(ext):
            compression, name = comp, name[: -len(ext)]
            break
    for ext, fmt in _FORMATS.items():
        if name.endswith(ext):
            return fmt, compression
    expected = ", ".join(sorted(_FORMATS)) + " (optionally ending in .gz or .zst)"
    raise UnsupportedFile(f"unsupported file type for '{key.rsplit('/', 1)[-1]}'; use {expected}")
