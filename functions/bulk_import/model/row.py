"""One input row: Vital's ConnectionRecipe plus the provider it belongs to.

Two views of the same row. ``ConnectionRow`` takes every spelling exports use (numeric provider
ids, epoch seconds as text, scopes in one string, capitalised providers) and says what is wrong.
``WellFormedRow`` takes only the canonical form, with no Python code per field: most rows of most
files look like that, and it is the hot path's first try.
"""

import json
import re
from typing import Annotated, Any, NotRequired, TypedDict

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    model_validator,
    with_config,
)

from bulk_import.model.providers import OAUTH1_EXPIRES_AT, OAUTH1_PROVIDERS, PROVIDERS

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


def provider_pattern(names: frozenset[str]) -> str:
    """A regular expression that takes exactly these slugs."""
    return "^(" + "|".join(sorted(names)) + ")$"


PROVIDER_PATTERN = provider_pattern(PROVIDERS)
# The same names in any case, for the JSON Schema (whose regexes take no case-insensitive flag).
_ANY_CASE_PROVIDER = (
    r"^\s*("
    + "|".join(
        "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else c for c in name)
        for name in sorted(PROVIDERS)
    )
    + r")\s*$"
)

# Validation context keys: the provider named by the object's key or metadata, and the
# providers the run knows (PROVIDERS and EXTRA_PROVIDERS; PROVIDERS when absent).
DEFAULT_PROVIDER = "default_provider"
KNOWN_PROVIDERS = "known_providers"
NO_PROVIDER = (
    "missing; add a 'provider' field, put the file under incoming/<provider>/, "
    "or set the object's 'provider' metadata"
)
_OAUTH1_NAMES = ", ".join(sorted(OAUTH1_PROVIDERS))
# Names the field (through the error's location) and the constant, never the value: a value in
# the wrong place may be a token.
OAUTH1_EXPIRY = (
    f"must be {OAUTH1_EXPIRES_AT} for OAuth 1.0 providers ({_OAUTH1_NAMES}), "
    "or left empty to have it filled in"
)


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


def _known_provider(value: Any, info: ValidationInfo) -> Any:
    """Rows without a provider take the file's default from the validation context."""
    context = info.context or {}
    if value is None or (isinstance(value, str) and not value.strip()):
        value = context.get(DEFAULT_PROVIDER)
        if value is None:
            raise ValueError(NO_PROVIDER)
    if isinstance(value, str):
        value = value.strip().lower()
        known: frozenset[str] = context.get(KNOWN_PROVIDERS, PROVIDERS)
        if value not in known:
            raise ValueError("unknown provider; expected one of " + ", ".join(sorted(known)))
    return value


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _oauth1_expiry(value: int, info: ValidationInfo) -> int:
    """An OAuth 1.0 provider's tokens never expire: Vital takes only the constant."""
    if value != OAUTH1_EXPIRES_AT and info.data.get("provider") in OAUTH1_PROVIDERS:
        raise ValueError(OAUTH1_EXPIRY)
    return value


def _provider_schema(schema: dict[str, Any]) -> None:
    """A known slug in any case, or null; no default: an absent provider is the key's."""
    schema.pop("default", None)
    for branch in schema.get("anyOf", []):
        if branch.get("type") == "string":
            branch["pattern"] = _ANY_CASE_PROVIDER


def _user_id(value: str) -> str:
    if CANONICAL_UUID.fullmatch(value):
        return value.lower()
    raise ValueError(USER_ID_FORM)


NonEmptyStr = Annotated[str, StringConstraints(min_length=1)]
# Epoch seconds that fit a signed 64-bit integer; strict: a bool or "1.7e9" is not an int here.
EpochSeconds = Annotated[int, Field(ge=0, lt=2**63, strict=True)]
Scopes = list[NonEmptyStr] | None
# What expires_at takes in: the integer, or its digits as text (a CSV cell).
_EpochInput = (
    Annotated[int, Field(ge=0, lt=2**63)]
    | Annotated[str, StringConstraints(pattern=r"^\s*[+]?\d+\s*$")]
)


