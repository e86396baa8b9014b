"""``bulk-import validate`` as a person runs it (typer's runner): the report, the exit codes, and
no token in anything it prints."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from bulk_import_cli.app import app
from tests.helpers import access_token, compress, encode_rows, make_row, refresh_token

RUNNER = CliRunner()


def write(tmp_path: Path, name: str, rows: list[dict[str, Any]]) -> Path:
    fmt = name.split(".")[1]
    body = encode_rows(rows, fmt)
    if name.endswith(".gz"):
        body = compress(body, "gz")
    path = tmp_path / name
    path.write_bytes(body)
    return path


def validate(*args: str) -> Any:
    return RUNNER.invoke(app, ["validate", *args])


def assert_no_token(text: str, rows: range) -> None:
    for n in rows:
        assert access_token(n) not in text
        assert refresh_token(n) not in text


def test_given_a_valid_file_then_it_exits_0_with_every_row_valid(tmp_path: Path) -> None:
    path = write(tmp_path, "a.jsonl", [make_row(n, ("oura", "fitbit")[n % 2]) for n in range(6)])

    result = validate(str(path), "--json")

    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["counts"] == {"rows": 6, "valid": 6, "rejected": 0, "duplicates": 0}
    assert doc["providers"] == {
        "fitbit": {"rows": 3, "valid": 3, "rejected": 0, "duplicates": 0},
        "oura": {"rows": 3, "valid": 3, "rejected": 0, "duplicates": 0},
    }
    assert doc["rejected"] == []
    assert_no_token(result.output, range(6))


@pytest.mark.parametrize("name", ["b.csv", "b.json.gz", "b.jsonl"])
def test_given_rejected_and_duplicate_rows_then_it_exits_1_and_lists_the_rejected_lines(
    tmp_path: Path, name: str
) -> None:
    # Given 4 rows, a duplicate of the first, and a row whose user id is not a UUID
    rows = [make_row(n) for n in range(4)]
    rows.append(dict(rows[0]))
    rows.append(make_row(9, user_id="not-a-uuid"))
    path = write(tmp_path, name, rows)

    result = validate(str(path), "--json")

    assert result.exit_code == 1
    doc = json.loads(result.stdout)
    counts = doc["counts"]
    assert counts == {"rows": 6, "valid": 4, "rejected": 1, "duplicates": 1}
    assert counts["valid"] == counts["rows"] - counts["rejected"] - counts["duplicates"]
    (rejected,) = doc["rejected"]
    assert rejected["line"] == (7 if name.endswith(".csv") else 6)  # a CSV's header is line 1
    assert rejected["reason"].startswith("user_id")
    assert rejected["user_id"] == ""  # what is not a UUID is never shown
    assert_no_token(result.output, range(10))


def test_the_provider_option_stands_in_for_the_key_or_metadata(tmp_path: Path) -> None:
    path = write(tmp_path, "c.jsonl", [make_row(n, provider=None) for n in range(3)])

    without = validate(str(path), "--json")
    with_provider = validate(str(path), "--json", "--provider", "whoop_v2")

    assert without.exit_code == 1
    assert json.loads(without.stdout)["counts"]["rejected"] == 3
    assert with_provider.exit_code == 0
    assert list(json.loads(with_provider.stdout)["providers"]) == ["whoop_v2"]


def test_the_readable_report_shows_counts_and_the_first_rejected_lines(tmp_path: Path) -> None:
    rows = [make_row(n, user_id="bad") for n in range(5)] + [make_row(7, provider="polar")]
    path = write(tmp_path, "d.jsonl", rows)

    result = validate(str(path), "--limit", "2")

    assert result.exit_code == 1
    assert "polar" in result.stdout
    assert "first 2 rejected lines" in result.stdout
    assert "1 of 6 rows would be sent" in result.stdout
    assert_no_token(result.output, range(8))


@pytest.mark.parametrize(
    ("name", "body", "message"),
    [
        ("e.txt", b"{}", "unsupported file type"),
        ("e.jsonl.gz", b"\x1f\x8bnot gzip", "gzip data is corrupt"),
        ("e.json", b'[{"user_id": ', "JSON"),
        ("e.csv", b"", "no rows"),
    ],
)
def test_given_a_file_that_cannot_be_read_then_it_exits_2_with_one_line(
    tmp_path: Path, name: str, body: bytes, message: str
) -> None:
    path = tmp_path / name
    path.write_bytes(body)

    result = validate(str(path))

    assert result.exit_code == 2
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.startswith("error: ")
    assert message in result.stderr
    assert "Traceback" not in result.output


def test_given_no_such_file_then_it_exits_2(tmp_path: Path) -> None:
    result = validate(str(tmp_path / "missing.jsonl"))
    assert result.exit_code == 2
    assert "no such file" in result.stderr


def test_validate_needs_no_api_key_and_writes_nothing_beside_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("VITAL_API_KEY", raising=False)
    path = write(tmp_path, "f.jsonl", [make_row(0)])
    result = validate(str(path))
    assert result.exit_code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.jsonl"]
