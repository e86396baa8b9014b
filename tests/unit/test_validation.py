"""Row validation: ConnectionRow from JSON- and CSV-shaped dicts; reasons never echo values."""

from __future__ import annotations

import json
from typing import Any

import pytest

from bulk_import.ingest.chunking import Chunker, serialise
from bulk_import.ingest.source import provider_from_key
from bulk_import.ingest.validation import (
    context_for,
    display_provider,
    display_user_id,
    validate_json_row,
    validate_row,
    validate_well_formed,
)
from bulk_import.model import OAUTH1_EXPIRES_AT, OAUTH1_PROVIDERS, PROVIDERS, ConnectionRow

USER = "6f1c2c4e-1111-4222-8333-444455556666"
SECRET = "tok_SECRET_abc123"
REFRESH_SECRET = "ref_SECRET_xyz789"


def json_row(**overrides: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "provider": "oura",
        "user_id": USER,
        "access_token": SECRET,
        "refresh_token": REFRESH_SECRET,
        "provider_id": "oura-user-1",
        "expires_at": 1_700_000_000,
        "oauth_scopes": ["daily", "heartrate"],
    }
    row.update(overrides)
    return {k: v for k, v in row.items() if v is not ...}


def valid(data: dict[str, Any], default: str | None = None) -> ConnectionRow:
    row = validate_row(data, default)
    assert isinstance(row, ConnectionRow), row
    return row


def test_valid_json_row() -> None:
    row = valid(json_row())
    assert json.loads(serialise(row)) == {
        "user_id": USER,
        "access_token": SECRET,
        "refresh_token": REFRESH_SECRET,
        "provider_id": "oura-user-1",
        "expires_at": 1_700_000_000,
        "oauth_scopes": ["daily", "heartrate"],
    }
    assert row.provider == "oura"
    assert serialise(row) == (
        b'{"user_id":"6f1c2c4e-1111-4222-8333-444455556666","access_token":"tok_SECRET_abc123",'
        b'"refresh_token":"ref_SECRET_xyz789","provider_id":"oura-user-1",'
        b'"expires_at":1700000000,"oauth_scopes":["daily","heartrate"]}'
    )


def test_valid_csv_like_row() -> None:
    data = {
        "provider": " Garmin ",
        "user_id": f" {USER.upper()} ",
        "access_token": " a ",
        "refresh_token": "r",
        "provider_id": "12345",
        "expires_at": " 2147483647 ",
        "oauth_scopes": "a b,c ,, d",
    }
    row = valid(data)
    assert row.provider == "garmin"
    assert json.loads(serialise(row)) == {
        "user_id": USER,
        "access_token": "a",
        "refresh_token": "r",
        "provider_id": "12345",
        "expires_at": OAUTH1_EXPIRES_AT,
        "oauth_scopes": ["a", "b", "c", "d"],
    }


@pytest.mark.parametrize(
    ("scopes", "expected"),
    [
        ("a b,c", ["a", "b", "c"]),
        ("  read\twrite  ", ["read", "write"]),
        ("", None),
        ("  , ", None),
        (None, None),
        ([], []),
        (["x"], ["x"]),
        (..., None),
        # A list exported from a database column into a CSV cell: the scopes are its items,
        # not '["daily"' and '"heartrate"]'.
        ('["daily", "heartrate"]', ["daily", "heartrate"]),
        ("[]", None),
        ("{daily,heartrate}", ["daily", "heartrate"]),
        ('{"daily","heartrate"}', ["daily", "heartrate"]),
        ("{}", None),
    ],
)
def test_oauth_scopes(scopes: Any, expected: list[str] | None) -> None:
    assert valid(json_row(oauth_scopes=scopes)).oauth_scopes == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1700000000", 1_700_000_000),
        ("+5", 5),
        ("0", 0),
        (1_700_000_000.0, 1_700_000_000),
        (2_147_483_647, 2_147_483_647),
    ],
)
def test_expires_at_accepted_forms(value: Any, expected: int) -> None:
    expires = valid(json_row(expires_at=value)).expires_at
    assert expires == expected
    assert type(expires) is int


@pytest.mark.parametrize(
    ("value", "expected"),
    [(12345, "12345"), (0, "0"), ("abc", "abc"), ("  x  ", "x")],
)
def test_provider_id_numbers_become_strings(value: Any, expected: str) -> None:
    assert valid(json_row(provider_id=value)).provider_id == expected


@pytest.mark.parametrize("user_id", [USER.upper(), f"  {USER}\t"])
def test_user_id_is_canonical_lowercase_uuid(user_id: str) -> None:
    assert valid(json_row(user_id=user_id)).user_id == USER