class ConnectionRow(BaseModel):
    """One validated input row: Vital's ConnectionRecipe plus the provider it belongs to."""

    model_config = ConfigDict(
        defer_build=True, frozen=True, str_strip_whitespace=True, title="Connection row"
    )

    # Validated first; rows without one take the file's default from the validation context.
    # Not part of the recipe Vital takes (the request names it once): never serialised.
    provider: Annotated[
        str, BeforeValidator(_known_provider, json_schema_input_type=str | None)
    ] = Field(
        default="",
        exclude=True,
        validate_default=True,
        description=(
            "Provider slug, any case; when absent, the provider named by the key "
            "(incoming/<provider>/...) or by the object's 'provider' metadata. A deployment "
            "may take more slugs (EXTRA_PROVIDERS) than this schema lists."
        ),
        examples=sorted(PROVIDERS),
        json_schema_extra=_provider_schema,
    )
    user_id: Annotated[NonEmptyStr, AfterValidator(_user_id)] = Field(
        description="Vital user id: a UUID written 8-4-4-4-12 (the user exists beforehand).",
        json_schema_extra={"pattern": "^\\s*" + CANONICAL_UUID.pattern + "\\s*$"},
    )
    access_token: NonEmptyStr = Field(repr=False, description="The provider's OAuth access token.")
    refresh_token: NonEmptyStr = Field(
        repr=False,
        description="OAuth 2.0 refresh token; for OAuth 1.0 providers (Garmin) the token secret.",
    )
    provider_id: Annotated[
        NonEmptyStr, BeforeValidator(_provider_id, json_schema_input_type=str | int)
    ] = Field(description="The user's id at the provider (numbers are read as text).")
    expires_at: Annotated[
        EpochSeconds,
        BeforeValidator(_expires_at, json_schema_input_type=_EpochInput),
        AfterValidator(_oauth1_expiry),
    ] = Field(
        description=(
            "Token expiry in UNIX epoch seconds (an integer, also written as text). OAuth 1.0 "
            f"providers ({_OAUTH1_NAMES}): {OAUTH1_EXPIRES_AT}, filled in when absent, empty "
            "or null; any other value is rejected."
        )
    )
    oauth_scopes: Annotated[
        Scopes, BeforeValidator(_scopes, json_schema_input_type=list[NonEmptyStr] | str | None)
    ] = Field(
        default=None,
        description="Granted scopes: a list, or one string separated by spaces or commas.",
    )

    @model_validator(mode="before")
    @classmethod
    def _oauth1_defaults(cls, data: Any, info: ValidationInfo) -> Any:
        """An OAuth 1.0 row (its own provider, or the file's default) without an expiry takes
        the constant Vital expects. Only rows with no expiry pay for the provider look-up."""
        if not isinstance(data, dict) or not _blank(data.get("expires_at")):
            return data
        provider = data.get("provider")
        if _blank(provider):
            provider = (info.context or {}).get(DEFAULT_PROVIDER)
        if isinstance(provider, str) and provider.strip().lower() in OAUTH1_PROVIDERS:
            return {**data, "expires_at": OAUTH1_EXPIRES_AT}
        return data


@with_config(ConfigDict(strict=True, str_strip_whitespace=True))
class WellFormedRow(TypedDict):
    """A row already in canonical form, checked without calling back into Python.

    A row it refuses is not invalid: it goes on to ConnectionRow, which takes the lenient
    spellings and says what is wrong. Every row it accepts, ConnectionRow accepts with the same
    values and the same recipe (tests/unit/test_properties.py). ``provider`` may be absent or
    None (the file's default applies); the caller takes it out of the row, leaving exactly the
    recipe in ConnectionRow's field order (``oauth_scopes`` is filled in when absent).
    """

    provider: NotRequired[Annotated[str, StringConstraints(pattern=PROVIDER_PATTERN)] | None]
    user_id: Annotated[str, StringConstraints(pattern=_CANONICAL_LOWER_UUID)]
    access_token: NonEmptyStr
    refresh_token: NonEmptyStr
    provider_id: NonEmptyStr
    expires_at: EpochSeconds
    oauth_scopes: NotRequired[Annotated[Scopes, Field(default=None)]]
