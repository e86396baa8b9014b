"""Turns a parsed record into a ``ConnectionRow``, or a reason naming the field (never a value)."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from bulk_import.models import ConnectionRow

_NO_PROVIDER = (
    "provider: missing; add a 'provider' field, put the file under incoming/<provider>/, "
    "or set the object's 'provider' metadata"
)


def validate_row(data: dict[str, Any], default_provider: str | None) -> ConnectionRow | str:
    if _blank(data.get("provider")):
        if default_provider is None:
            return _NO_PROVIDER
        data = {**data, "provider": default_provider}
    try:
        return ConnectionRow.model_validate(data)
    except ValidationError as exc:
        return describe_errors(exc)


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
    """The user id to show for a rejected row: only if it is a short string (never a token)."""
    value = data.get("user_id") if data else None
    return value.strip() if isinstance(value, str) and len(value) <= 64 else ""


def display_provider(data: dict[str, Any] | None, default: str | None) -> str:
    value = data.get("provider") if data else None
    if isinstance(value, str) and 0 < len(value) <= 40:
        return value.strip().lower()
    return default or ""


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())
