"""The published JSON Schemas: generated from the models, and they say what the importer reads
and writes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from bulk_import.model import ConnectionRow, Counts, Manifest, SourceRef
from local import schemas

SAMPLES = Path(__file__).resolve().parents[2] / "events" / "samples"
GOOD = {
    "provider": "oura",
    "user_id": "6d7c1b4e-5a1f-4f7e-9f3e-2f1d8d9a0b11",
    "access_token": "at",
    "refresh_token": "rt",
    "provider_id": "p",
    "expires_at": 1_700_000_000,
}


def _validator(name: str) -> jsonschema.Draft202012Validator:
    schema = json.loads((schemas.DIRECTORY / name).read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


@pytest.mark.parametrize("name", sorted(schemas.SCHEMAS))
def test_the_committed_schema_is_what_the_models_generate(name: str) -> None:
    # Given the schema in schemas/, When the models generate it again, Then nothing differs
    assert (schemas.DIRECTORY / name).read_text(encoding="utf-8") == schemas.render(name), (
        f"schemas/{name} is out of date: run `make schemas`"
    )


def test_check_mode_reports_a_drifted_schema(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a schemas directory holding a stale file
    monkeypatch.setattr(schemas, "DIRECTORY", tmp_path)
    assert schemas.main([]) == 0
    (tmp_path / "manifest.schema.json").write_text("{}\n", encoding="utf-8")
    # Then --check fails, and a rewrite repairs it
    assert schemas.main(["--check"]) == 1
    assert schemas.main([]) == 0
    assert schemas.main(["--check"]) == 0


def test_every_row_of_the_jsonl_sample_that_the_importer_takes_is_valid_by_the_schema() -> None:
    validator = _validator("connection-row.schema.json")
    rows = [json.loads(line) for line in (SAMPLES / "connections.jsonl").read_text().splitlines()]
    taken = [row for row in rows if _imports(row)]
    assert len(taken) >= 3
    for row in taken:
        assert list(validator.iter_errors(row)) == []


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"user_id": "not-a-uuid"}, "user_id"),
        ({"user_id": "6d7c1b4e5a1f4f7e9f3e2f1d8d9a0b11"}, "user_id"),  # 32 bare hex digits
        ({"access_token": ""}, "access_token"),
        ({"expires_at": -1}, "expires_at"),
        ({"expires_at": "1.7e9"}, "expires_at"),
        ({"oauth_scopes": [""]}, "oauth_scopes"),
        ({"refresh_token": None}, "refresh_token"),
        ({"provider": "nope"}, "provider"),
        ({"provider": "oura2"}, "provider"),
    ],
)
def test_a_row_the_importer_rejects_is_invalid_by_the_schema(
    change: dict[str, Any], field: str
) -> None:
    row = {**GOOD, **change}
    assert not _imports(row)
    errors = list(_validator("connection-row.schema.json").iter_errors(row))
    assert [list(e.absolute_path)[:1] for e in errors] == [[field]]


@pytest.mark.parametrize(
    "change",
    [
        {"provider_id": 12345},
        {"expires_at": "1700000000"},
        {"oauth_scopes": "daily, heartrate"},
        {"provider": " Oura "},
        {"provider": "WHOOP_V2"},
    ],
)
def test_the_lenient_spellings_the_importer_takes_are_valid_by_the_schema(
    change: dict[str, Any],
) -> None:
    row = {**GOOD, **change}
    assert _imports(row)
    assert list(_validator("connection-row.schema.json").iter_errors(row)) == []


def test_a_manifest_the_importer_writes_is_valid_by_the_schema() -> None:
    manifest = Manifest(
        source=SourceRef(bucket="b", key="incoming/a.jsonl", size=3),
        status="partial",
        started_at="2026-12-06T00:00:00.000Z",
        finished_at="2026-12-06T00:00:01.000Z",
        counts=Counts(rows=2, imported=1, rejected=1),
        providers={"oura": Counts(rows=1, imported=1)},
        outcomes_key="results/a.jsonl/outcomes.csv",
    )
    validator = _validator("manifest.schema.json")
    assert list(validator.iter_errors(json.loads(manifest.model_dump_json()))) == []
    assert list(validator.iter_errors({"status": "partial"}))  # the required fields


def _imports(row: dict[str, Any]) -> bool:
    try:
        ConnectionRow.model_validate(row)
    except ValueError:
        return False
    return True
