"""What an error from Vital may say: Vital's own text, scrubbed of every secret.

Messages carry status codes, Vital's own validation messages (minus anything that looks like a
token, and minus every token value of the request that caused them) and exception type names
only; never a request or response body, a header or a token.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

import httpx

from bulk_import.model import ValidationErrorBody, ValidationIssue
from bulk_import.redaction import MASK, redact_text

MESSAGE_LIMIT = 300
_MIN_SECRET_LENGTH = 4
# A token in another column (provider_id, a scope) is that long; shorter values there are not.
_MIN_STRAY_SECRET_LENGTH = 12
_TOKEN_FIELDS = frozenset({"access_token", "refresh_token"})


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


def scrub(text: str, secrets: Iterable[str]) -> str:
    """Mask each known secret value, then anything token-shaped."""
    for secret in sorted(secrets, key=len, reverse=True):
        if len(secret) >= _MIN_SECRET_LENGTH:
            text = text.replace(secret, MASK)
    return redact_text(text)


def detail_text(response: httpx.Response, secrets: set[str]) -> str:
    """Vital's ``detail`` when it is a plain string (scrubbed, then cut), else a placeholder."""
    try:
        payload = response.json()
    except ValueError:
        return "no JSON body"
    detail = payload.get("detail") if isinstance(payload, dict) else None
    text = detail if isinstance(detail, str) else "see Vital's response"
    return scrub(text, secrets)[:MESSAGE_LIMIT]


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
    return [
        ValidationIssue(
            loc=[scrub(p, secrets) if isinstance(p, str) else p for p in issue.loc],
            msg=scrub(issue.msg, secrets)[:MESSAGE_LIMIT],
            type=issue.type,
        )
        for issue in body.detail
    ]


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
