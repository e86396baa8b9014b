"""What a resumed import must find unchanged to replay the chunks its checkpoint counted.

A resume re-reads the file and relies on getting the same chunks in the same order: which rows
are accepted and how they are cut depends on these settings and on the code itself (validation,
dedupe, chunking, and pydantic-core underneath). If any differs, the chunk numbers in the
checkpoint point at other rows, and replaying would send some rows twice and skip others.
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path

import pydantic_core

from bulk_import.config import Settings
from bulk_import.ingest.jsonl import RESUME_EVERY_LINES

CODE = "code"


def fingerprint(settings: Settings, resume_every_lines: int = RESUME_EVERY_LINES) -> str:
    """The replay basis as readable JSON: a mismatch can then say what changed."""
    basis = {
        # JSONL and CSV chunks never span a multiple of it (resume points sit there).
        "RESUME_EVERY_LINES": resume_every_lines,
        "CHUNK_SIZE": settings.chunk_size,
        "MAX_BODY_BYTES": settings.max_body_bytes,
        "MAX_ROW_BYTES": settings.max_row_bytes,
        "INCOMING_PREFIX": settings.incoming_prefix,  # the default provider comes from the key
        "EXTRA_PROVIDERS": ",".join(sorted(settings.extra_providers)),  # which rows are valid
        CODE: code_version(),
    }
    return json.dumps(basis, sort_keys=True, separators=(",", ":"))


def changes(stored: str, current: str) -> list[str]:
    """The names whose values differ; every name when ``stored`` is from an older format."""
    mine: dict[str, object] = json.loads(current)
    try:
        theirs = json.loads(stored)
    except ValueError:
        theirs = None
    if not isinstance(theirs, dict):
        return sorted(mine)
    return sorted(
        name for name in mine.keys() | theirs.keys() if mine.get(name) != theirs.get(name)
    )


def describe(changed: list[str]) -> str:
    names = [("the function's code" if name == CODE else name) for name in changed]
    return (
        f"{' and '.join(names) if len(names) < 3 else ', '.join(names)} changed while this file "
        "was being imported, so the rest cannot be resumed without sending rows twice: "
        "upload retry.jsonl or the remaining rows again"
    )


@lru_cache(maxsize=1)
def code_version() -> str:
    """A digest of this package's sources and of pydantic-core's version (a deploy changes it)."""
    return package_digest(Path(__file__).parent.parent)


def package_digest(root: Path) -> str:
    """A digest of every module under ``root`` (by path and content) and of pydantic-core."""
    digest = hashlib.sha256(pydantic_core.__version__.encode())
    for path in sorted(root.rglob("*.py")):
        name = path.relative_to(root).as_posix()
        digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]