@pytest.mark.parametrize(
    "user_id",
    [
        "{" + USER + "}",
        "urn:uuid:" + USER,
        USER.replace("-", ""),
        "a3f1c2d4e5b60718293a4b5c6d7e8f90",  # a 32-hex token in the wrong column
    ],
)
def test_user_id_in_another_uuid_spelling_is_rejected_and_not_shown(user_id: str) -> None:
    """Python reads these as UUIDs, and so would a token of 32 hex digits in that column."""
    data = json_row(user_id=user_id)
    rejected = validate_row(data, None)
    assert not isinstance(rejected, ConnectionRow)
    assert "user_id: must be a Vital user id (a UUID written 8-4-4-4-12)" in str(rejected)
    assert display_user_id(data) == ""


@pytest.mark.parametrize("provider", ["OURA", "Oura", " oura\t"])
def test_provider_is_case_insensitive(provider: str) -> None:
    assert valid(json_row(provider=provider)).provider == "oura"


@pytest.mark.parametrize("provider", sorted(PROVIDERS))
def test_every_documented_provider_is_accepted(provider: str) -> None:
    expires_at = OAUTH1_EXPIRES_AT if provider in OAUTH1_PROVIDERS else 1_700_000_000
    assert valid(json_row(provider=provider, expires_at=expires_at)).provider == provider


def test_default_provider_applies_only_when_row_lacks_one() -> None:
    assert valid(json_row(provider=...), "polar").provider == "polar"
    assert valid(json_row(provider=None), "polar").provider == "polar"
    assert valid(json_row(provider=""), "polar").provider == "polar"
    assert valid(json_row(provider="fitbit"), "polar").provider == "fitbit"
    # The row's own (invalid) provider wins over the default: it is not silently replaced.
    reason = validate_row(json_row(provider="nope"), "polar")
    assert isinstance(reason, str)
    assert reason.startswith("provider: unknown provider; expected one of cronometer, ")


def test_input_dict_is_not_modified() -> None:
    data = json_row(provider=...)
    before = dict(data)
    valid(data, "oura")
    assert data == before


# --- OAuth 1.0 providers: expires_at is the constant 2147483647 ---------------------------------

OAUTH1_REASON = (
    "expires_at: must be 2147483647 for OAuth 1.0 providers (garmin), "
    "or left empty to have it filled in"
)


def test_oauth1_constants_are_the_documented_ones() -> None:
    assert {"garmin"} == OAUTH1_PROVIDERS
    assert OAUTH1_EXPIRES_AT == 2147483647
    assert OAUTH1_PROVIDERS <= PROVIDERS


@pytest.mark.parametrize("expires_at", [..., None, "", "  "])
@pytest.mark.parametrize(("provider", "default"), [("garmin", None), (" Garmin ", "oura")])
def test_given_a_garmin_row_without_expires_at_then_the_constant_is_filled_in(
    expires_at: Any, provider: str, default: str | None
) -> None:
    row = valid(json_row(provider=provider, expires_at=expires_at), default)
    assert (row.provider, row.expires_at) == ("garmin", OAUTH1_EXPIRES_AT)
    assert json.loads(serialise(row))["expires_at"] == OAUTH1_EXPIRES_AT


@pytest.mark.parametrize("default", ["garmin", "Garmin"])
@pytest.mark.parametrize("provider", [..., None, ""])
def test_given_garmin_from_the_key_or_metadata_then_the_constant_is_filled_in(
    provider: Any, default: str
) -> None:
    data = json_row(provider=provider, expires_at=...)
    row = valid(data, default)
    assert (row.provider, row.expires_at) == ("garmin", OAUTH1_EXPIRES_AT)
    assert "expires_at" not in data  # the caller's dict is left as it was


@pytest.mark.parametrize(
    "expires_at", [OAUTH1_EXPIRES_AT, "2147483647", " 2147483647 ", 2147483647.0]
)
def test_given_a_garmin_row_with_the_constant_then_it_is_accepted(expires_at: Any) -> None:
    assert valid(json_row(provider="garmin", expires_at=expires_at)).expires_at == OAUTH1_EXPIRES_AT


@pytest.mark.parametrize(
    "expires_at",
    [1_700_000_000, 0, 2147483646, "2147483648", "918273645546372819"],
)
@pytest.mark.parametrize(("provider", "default"), [("garmin", None), (..., "garmin")])
def test_given_a_garmin_row_with_another_expires_at_then_it_is_rejected_naming_the_constant(
    expires_at: Any, provider: Any, default: str | None
) -> None:
    reason = validate_row(json_row(provider=provider, expires_at=expires_at), default)
    assert reason == OAUTH1_REASON  # the field and the constant, never the value


