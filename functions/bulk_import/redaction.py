"""Masks token-shaped text. A safety net for log lines and error messages, not the main defence.

Matches values of token-like JSON/query keys, bearer credentials and JWTs. It deliberately does
not mask UUIDs, ETags, S3 keys or request ids, which the logs need.

Exception messages are masked too, except those of this package's own exceptions (written never to
hold row data): a crash's message may quote a row value (``KeyError: 'tok…'``, ``invalid literal
for int(): 'tok…'``, pydantic's ``input_value=…``), and the logger prints it in the traceback
and in Powertools' structured ``stack_trace``.
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
    # "access_token": "value", 'refresh_token': 'a b', access_token="x": quoted values whole.
    # Possessive over disjoint alternatives (linear time: keys are in every log line). A value
    # that does not close on its line (it ends in a backslash, say) is masked to the line's end.
    re.compile(
        rf"""(?P<k>["']?\b{_SENSITIVE_NAMES}["']?\s*(?::|=)\s*)"""
        r"""(?P<q>["'])(?P<v>(?:\\.|(?!(?P=q))[^\\\n])*+)(?:(?P=q)|[^\n]*)""",
        re.IGNORECASE,
    ),
    # "access_token": value, access_token=value (query strings) and header lines: to a separator
    re.compile(
        rf"""(?P<k>(?:["']{_SENSITIVE_NAMES}["']\s*:|\b{_SENSITIVE_NAMES}\s*=|"""
        rf"""\b(?:x-vital-api-key|authorization)\s*:)\s*)(?P<v>[^"'\s,&}}]+)""",
        re.IGNORECASE,
    ),
)


# Exception messages as the logger renders them: the last line of each traceback block,
# ``module.Type: message`` (also inside exception groups' "  | " frames), except for exceptions
# of this package. In a JSON log line, newlines are the two characters backslash and 'n'.
_OWN = r"(?!bulk_import\.)"
_EXC_NAME = r"(?:[ ]*+\|[ ]?+)*+" + _OWN + r"(?:[A-Za-z_]\w*\.)*[A-Za-z_]\w*: "
_EXCEPTION_PATTERNS = (
    # inside a JSON string: up to the next escaped newline or the closing quote
    (re.compile(r"(?P<k>\\n" + _EXC_NAME + r")(?:[^\"\\]|\\[^n])+"), rf"\g<k>{MASK}"),
    # plain text: up to the end of the line
    (re.compile(r"(?P<k>\n" + _EXC_NAME + r")[^\n]+"), rf"\g<k>{MASK}"),
    # Powertools' structured "stack_trace": {"type": ..., "value": <message>, "module": ...}
    (
        re.compile(
            r'(?P<k>"stack_trace":\s*\{\s*"type":\s*"[^"]*",\s*"value":\s*)"(?:\\.|[^"\\])*"'
            r'(?=,\s*"module":\s*"' + _OWN + ")"
        ),
        rf'\g<k>"{MASK}"',
    ),
    # pydantic's ValidationError text: "[type=..., input_value=<the input>, input_type=...]"
    (re.compile(r"(?P<k>\binput_value=).*?(?=, input_type=|$)", re.MULTILINE), rf"\g<k>{MASK}"),
)


def _mask(match: re.Match[str]) -> str:
    groups = match.groupdict()
    quote = groups.get("q") or ""
    return f"{groups['k']}{quote}{MASK}{quote}"


def redact_text(text: str) -> str:
    for pattern in _PATTERNS:
        text = pattern.sub(_mask, text)
    for exception_pattern, replacement in _EXCEPTION_PATTERNS:
        text = exception_pattern.sub(replacement, text)
    return text
