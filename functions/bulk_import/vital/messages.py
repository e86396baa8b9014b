"""What an error from Vital may say: Vital's own text, scrubbed of every secret.

Messages carry status codes, Vital's own validation messages (minus anything that looks like a
token, minus every token value of the request that caused them, and minus every fragment of 8
characters or more of those values) and exception type names only; never a request or response
body, a header or a token.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable

import httpx

from bulk_import.model import ValidationErrorBody, ValidationIssue
from bulk_import.redaction import MASK, redact_text

MESSAGE_LIMIT = 300
_MIN_SECRET_LENGTH = 4
# A token in another column (provider_id, a scope) is that long; shorter values there are not.
_MIN_STRAY_SECRET_LENGTH = 12
_TOKEN_FIELDS = frozenset({"access_token", "refresh_token"})
# A run of this many characters of a secret is masked wherever it appears (a message that echoes
# a token's first characters); shorter ones only as whole values.
FRAGMENT_LENGTH = 8
# Up to this many distinct windows in an answer's texts, each is searched for in the secrets
# (C speed, ~0.4 ms per MB of secrets); more are looked up while the secrets' windows are walked
# (~0.1 µs per character). They cost the same at about 250.
_SEARCHED_WINDOWS = 200
# The names a 422's ``loc`` may hold: Vital's own vocabulary, kept even where a secret (a
# provider_id such as "provider-user-…") shares 8 characters with them, unless one equals it.
_PUBLIC_LOC = frozenset(
    {
        "body",
        "query",
        "connections",
        "provider",
        "user_id",
        "access_token",
        "refresh_token",
        "provider_id",
        "expires_at",
        "oauth_scopes",
        "wait_for_completion",
        "team_id",
    }
)


def request_secrets(body: bytes) -> set[str]:
    """Every value of a bulk_import body's connections but the user id (error path only).

    Not the tokens alone: a token in the wrong column (``provider_id``, a scope) would come back
    unmasked in a message that quotes it. The user id is in the outcome row anyway.
    """
    try:
        payload = json.loads(body)
    except ValueError:
        return set()
    connections = payload.get("connections") if isinstance(payload, dict) else None
    found: set[str] = set()
    for connection in connections if isinstance(connections, list) else []:
        if not isinstance(connection, dict):
            continue
        for name, value in connection.items():
            if name == "user_id":
                continue
            # Short values of the other fields ("read", "1234") are masked only as tokens are
            # found by shape: masked as substrings, they would cut words out of Vital's text.
            shortest = _MIN_SECRET_LENGTH if name in _TOKEN_FIELDS else _MIN_STRAY_SECRET_LENGTH
            for text in value if isinstance(value, list) else [value]:
                if isinstance(text, str) and len(text) >= shortest:
                    found.add(text)
    return found


def _windows(text: str) -> set[str]:
    return {text[i : i + FRAGMENT_LENGTH] for i in range(len(text) - FRAGMENT_LENGTH + 1)}


def _echoed(secrets: Collection[str], texts: Iterable[str]) -> set[str]:
    """The windows of FRAGMENT_LENGTH characters of ``texts`` that occur in a secret.

    The texts' windows are indexed (a message is short; a 422 may hold thousands). Few of them
    (one message) are each searched for in the secrets joined, in C; many (a 422 with an issue
    per connection) are looked up once for every window of the secrets, one pass in Python. No
    index of the secrets' windows is built: it would take ~80 bytes per character of a 4 MB body.
    """
    wanted: set[str] = set()
    for text in texts:
        wanted |= _windows(text)
    span = FRAGMENT_LENGTH
    if not wanted:
        return set()
    if len(wanted) <= _SEARCHED_WINDOWS:
        # A NUL cannot join two secrets into a false match unless a window holds one too.
        joined = "\0".join(secrets)
        return {window for window in wanted if window in joined}
    found: set[str] = set()
    for secret in secrets:
        if len(secret) >= span:
            found |= wanted.intersection(
                [secret[i : i + span] for i in range(len(secret) - span + 1)]
            )
    return found


def _fragment_spans(text: str, echoed: Collection[str]) -> list[tuple[int, int]]:
    """The maximal runs of ``text`` covered by windows that occur in a secret."""
    spans: list[tuple[int, int]] = []
    span = FRAGMENT_LENGTH
    for i in range(len(text) - span + 1):
        if text[i : i + span] not in echoed:
            continue
        if spans and i <= spans[-1][1]:
            spans[-1] = (spans[-1][0], i + span)
        else:
            spans.append((i, i + span))
    return spans


class Scrubber:
    """Masks a request's secrets in the texts of one answer: each run of FRAGMENT_LENGTH or
    more characters found in a secret (whole values included), shorter whole token values, then
    anything token-shaped.

    Built once per answer from all its texts, so that a 422 with thousands of issues costs one
    pass over the request's secrets.
    """

    def __init__(self, secrets: Iterable[str], texts: Iterable[str]) -> None:
        known = [s for s in secrets if len(s) >= _MIN_SECRET_LENGTH]
        self._short = sorted((s for s in known if len(s) < FRAGMENT_LENGTH), key=len, reverse=True)
        self._echoed = _echoed(known, texts)

    def __call__(self, text: str) -> str:
        spans = _fragment_spans(text, self._echoed) if self._echoed else []
        parts: list[str] = []
        start = 0
        for begin, end in spans:
            parts.append(self._mask_short(text[start:begin]))
            parts.append(MASK)
            start = end
        parts.append(self._mask_short(text[start:]))
        return redact_text("".join(parts))

    def _mask_short(self, text: str) -> str:
        for secret in self._short:
            text = text.replace(secret, MASK)
        return text


def scrub(text: str, secrets: Iterable[str]) -> str:
    """Mask every fragment of 8 characters or more of a secret, short secrets whole, then
    anything token-shaped."""
    return Scrubber(secrets, [text])(text)


def detail_text(response: httpx.Response, secrets: set[str]) -> str:
    """Vital's ``detail`` when it is a plain string (scrubbed, then cut), else a placeholder."""
    try:
        payload = response.json()
    except ValueError:
        return "no JSON body"
    detail = payload.get("detail") if isinstance(payload, dict) else None
    if not isinstance(detail, str):
        return "see Vital's response"
    return scrub(detail, secrets)[:MESSAGE_LIMIT]


