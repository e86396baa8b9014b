"""The installed ``bulk-import`` console script, run as a person runs it, against the local stack
(moto and the Vital stand-in): exit codes, ``--json`` output, the files written, and no token
in anything it prints."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import access_token, encode_rows, make_row, refresh_token
from tests.integration.conftest import Stack

pytestmark = pytest.mark.integration

SCRIPT = Path(sys.executable).parent / "bulk-import"
TIMEOUT_SECONDS = 120


def bulk_import(
    *args: str, env: dict[str, str], check: int | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the console script; ``check``: the exit code it must end with."""
    done = subprocess.run(  # noqa: S603 - our own console script
        [str(SCRIPT), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_SECONDS,
        check=False,
    )
    if check is not None:
        assert done.returncode == check, done.stderr
    return done


def assert_no_secret(done: subprocess.CompletedProcess[str], secrets: list[str]) -> None:
    for secret in secrets:
        assert secret not in done.stdout
        assert secret not in done.stderr


def tokens(rows: range) -> list[str]:
    return [t for n in rows for t in (access_token(n), refresh_token(n))]


@pytest.fixture
def cli_env(stack: Stack, stack_env: dict[str, str]) -> dict[str, Any]:
    """The stack's environment for a subprocess: moto's endpoint, the stand-in's URL."""
    import os  # noqa: PLC0415

    return {**os.environ, **stack_env, "CHUNK_SIZE": "10"}


def test_the_console_script_is_installed() -> None:
    assert SCRIPT.is_file()


def test_validate_reports_as_json_and_sends_nothing(
    stack: Stack, cli_env: dict[str, str], tmp_path: Path
) -> None:
    rows = [make_row(n, provider=None) for n in range(5)]
    rows.append(dict(rows[1]))
    path = tmp_path / "export.jsonl"
    path.write_bytes(encode_rows(rows, "jsonl"))

    done = bulk_import("validate", str(path), "--json", "--provider", "oura", env=cli_env, check=1)

    doc = json.loads(done.stdout)
    assert doc["counts"] == {"rows": 6, "valid": 5, "rejected": 0, "duplicates": 1}
    assert stack.vital.recorded() == []
    assert_no_secret(done, tokens(range(5)))


def test_validate_of_an_unreadable_file_exits_2_with_one_line(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    path = tmp_path / "broken.json"
    path.write_text('[{"user_id": "x"}', encoding="utf-8")
    done = bulk_import("validate", str(path), env=cli_env, check=2)
    assert done.stdout == ""
    assert done.stderr.startswith("error: broken.json: ")
    assert len(done.stderr.strip().splitlines()) == 1
