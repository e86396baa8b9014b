"""Vital's messages, scrubbed: no fragment of 8 characters or more of a request's secret survives.

The tokens here are not token-shaped for the regex safety net (``redaction.redact_text``): only
the scrubbing of the request's own values can catch them.
"""

from __future__ import annotations

import json
import string
import uuid
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bulk_import.redaction import MASK
from bulk_import.vital.messages import (
    FRAGMENT_LENGTH,
    Scrubber,
    connection_index,
    detail_text,
    request_secrets,
    scrub,
    validation_issues,
)

AT = ["plain0001Qx7vK2mZr9WbT4nLs8YdH3c", "plain0002Jk5pR1tG6uE0fA9hM2wXq4z"]
RT = ["refresh0001Vb3nC8xL5kP0sD7gF2jH", "refresh0002Zy6tW1qN4mB9vR3cK8eU"]


def connection(n: int, **overrides: Any) -> dict[str, Any]:
    return {
        "user_id": str(uuid.UUID(int=n + 1)),
        "access_token": AT[n],
        "refresh_token": RT[n],
        "provider_id": f"provider-user-{n:06d}",
        "expires_at": 1_900_000_000,
        **overrides,
    }


def body(*connections: dict[str, Any]) -> bytes:
    conns = list(connections) or [connection(0), connection(1)]
    return json.dumps({"provider": "oura", "connections": conns}).encode()


SECRETS = request_secrets(body())


def survivors(text: str, tokens: list[str]) -> list[str]:
    """Every window of FRAGMENT_LENGTH characters of ``tokens`` still in ``text``."""
    span = FRAGMENT_LENGTH
    return [
        t[i : i + span] for t in tokens for i in range(len(t) - span + 1) if t[i : i + span] in text
    ]


@pytest.mark.parametrize("length", [8, 14, 20])
def test_a_prefix_of_a_token_is_masked(length: int) -> None:
    text = f"Value error, token {AT[0][:length]} was refused"

    assert scrub(text, SECRETS) == f"Value error, token {MASK} was refused"


@pytest.mark.parametrize(
    "fragment",
    [AT[0][-10:], AT[1][7:19], RT[0][-8:], RT[1][2:30]],
    ids=["suffix", "middle", "suffix-of-8", "long-middle"],
)
def test_a_suffix_or_a_middle_fragment_is_masked(fragment: str) -> None:
    assert scrub(f"refused ({fragment})", SECRETS) == f"refused ({MASK})"


def test_fragments_of_two_tokens_in_one_message_are_masked() -> None:
    text = f"token {AT[0][:9]}… and refresh …{RT[1][5:21]} do not match"

    scrubbed = scrub(text, SECRETS)

    assert scrubbed == f"token {MASK}… and refresh …{MASK} do not match"
    assert survivors(scrubbed, AT + RT) == []


def test_adjacent_fragments_of_two_tokens_are_one_mask() -> None:
    assert scrub(f"x{AT[0][:10]}{RT[0][-10:]}y", SECRETS) == f"x{MASK}y"


def test_a_seven_character_fragment_is_left_alone() -> None:
    text = f"token {AT[0][:7]} and {RT[1][3:10]} were refused"

    assert scrub(text, SECRETS) == text


def test_text_without_a_secret_is_unchanged() -> None:
    text = "Value error, user_id cannot be imported: the user is not connected"

    assert scrub(text, SECRETS) == text


def test_ordinary_words_in_a_token_are_masked_only_from_eight_characters() -> None:
    secrets = request_secrets(
        body(connection(0, access_token="xx-cannot-be-xx", refresh_token="zz-imported-zz"))
    )

    scrubbed = scrub("user_id cannot be imported", secrets)

    assert scrubbed == f"user_id cannot be {MASK}"


def test_whole_and_short_values_are_masked_as_before() -> None:
    secrets = request_secrets(body(connection(0, access_token="ab12", refresh_token="Zq9xY7w")))

    assert scrub("ab12 / Zq9xY7w / ab1", secrets) == f"{MASK} / {MASK} / ab1"
    assert scrub(f"whole: {AT[1]}.", SECRETS) == f"whole: {MASK}."