def auth_message(status: int, response: httpx.Response, secrets: set[str]) -> str:
    """What a 401 or a 403 means for the operator, with Vital's own (scrubbed) words."""
    what = (
        "Vital rejected the API key (401): check the secret named by VITAL_API_KEY_SECRET "
        "and that it belongs to this environment (production/sandbox, US/EU)"
        if status == 401
        else "Vital refused the request (403): Link Migration may not be enabled for this team, "
        "or no Bring-Your-Own-OAuth credential is set for the provider; ask Vital support"
    )
    return f"{what}. Vital said: {detail_text(response, secrets)}"


def validation_issues(response: httpx.Response, secrets: set[str]) -> list[ValidationIssue]:
    """FastAPI's issues, scrubbed: only loc, msg and type (never ``input``: it echoes data)."""
    try:
        body = ValidationErrorBody.model_validate_json(response.content)
    except ValueError:
        return []
    if isinstance(body.detail, str):
        return []
    texts = [
        *(i.msg for i in body.detail),
        *(p for i in body.detail for p in i.loc if isinstance(p, str) and p not in _PUBLIC_LOC),
    ]
    scrubbed = Scrubber(secrets, texts)
    return [
        ValidationIssue(
            loc=[_loc_part(p, secrets, scrubbed) for p in issue.loc],
            msg=scrubbed(issue.msg)[:MESSAGE_LIMIT],
            type=issue.type,
        )
        for issue in body.detail
    ]


def _loc_part(part: str | int, secrets: set[str], scrubbed: Scrubber) -> str | int:
    if not isinstance(part, str):
        return part
    if part in _PUBLIC_LOC and part not in secrets:
        return part
    return scrubbed(part)


def issues_summary(issues: list[ValidationIssue]) -> str:
    """One line for a 422: its first three issues (already scrubbed), then how many more."""
    if not issues:
        return "Vital rejected the request (422) without details"
    parts = [f"{'.'.join(map(str, i.loc))}: {i.msg}" for i in issues[:3]]
    more = f" (+{len(issues) - 3} more)" if len(issues) > 3 else ""
    return redact_text("Vital rejected the request (422): " + "; ".join(parts) + more)[
        :MESSAGE_LIMIT
    ]


def connection_index(issue: ValidationIssue) -> int | None:
    """The connection a 422 issue points at: ``["body", "connections", 3, ...]`` → 3."""
    loc = issue.loc
    for i, part in enumerate(loc[:-1]):
        if part == "connections" and isinstance(loc[i + 1], int):
            return int(loc[i + 1])
    return None
