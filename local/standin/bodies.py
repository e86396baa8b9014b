"""The body of `POST /v2/link/bulk_import`: its models and the stand-in's one-parse validation.

FastAPI's standard 422 shape is kept: a body the models refuse raises the error FastAPI's own
body parameter would raise.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Annotated, NotRequired, TypedDict
from uuid import UUID

from fastapi import HTTPException
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, StringConstraints, TypeAdapter, ValidationError

from local.standin.contract import Provider


class ConnectionRecipe(BaseModel):
    """One connection as Vital's `bulk_import` takes it."""

    user_id: UUID
    access_token: str
    refresh_token: str
    provider_id: str
    expires_at: int
    oauth_scopes: list[str] | None = None


class BulkImportBody(BaseModel):
    """The body of `POST /v2/link/bulk_import`."""

    provider: Provider
    connections: list[ConnectionRecipe]
    # Omitted: enqueued (202), as Vital's own default.
    wait_for_completion: bool = False


_CANONICAL_UUID = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"


class _CanonicalRecipe(TypedDict):
    """ConnectionRecipe's fields and types, but ``user_id`` only as canonical UUID text."""

    user_id: Annotated[str, StringConstraints(pattern=_CANONICAL_UUID)]
    access_token: str
    refresh_token: str
    provider_id: str
    expires_at: int
    oauth_scopes: NotRequired[list[str] | None]


class _CanonicalBody(TypedDict):
    """A subset of the bodies BulkImportBody takes: the ones whose user ids are canonical.

    For those, ``str(UUID(user_id)) == user_id``, so the ids can stay text: no UUID object is
    built and printed again for each of the hundreds of connections in a request.
    """

    provider: Provider
    connections: list[_CanonicalRecipe]
    wait_for_completion: NotRequired[bool]


_VALIDATE_CANONICAL = TypeAdapter(_CanonicalBody).validator.validate_json


@dataclass(frozen=True, slots=True)
class _Accepted:
    """What the stand-in needs of a valid body."""

    provider: str
    user_ids: list[str]
    wait_for_completion: bool


def _bulk_import_body(raw: bytes) -> _Accepted:
    """The body as FastAPI's own body parameter would take it, 422 included, in one parse.

    pydantic-core parses and validates the bytes in one step, first against ``_CanonicalBody``
    (no Python object per connection), then against BulkImportBody itself; only a body that
    fails both goes through FastAPI's two steps (``json.loads``, then validation of the Python
    objects) to raise exactly the error FastAPI raises. Declaring ``body: BulkImportBody`` takes
    those two steps for every body, about four times the CPU: the stand-in, not the client,
    became the bottleneck of a benchmark (8 requests in flight each wanted 6 ms of its one
    thread inside a 50 ms latency). tests/integration/test_local_stack.py compares the errors
    with FastAPI's own; tests/unit/test_standin_body.py the accepted ids with BulkImportBody's.
    """
    try:
        fast = _VALIDATE_CANONICAL(raw)
    except ValidationError:
        pass
    else:
        return _Accepted(
            fast["provider"],
            [c["user_id"] for c in fast["connections"]],
            fast.get("wait_for_completion", False),
        )
    try:
        return _accepted(BulkImportBody.model_validate_json(raw))
    except ValidationError:
        pass
    if not raw:
        error = {"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}
        raise RequestValidationError([error])
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        error = {
            "type": "json_invalid",
            "loc": ("body", exc.pos),
            "msg": "JSON decode error",
            "input": {},
            "ctx": {"error": exc.msg},
        }
        raise RequestValidationError([error], body=exc.doc) from exc
    except ValueError as exc:  # not UTF-8, or a number too long: FastAPI's catch-all answer
        raise HTTPException(status_code=400, detail="There was an error parsing the body") from exc
    try:
        return _accepted(BulkImportBody.model_validate(data, from_attributes=True))  # as FastAPI
    except ValidationError as exc:
        errors = [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]
        raise RequestValidationError(errors, body=data) from exc


def _accepted(body: BulkImportBody) -> _Accepted:
    return _Accepted(
        body.provider, [str(c.user_id) for c in body.connections], body.wait_for_completion
    )
