"""Turns a parsed record into a ``ConnectionRow``, or a reason naming the field (never a value)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import cache
from typing import Any

from pydantic import TypeAdapter, ValidationError
from pydantic_core import SchemaValidator, core_schema

from bulk_import.model import (
    CANONICAL_UUID,
    DEFAULT_PROVIDER,
    KNOWN_PROVIDERS,
    PROVIDER_PATTERN,
    PROVIDERS,
    ConnectionRow,
    WellFormedRow,
    provider_pattern,
)

type _BlockValidator = Callable[[Sequence[bytes | None]], list[WellFormedRow | None]]


@cache
def _rows() -> TypeAdapter[ConnectionRow]:
    """ConnectionRow's validator, built on first use (a cold start that reads no row skips it)."""
    return TypeAdapter(ConnectionRow)


@cache
def _well_formed_block(providers: frozenset[str]) -> _BlockValidator:
    """A block of JSONL lines in one call, each line parsed on its own (one cannot run into the
    next), None for any line not in canonical form (or blank, or too long: None already).

    WellFormedRow's own schema, wrapped so that a line it refuses becomes None instead of
    failing the block: pydantic's public API has no per-item ``on_error`` default. With
    EXTRA_PROVIDERS, its provider pattern takes those slugs too.
    """
    row = TypeAdapter(WellFormedRow).core_schema
    if providers != PROVIDERS:
        row = _replaced(row, PROVIDER_PATTERN, provider_pattern(providers))
    block = core_schema.list_schema(
        core_schema.with_default_schema(
            core_schema.json_schema(row), default=None, on_error="default"
        )
    )
    validate: _BlockValidator = SchemaValidator(block).validate_python
    return validate


def _replaced(schema: Any, old: str, new: str) -> Any:
    """The core schema with every ``pattern`` equal to ``old`` set to ``new`` (copied as far
    as needed: the model's own schema is left as it is)."""
    if isinstance(schema, dict):
        return {
            key: new if key == "pattern" and value == old else _replaced(value, old, new)
            for key, value in schema.items()
        }
    if isinstance(schema, list):
        return [_replaced(item, old, new) for item in schema]
    return schema


def context_for(
    default_provider: str | None, providers: frozenset[str] = PROVIDERS
) -> dict[str, Any]:
    """The validation context of one file: its default provider, if any, and the providers
    the run knows."""
    return {DEFAULT_PROVIDER: default_provider, KNOWN_PROVIDERS: providers}


def validate_row(
    data: dict[str, Any], default_provider: str | None, providers: frozenset[str] = PROVIDERS
) -> ConnectionRow | str:
    try:
        row = _rows().validate_python(data, context=context_for(default_provider, providers))
    except ValidationError as exc:
        return describe_errors(exc)
    return row


def validate_well_formed(
    lines: Sequence[bytes | None], providers: frozenset[str] = PROVIDERS
) -> list[WellFormedRow | None]:
    """The hot path: a block of JSONL lines, each parsed and checked in one pydantic-core call.

    Gives each line's row if it is in canonical form, ``provider`` included (absent or None:
    the file's default applies); the caller takes it out, leaving the recipe, ready to
    serialise. None sends the line on to ``validate_json_row``, which takes every accepted
    spelling and says what is wrong.
    """
    return _well_formed_block(providers)(lines)


def validate_json_row(raw: bytes, context: dict[str, Any]) -> ConnectionRow | None:
    """Parse and validate a JSONL line in one step; None when the slow path must explain why."""
    try:
        row = _rows().validate_json(raw, context=context)
    except ValidationError:
        return None
    return row


def describe_errors(exc: ValidationError) -> str:
    """'field: message' pairs from pydantic, without the offending input (it may be a token)."""
    parts = []
    for error in exc.errors(include_url=False, include_input=False, include_context=False):
        field = ".".join(str(p) for p in error["loc"]) or "row"
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "missing":
            message = "missing"
        parts.append(f"{field}: {message}")
    return "; ".join(parts)


def display_user_id(data: dict[str, Any] | None) -> str:
    """The user id to show for a rejected row: only a UUID in the form accepted rows have.

    Anything else may be a token in the wrong column (or a formula, or unencodable text).
    """
    value = data.get("user_id") if data else None
    if not isinstance(value, str) or len(value) > 64:
        return ""
    value = value.strip()
    return value.lower() if CANONICAL_UUID.fullmatch(value) else ""


def display_provider(
    data: dict[str, Any] | None, default: str | None, providers: frozenset[str] = PROVIDERS
) -> str:
    """The provider to show for a rejected row: a known provider name, or the file's default.

    An unknown value is shown as '': it may be a token in the wrong column, and it would become
    a key of the manifest's per-provider counts and a metric dimension.
    """
    value = data.get("provider") if data else None
    if _blank(value):
        value = default  # the key's or the object's metadata: as unchecked as a row's
    name = value.strip().lower() if isinstance(value, str) else ""
    return name if name in providers else ""


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())
