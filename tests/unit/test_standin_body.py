"""The Vital stand-in's fast body parse accepts what BulkImportBody accepts, with the same ids.

The stand-in first tries a text-only schema (``_CanonicalBody``) and falls back to the real
model; a body the fast schema takes must give exactly what the model gives, and a body the
model refuses must still be refused. The error bodies themselves are compared with FastAPI's in
tests/integration/test_local_stack.py.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from fastapi import HTTPException
from fastapi.exceptions import RequestValidationError
from hypothesis import example, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from local.standin import BulkImportBody, _bulk_import_body

MISSING = object()

uuids = st.uuids()
user_ids = st.one_of(
    uuids.map(str),
    uuids.map(lambda u: str(u).upper()),
    uuids.map(lambda u: u.hex),
    uuids.map(lambda u: "{" + str(u) + "}"),
    uuids.map(lambda u: f"urn:uuid:{u}"),
    uuids.map(lambda u: " " + str(u)),
    st.text(max_size=40),
    st.integers(),
    st.none(),
)
texts = st.one_of(st.text(max_size=12), st.integers(), st.none(), st.booleans())
ints = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.integers(0, 2**40).map(str),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.text(max_size=5),
)
scopes = st.one_of(st.none(), st.lists(texts, max_size=3), st.text(max_size=5))


def _field(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(strategy, st.just(MISSING))


connections = st.fixed_dictionaries(
    {
        "user_id": _field(user_ids),
        "access_token": _field(texts),
        "refresh_token": _field(texts),
        "provider_id": _field(texts),
        "expires_at": _field(ints),
        "oauth_scopes": _field(scopes),
        "extra": _field(texts),
    }
).map(lambda d: {k: v for k, v in d.items() if v is not MISSING})
bodies = st.fixed_dictionaries(
    {
        "provider": _field(st.sampled_from(["oura", "Oura", "whoop_v2", "nope", ""])),
        "connections": _field(st.lists(connections, max_size=4)),
        "wait_for_completion": _field(st.one_of(st.booleans(), st.sampled_from(["yes", 0, 2]))),
    }
).map(lambda d: {k: v for k, v in d.items() if v is not MISSING})


def _reference(raw: bytes) -> tuple[str, list[str], bool] | None:
    try:
        body = BulkImportBody.model_validate_json(raw)
    except ValidationError:
        return None
    return body.provider, [str(c.user_id) for c in body.connections], body.wait_for_completion


def _standin(raw: bytes) -> tuple[str, list[str], bool] | None:
    try:
        accepted = _bulk_import_body(raw)
    except (RequestValidationError, HTTPException):
        return None
    return accepted.provider, accepted.user_ids, accepted.wait_for_completion


CANONICAL = str(uuid.UUID(int=0xABC))
GOOD = {
    "user_id": CANONICAL,
    "access_token": "a",
    "refresh_token": "r",
    "provider_id": "1",
    "expires_at": 1,
}


@settings(max_examples=400, deadline=None)
@given(bodies)
@example({"provider": "oura", "connections": [GOOD]})
@example({"provider": "oura", "connections": [{**GOOD, "user_id": CANONICAL.upper()}]})
@example({"provider": "oura", "connections": [{**GOOD, "expires_at": "12"}]})
def test_fast_parse_accepts_what_the_model_accepts(body: dict[str, Any]) -> None:
    raw = json.dumps(body).encode()

    assert _standin(raw) == _reference(raw)


@pytest.mark.parametrize("user_id", [CANONICAL, CANONICAL.upper(), CANONICAL.replace("-", "")])
def test_ids_come_back_canonical(user_id: str) -> None:
    raw = json.dumps({"provider": "oura", "connections": [{**GOOD, "user_id": user_id}]})

    assert _bulk_import_body(raw.encode()).user_ids == [CANONICAL]


def test_the_provider_enum_is_the_importers_list_and_its_extra_providers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    body = {
        "provider": "acme_ring",
        "connections": [
            {
                "user_id": str(uuid.uuid4()),
                "access_token": "a",
                "refresh_token": "r",
                "provider_id": "1",
                "expires_at": 1,
            }
        ],
    }
    raw = json.dumps(body).encode()
    monkeypatch.delenv("EXTRA_PROVIDERS", raising=False)
    with pytest.raises(RequestValidationError) as refused:
        _bulk_import_body(raw)
    (error,) = refused.value.errors()
    assert (error["type"], error["loc"]) == ("literal_error", ("body", "provider"))
    assert error["msg"].startswith("Input should be 'cronometer', ")
    monkeypatch.setenv("EXTRA_PROVIDERS", "acme_ring")
    assert _bulk_import_body(raw).provider == "acme_ring"