def test_given_a_garmin_row_when_read_as_json_then_the_same_rules_apply() -> None:
    filled = validate_json_row(
        json.dumps(json_row(provider=None, expires_at=None)).encode(), context_for("garmin")
    )
    assert filled is not None
    assert filled.expires_at == OAUTH1_EXPIRES_AT
    other = json.dumps(json_row(provider="garmin", expires_at=1_700_000_000)).encode()
    assert validate_json_row(other, context_for(None)) is None


@pytest.mark.parametrize("expires_at", [..., None, ""])
@pytest.mark.parametrize(
    ("provider", "default"), [("oura", None), (..., "oura"), ("oura", "garmin")]
)
def test_given_an_oauth2_row_without_expires_at_then_it_is_still_rejected(
    expires_at: Any, provider: Any, default: str | None
) -> None:
    reason = validate_row(json_row(provider=provider, expires_at=expires_at), default)
    assert isinstance(reason, str)
    assert reason.startswith("expires_at: ")
    assert "2147483647" not in reason


def test_the_row_schema_names_the_oauth1_constant() -> None:
    description = ConnectionRow.model_json_schema()["properties"]["expires_at"]["description"]
    assert "OAuth 1.0 providers (garmin): 2147483647" in description


@pytest.mark.parametrize("provider", [..., None, ""])
def test_missing_provider_message(provider: Any) -> None:
    assert validate_row(json_row(provider=provider), None) == (
        "provider: missing; add a 'provider' field, put the file under incoming/<provider>/, "
        "or set the object's 'provider' metadata"
    )


def test_unknown_provider_lists_the_known_ones() -> None:
    assert validate_row(json_row(provider="myspace"), None) == (
        "provider: unknown provider; expected one of " + ", ".join(sorted(PROVIDERS))
    )


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        (
            {"expires_at": True},
            "expires_at: must be an integer (UNIX epoch seconds), not a boolean",
        ),
        (
            {"expires_at": False},
            "expires_at: must be an integer (UNIX epoch seconds), not a boolean",
        ),
        ({"expires_at": 1.5}, "expires_at: Input should be a valid integer"),
        ({"expires_at": "1.5"}, "expires_at: Input should be a valid integer"),
        ({"expires_at": "soon"}, "expires_at: Input should be a valid integer"),
        ({"expires_at": ...}, "expires_at: missing"),
        ({"access_token": ...}, "access_token: missing"),
        ({"refresh_token": ...}, "refresh_token: missing"),
        ({"provider_id": ...}, "provider_id: missing"),
        ({"user_id": ...}, "user_id: missing"),
        ({"access_token": ""}, "access_token: String should have at least 1 character"),
        ({"access_token": "   "}, "access_token: String should have at least 1 character"),
        ({"user_id": "not-a-uuid"}, "user_id: must be a Vital user id (a UUID written 8-4-4-4-12)"),
        ({"user_id": ""}, "user_id: String should have at least 1 character"),
        ({"oauth_scopes": 5}, "oauth_scopes: Input should be a valid list"),
        (
            {"oauth_scopes": '["daily", heartrate]'},
            "oauth_scopes: looks like a JSON array of scopes, but is not valid JSON",
        ),
        ({"oauth_scopes": '["daily", 5]'}, "oauth_scopes.1: Input should be a valid string"),
        ({"oauth_scopes": ["a", ""]}, "oauth_scopes.1: String should have at least 1 character"),
        ({"provider_id": True}, "provider_id: Input should be a valid string"),
        ({"provider": 7}, "provider: Input should be a valid string"),
    ],
)
def test_invalid_rows(overrides: dict[str, Any], reason: str) -> None:
    assert validate_row(json_row(**overrides), None) == reason


def test_several_invalid_fields_are_all_named() -> None:
    reason = validate_row(json_row(access_token=..., expires_at="x", user_id="u"), None)
    assert reason == (
        "user_id: must be a Vital user id (a UUID written 8-4-4-4-12); access_token: missing; "
        "expires_at: Input should be a valid integer"
    )