def test_a_422_keeps_its_location_and_masks_what_it_echoes() -> None:
    # provider_id "provider-user-000001" shares "provider" with the loc's field name.
    detail = [
        {
            "type": "value_error",
            "loc": ["body", "connections", 1, "provider_id"],
            "msg": f"Value error, {AT[1][:14]} is not valid",
        },
        {"type": "value_error", "loc": ["body", RT[0][:12]], "msg": "unknown field"},
    ]
    response = httpx.Response(422, json={"detail": detail})

    issues = validation_issues(response, SECRETS)

    assert issues[0].loc == ["body", "connections", 1, "provider_id"]
    assert issues[0].msg == f"Value error, {MASK} is not valid"
    assert connection_index(issues[0]) == 1
    assert issues[1].loc == ["body", MASK]


def test_a_string_detail_is_scrubbed_of_fragments() -> None:
    response = httpx.Response(400, json={"detail": f"bad token {AT[0][:14]}…"})

    assert detail_text(response, SECRETS) == f"bad token {MASK}…"


def test_one_scrubber_serves_every_text_of_an_answer() -> None:
    texts = [f"a {AT[0][:8]}", f"b {RT[1][-9:]}", "c nothing"]
    scrubbed = Scrubber(SECRETS, texts)

    assert [scrubbed(t) for t in texts] == [f"a {MASK}", f"b {MASK}", "c nothing"]


# Tokens hold none of the mask's characters ("[REDACTED]"), so that a window found after
# scrubbing can only be one the scrubbing left.
_TOKEN_ALPHABET = string.ascii_lowercase + string.digits + "-_.~+/"
tokens = st.lists(
    st.text(alphabet=_TOKEN_ALPHABET, min_size=FRAGMENT_LENGTH, max_size=80),
    min_size=1,
    max_size=4,
)
# Upper case and more than 200 distinct windows of 8: none of them in a token.
_MANY_WINDOWS = "".join(
    chr(ord("A") + int(c, 16))
    for i in range(13)
    for c in uuid.uuid5(uuid.NAMESPACE_OID, str(i)).hex
)
filler = st.text(alphabet=string.ascii_lowercase + string.digits + " ,:-'\"()", max_size=20)


@settings(max_examples=300, deadline=None)
@given(tokens=tokens, data=st.data())
def test_no_fragment_of_eight_characters_survives(tokens: list[str], data: st.DataObject) -> None:
    pieces = []
    for _ in range(data.draw(st.integers(1, 6))):
        pieces.append(data.draw(filler))
        token = data.draw(st.sampled_from(tokens))
        start = data.draw(st.integers(0, len(token)))
        end = data.draw(st.integers(start, len(token)))
        pieces.append(token[start:end])
    text = "".join(pieces)
    connections = [
        connection(0, access_token=t, refresh_token=tokens[-1 - i]) for i, t in enumerate(tokens)
    ]

    secrets = request_secrets(body(*connections))

    assert survivors(scrub(text, secrets), tokens) == []
    # With an answer's other texts (many windows), the secrets' windows are walked instead.
    assert survivors(Scrubber(secrets, [text, _MANY_WINDOWS])(text), tokens) == []


def test_a_422_with_an_issue_per_connection_masks_every_echo() -> None:
    n = 60
    tokens = [f"plain{i:04d}{uuid.uuid5(uuid.NAMESPACE_DNS, str(i)).hex}" for i in range(n)]
    conns = [
        connection(0, user_id=str(uuid.UUID(int=i + 1)), access_token=t)
        for i, t in enumerate(tokens)
    ]
    detail = [
        {"type": "value_error", "loc": ["body", "connections", i, "user_id"], "msg": f"{t[3:17]}!"}
        for i, t in enumerate(tokens)
    ]
    response = httpx.Response(422, json={"detail": detail})

    issues = validation_issues(response, request_secrets(body(*conns)))

    assert [i.msg for i in issues] == [f"{MASK}!"] * n
