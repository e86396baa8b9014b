"""Row and file builders shared by the test suites (not shipped; S3 events: local.events)."""

from __future__ import annotations

import csv
import gzip
import io
import json
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import zstandard

from bulk_import.model import OAUTH1_EXPIRES_AT, OAUTH1_PROVIDERS, RECIPE_FIELDS

RECIPE_COLUMNS = ("provider", *RECIPE_FIELDS)


def user_id(n: int, namespace: str = "tests") -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"{namespace}/{n}"))


def access_token(n: int) -> str:
    """Unmistakable fake token values, searched for in every output by the hygiene tests."""
    return f"tok-AT-{n:06d}-{uuid.uuid5(uuid.NAMESPACE_DNS, str(n)).hex[:12]}"


def refresh_token(n: int) -> str:
    return f"tok-RT-{n:06d}-{uuid.uuid5(uuid.NAMESPACE_OID, str(n)).hex[:12]}"


def make_row(n: int, provider: str | None = "oura", **overrides: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "user_id": user_id(n),
        "access_token": access_token(n),
        "refresh_token": refresh_token(n),
        "provider_id": f"provider-user-{n}",
        # OAuth 1.0 providers (Garmin) take only the constant.
        "expires_at": OAUTH1_EXPIRES_AT if provider in OAUTH1_PROVIDERS else 1_893_456_000,
        "oauth_scopes": ["daily", "heartrate"],
    }
    if provider is not None:
        row["provider"] = provider
    row.update(overrides)
    return row


def encode_rows(rows: Sequence[dict[str, Any]], fmt: str) -> bytes:
    """Rows as the file bytes of ``fmt``: jsonl/ndjson, json (array) or csv."""
    if fmt in {"jsonl", "ndjson"}:
        return "".join(json.dumps(r) + "\n" for r in rows).encode()
    if fmt == "json":
        return json.dumps(list(rows), indent=1).encode()
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(RECIPE_COLUMNS)
        for r in rows:
            cells = []
            for column in RECIPE_COLUMNS:
                value = r.get(column)
                if isinstance(value, list):
                    value = " ".join(map(str, value))
                cells.append("" if value is None else str(value))
            writer.writerow(cells)
        return out.getvalue().encode()
    raise ValueError(fmt)


def compress(data: bytes, compression: str) -> bytes:
    if compression == "gz":
        return gzip.compress(data)
    if compression == "zst":
        return zstandard.ZstdCompressor().compress(data)
    return data


def parse_outcomes(data: bytes) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(data.decode("utf-8"))))


def all_strings(value: Any) -> Iterator[str]:
    """Every string in a JSON-like value, keys included (what a leak search must look for)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from all_strings(k)
            yield from all_strings(v)
    elif isinstance(value, list):
        for item in value:
            yield from all_strings(item)


def failing_at(original: Callable[..., Any], nth: int, error: BaseException) -> Callable[..., Any]:
    """``original``, except that its ``nth`` call raises ``error``: a fault at a chosen moment
    (patched over a function or a method; the instance comes through as the first argument)."""
    calls = 0

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == nth:
            raise error
        return original(*args, **kwargs)

    return wrapper