@pytest.mark.parametrize(
    "overrides",
    [
        {"access_token": 12345},
        {"access_token": [SECRET]},
        {"access_token": {"value": SECRET}},
        {"refresh_token": [REFRESH_SECRET, SECRET]},
        {"refresh_token": 98765.5},
        {"access_token": SECRET, "expires_at": "never"},
        {"access_token": SECRET, "user_id": SECRET},
        {"access_token": SECRET, "provider_id": SECRET, "expires_at": SECRET},
        {"access_token": SECRET, "provider": SECRET},
        {"access_token": SECRET, "oauth_scopes": {SECRET: SECRET}},
        {"access_token": SECRET, "oauth_scopes": [SECRET, 5, ""]},
        {"access_token": SECRET, "user_id": 12345},
        {"access_token": SECRET + "\ud800"},
        {"access_token": f"  {SECRET}", "refresh_token": ""},
    ],
)
def test_reasons_never_contain_token_values(overrides: dict[str, Any]) -> None:
    reason = validate_row(json_row(**overrides), None)
    assert isinstance(reason, str)
    assert reason  # a real reason
    for secret in (SECRET, REFRESH_SECRET, "12345", "98765", "tok_", "ref_"):
        assert secret not in reason, reason


def test_display_helpers() -> None:
    assert display_user_id({"user_id": f" {USER} "}) == USER
    assert display_user_id({"user_id": "x" * 65}) == ""
    assert display_user_id({"user_id": 5}) == ""
    assert display_user_id(None) == ""
    assert display_provider({"provider": " OURA "}, "garmin") == "oura"
    assert display_provider({"provider": ""}, "garmin") == "garmin"
    assert display_provider({"provider": "x" * 41}, None) == ""
    assert display_provider(None, None) == ""
    # The file's default comes from the object's metadata, as unchecked as a row's value: before,
    # "Oura" became a second provider in the manifest and a metric dimension of its own.
    assert display_provider(None, " Oura ") == "oura"
    assert display_provider({"provider": None}, "Not A Provider=1") == ""


@pytest.mark.parametrize("value", [-1, "-5", 2**63, "9" * 5000])
def test_expires_at_out_of_range_is_rejected(value: Any) -> None:
    reason = validate_row(json_row(expires_at=value), None)
    assert isinstance(reason, str)
    assert reason.startswith("expires_at: ")


def test_a_block_of_lines_is_validated_line_by_line() -> None:
    """The hot path validates a JSONL block in one call, but each line is parsed on its own: a
    line cannot run into the next (two halves of an object are two bad lines, not one row)."""
    row = {
        "user_id": "c1fa22f9-2917-49aa-9257-afac6e510cd0",
        "access_token": "a",
        "refresh_token": "r",
        "provider_id": "1",
        "expires_at": 1,
    }
    whole = json.dumps(row).encode()
    half = len(whole) // 2
    lines = [whole, b"", None, whole[:half], whole[half:], b"[" + whole + b"]", whole]
    got = validate_well_formed(lines)
    expected = {**row, "oauth_scopes": None}
    assert got == [expected, None, None, None, None, None, expected]


# --- EXTRA_PROVIDERS: the run's list, through every check -----------------------------------

EXTRA = PROVIDERS | {"acme_ring"}


def test_a_provider_in_the_runs_list_is_accepted_and_one_outside_it_is_not() -> None:
    row = json_row(provider="Acme_Ring")
    accepted = validate_row(row, None, EXTRA)
    assert isinstance(accepted, ConnectionRow)
    assert accepted.provider == "acme_ring"
    assert validate_row(json_row(provider=...), "acme_ring", EXTRA) == accepted
    reason = validate_row(row, None)
    assert isinstance(reason, str)
    assert reason.startswith("provider: unknown provider; expected one of ")
    assert "acme_ring" not in reason
    assert "acme_ring" in str(validate_row(json_row(provider="nope"), None, EXTRA))


def test_the_fast_path_takes_the_runs_providers_and_no_others() -> None:
    line = json.dumps(json_row(provider="acme_ring")).encode()
    documented = json.dumps(json_row(provider="oura")).encode()
    (fast,) = validate_well_formed([line], EXTRA)
    assert fast is not None
    assert fast["provider"] == "acme_ring"
    assert validate_well_formed([line]) == [None]  # on to the full model, which says why
    assert validate_well_formed([documented], EXTRA) == validate_well_formed([documented])


def test_the_key_and_the_rejected_rows_display_name_the_runs_providers() -> None:
    assert provider_from_key("incoming/acme_ring/x.csv", "incoming/", EXTRA) == "acme_ring"
    assert provider_from_key("incoming/acme_ring/x.csv", "incoming/") is None
    assert display_provider({"provider": "ACME_RING"}, None, EXTRA) == "acme_ring"
    assert display_provider({"provider": "ACME_RING"}, None) == ""


def test_no_payload_over_fits_any_is_sent_for_a_longer_extra_provider_name() -> None:
    long_name = "a" * 60
    chunker = Chunker(10, 10_000, PROVIDERS | {long_name})
    assert chunker.fits_alone(long_name, b"x" * chunker.fits_any)
    assert chunker.fits_any < Chunker(10, 10_000).fits_any
