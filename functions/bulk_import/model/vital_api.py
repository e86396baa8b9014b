"""The bodies of Vital's answers, as its public API documents them."""

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

_CONFIG = ConfigDict(defer_build=True)


class BulkImportResponse(BaseModel):
    """200 body of ``POST /v2/link/bulk_import``. A 202 carries no body (or one we ignore)."""

    model_config = _CONFIG

    user_ids_imported: list[str] = Field(default_factory=list)
    user_ids_failed: list[str] = Field(default_factory=list)


class ValidationIssue(BaseModel):
    """One entry of a 422's ``detail``: where in the body, and what is wrong."""

    model_config = _CONFIG

    loc: list[str | int] = Field(default_factory=list)
    msg: str = ""
    type: str = ""


class ValidationErrorBody(BaseModel):
    """FastAPI's 422 shape. ``detail`` may also be a plain string on other errors."""

    model_config = _CONFIG

    detail: list[ValidationIssue] | str = Field(default_factory=list)


class BulkOp(BaseModel):
    """One bulk operation as ``GET /v2/link/bulk_op`` lists it."""

    model_config = _CONFIG

    type: str | None = None
    status: str
    provider: str | None = None
    pending: int | None = None
    processed: int | None = None
    started_at: str | None = None
    ended_at: str | None = None


class BulkOpPage(BaseModel):
    """A page of ``GET /v2/link/bulk_op``."""

    model_config = _CONFIG

    data: list[BulkOp] = Field(default_factory=list)
    next_cursor: str | None = None


class UserProvider(BaseModel):
    """One provider of a user as ``GET /v2/user/providers/{user_id}`` lists it."""

    model_config = _CONFIG

    slug: str
    name: str | None = None
    status: str | None = None
    error_details: Any = None


class UserProviders(BaseModel):
    """The body of ``GET /v2/user/providers/{user_id}``."""

    model_config = _CONFIG

    providers: list[UserProvider] = Field(default_factory=list)
