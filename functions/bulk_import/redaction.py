"""Masks token-shaped text. A safety net for log lines and error messages, not the main defence.

Matches values of token-like JSON/query keys, bearer credentials and JWTs. It deliberately does
not mask UUIDs, ETags, S3 keys or request ids, which the logs need.
"""

from __future__ import annotations

import re

MASK = "[REDACTED]"

_SENSITIVE_NAMES = (
    r"(?:access_token|refresh_token|api_key|apikey|x-vital-api-key|token|secret|password"
    r"|authorization)"
)
_PATTERNS = (
    re.compile(r"(?P<k>\bBearer\s+)(?P<v>[A-Za-z0-9._~+/=-]+)", re.IGNORECASE),
    # JSON Web Tokens: three base64url segments, the first starting with '{"' encoded.
    re.compile(r"(?P<k>)(?P<v>\beyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*)"),
    # "access_token": "value", 'refresh_token': 'a b', access_token="x": quoted values whole
    re.compile(
        rf"""(?P<k>["']?\b{_SENSITIVE_NAMES}["']?\s*(?::|=)\s*)"""
        r"""(?P<q>["'])(?P<v>(?:\\.|(?!(?P=q)).)*)(?P=q)""",
        re.IGNORECASE,
    ),
    # "access_token": value, access_token=value (query strings) and header lines: to a separator
    re.compile(
        rf"""(?P<k>(?:["']{_SENSITIVE_NAMES}["']\s*:|\b{_SENSITIVE_NAMES}\s*=|"""
        rf"""\b(?:x-vital-api-key|authorization)\s*:)\s*)(?P<v>[^"'\s,&}}]+)""",
        re.IGNORECASE,
    ),
)


def _mask(match: re.Match[str]) -> str:
    groups = match.groupdict()
    quote = groups.get("q") or ""
    return f"{groups['k']}{quote}{MASK}{quote}"


def redact_text(text: str) -> str:
    for pattern in _PATTERNS:
        text = pattern.sub(_mask, text)
    return text
