"""Where the command writes: tables and JSON on stdout, progress and messages on stderr.

Every message passes ``clean`` first: the package's token masking plus the exact values of the
secrets this process holds (the API key), so that no mode or error prints one.
"""

from __future__ import annotations

import json
import sys
from typing import Any, NoReturn

import typer
from rich.console import Console

from bulk_import.redaction import redact_text

# Exit codes: a clean result, rows that need attention, the file or the set-up failed, Ctrl-C.
OK, ATTENTION, FAILED, INTERRUPTED = 0, 1, 2, 130

_secrets: set[str] = set()


def hold_secret(value: str) -> None:
    """A value never to print (the API key), masked in every message from here on."""
    if value:
        _secrets.add(value)


def clean(text: str) -> str:
    for secret in _secrets:
        text = text.replace(secret, "***")
    return redact_text(text)


def out() -> Console:
    return Console(soft_wrap=True, highlight=False)


def err() -> Console:
    return Console(stderr=True, soft_wrap=True, highlight=False)


def print_json(document: dict[str, Any]) -> None:
    sys.stdout.write(clean(json.dumps(document, indent=2)) + "\n")
    sys.stdout.flush()


def info(message: str) -> None:
    err().print(clean(message), markup=False)


def fail(message: str, code: int = FAILED) -> NoReturn:
    """One line on stderr, no traceback, and the exit code."""
    first = clean(message).strip().splitlines()[0] if message.strip() else "failed"
    err().print(f"error: {first}", markup=False)
    raise typer.Exit(code)
