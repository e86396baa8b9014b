"""The redaction safety net: token-shaped values are masked, operational identifiers are not."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bulk_import.redaction import MASK, redact_text

SECRET = "tok_SECRET_abc123"
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.Sfl_KxwRJSMeKKF2QT4fwpMeJf36POk6yJV-adQssw5c"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # JSON
        (
            '{"access_token": "tok_SECRET_abc123", "user_id": "u1"}',
            '{"access_token": "[REDACTED]", "user_id": "u1"}',
        ),
        ('{"refresh_token":"tok_SECRET_abc123"}', '{"refresh_token":"[REDACTED]"}'),
        ('{"api_key": "tok_SECRET_abc123"}', '{"api_key": "[REDACTED]"}'),
        ('{"Access_Token" : "tok_SECRET_abc123"}', '{"Access_Token" : "[REDACTED]"}'),
        ('{"access_token": 12345, "n": 1}', '{"access_token": [REDACTED], "n": 1}'),
        # Python reprs (dicts, headers, bytes bodies)
        (
            "{'access_token': 'tok_SECRET_abc123', 'refresh_token': 'ref_SECRET_xyz'}",
            "{'access_token': '[REDACTED]', 'refresh_token': '[REDACTED]'}",
        ),
        (
            "{'x-vital-api-key': 'sk_live_SECRET', 'accept': 'application/json'}",
            "{'x-vital-api-key': '[REDACTED]', 'accept': 'application/json'}",
        ),
        (
            'b\'{"access_token":"tok_SECRET_abc123","expires_at":1}\'',
            'b\'{"access_token":"[REDACTED]","expires_at":1}\'',
        ),
        # query strings and key=value log text
        (
            "GET /callback?code=1&access_token=tok_SECRET_abc123&state=xyz",
            "GET /callback?code=1&access_token=[REDACTED]&state=xyz",
        ),
        (
            "refresh_token=tok_SECRET_abc123&api_key=sk_SECRET",
            "refresh_token=[REDACTED]&api_key=[REDACTED]",
        ),
        ("API_KEY = sk_SECRET done", "API_KEY = [REDACTED] done"),
        ("x-vital-api-key=sk_SECRET", "x-vital-api-key=[REDACTED]"),
        # header lines
        ("x-vital-api-key: sk_live_SECRET", "x-vital-api-key: [REDACTED]"),
        ("X-Vital-API-Key:sk_live_SECRET", "X-Vital-API-Key:[REDACTED]"),
        # bearer credentials and JWTs
        ("sent Bearer tok_SECRET.abc-123/x+y= to it", f"sent Bearer {MASK} to it"),
        (f"token was {JWT}.", f"token was {MASK}."),
        (f'{{"id_token": "{JWT}"}}', f'{{"id_token": "{MASK}"}}'),
    ],
)
def test_masks_token_values(text: str, expected: str) -> None:
    assert redact_text(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "Authorization: Bearer tok_SECRET_abc123",
        "authorization=Bearer%20tok_SECRET_abc123",
        f"Authorization: Bearer {SECRET}, retrying",
        f"{{'access_token': '{SECRET}', 'refresh_token': '{SECRET}'}}",
        f'[{{"access_token":"{SECRET}"}},{{"access_token":"{SECRET}"}}]',
        f"connection {{'refresh_token': '{SECRET}'}} failed",
    ],
)
def test_secret_never_survives(text: str) -> None:
    out = redact_text(text)
    assert SECRET not in out
    assert MASK in out


@pytest.mark.parametrize(
    "text",
    [
        "6f1c2c4e-1111-4222-8333-444455556666",
        "user 6F1C2C4E-1111-4222-8333-444455556666 imported",
        "s3://bucket/incoming/oura/export-2024-01-01.csv.gz",
        "results/oura/export.csv/manifest.json",
        'ETag: "9b2cf535f27731c974343645a3985328-12"',
        '"d41d8cd98f00b204e9800998ecf8427e"',
        "request id 1-67a0b8c2-3f9e2b7d0c1a4e5f6a7b8c9d",
        "chunk oura lines 10-20: HTTP 503 after 2 attempt(s); Retry-After 5",
        "access_token: missing",
        "refresh_token: String should have at least 1 character",
        "rejected by Vital: access_token: Field required",
        "Vital rejected the request (422): body.connections.1.access_token: Field required",
        "tokens: 5 of 7 imported",
        "the key named by VITAL_API_KEY_SECRET could not be read",
        "",
    ],
)
def test_leaves_identifiers_and_ordinary_messages_alone(text: str) -> None:
    assert redact_text(text) == text


def test_is_idempotent() -> None:
    text = f'{{"access_token": "{SECRET}"}} Bearer {SECRET} {JWT} api_key={SECRET}'
    once = redact_text(text)
    assert SECRET not in once
    assert redact_text(once) == once


@pytest.mark.parametrize(
    "text",
    [
        '{"access_token": "tok_SECRET abc123"}',
        "{'refresh_token': 'tok_SECRET,abc123'}",
        'refresh_token="tok_SECRET abc123"',
    ],
)
def test_masks_quoted_values_with_separators(text: str) -> None:
    assert "tok_SECRET" not in redact_text(text)


@pytest.mark.parametrize(
    "text",
    [
        # A backslash could be matched two ways inside a quoted value: 2.6x the time per
        # backslash (172 s for a handler run whose S3 key held 16 of them).
        json.dumps({"key": "incoming/token='" + "\\" * 5000 + "x.jsonl"}),
        "access_token='" + "\\" * 5000,
        # The spaces between exception-group pipes could be split two ways: 2x per " | ".
        json.dumps({"key": "incoming/export\\n" + " | " * 5000}),
        "x\n" + " | " * 5000 + "\n",
    ],
    ids=["json-backslashes", "plain-backslashes", "json-pipes", "plain-pipes"],
)
def test_adversarial_text_is_masked_in_linear_time(text: str) -> None:
    # S3 keys are in every log line: a crafted key must not make logging hang. Before the
    # fix, any of these took longer than the universe has existed; linear, they take ~1 ms.
    # In a child process, so that a regression fails after seconds instead of hanging.
    child = (
        "import sys, time\n"
        "from bulk_import.redaction import redact_text\n"
        "text = sys.stdin.read()\n"
        "started = time.perf_counter()\n"
        "redact_text(text)\n"
        "print(time.perf_counter() - started)\n"
    )
    done = subprocess.run(  # noqa: S603 - our interpreter, fixed code
        [sys.executable, "-c", child],
        input=text,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert float(done.stdout) < 2.0


def test_exception_group_frames_and_escaped_quotes_are_still_masked() -> None:
    assert redact_text('{"m": "x\\n  | ValueError: tok"}') == (
        '{"m": "x\\n  | ValueError: ' + MASK + '"}'
    )
    assert redact_text("access_token='ab\\'c' rest") == f"access_token='{MASK}' rest"


@pytest.mark.parametrize(
    "text",
    [
        'access_token="tok_SECRET_abc123\\"',  # ends in a backslash: never closes
        "refresh_token='tok_SECRET_abc123\\'",
        '"access_token": "tok_SECRET_abc123 and more',  # cut off: masked to the end of the line
    ],
)
def test_a_quoted_value_that_does_not_close_is_masked_to_the_end_of_its_line(text: str) -> None:
    masked = redact_text(text + "\nnext line")
    assert SECRET not in masked
    assert masked.endswith("\nnext line")
