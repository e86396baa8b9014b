"""``bulk-import run`` before anything is sent (typer's runner): where the API key and the host
come from, and the refusals that exit 2 with one line; the progress lines. The import itself
runs against the local stack in ``tests/integration/test_cli.py``."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from bulk_import.model import Counts
from bulk_import_cli.app import app
from bulk_import_cli.local_import import LocalImport, Snapshot, StaticKey, settings_for
from bulk_import_cli.progress import Display, describe, estimated_rows
from bulk_import_cli.run import Access
from tests.helpers import encode_rows, make_row

RUNNER = CliRunner()
KEY = "sk_unit_key_never_printed_0123456789"


def test_without_an_api_key_it_exits_2_saying_where_to_put_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("VITAL_API_KEY", raising=False)
    path = tmp_path / "a.jsonl"
    path.write_bytes(encode_rows([make_row(0)], "jsonl"))

    result = RUNNER.invoke(app, ["run", str(path), "--out", str(tmp_path / "out")])

    assert result.exit_code == 2
    assert "VITAL_API_KEY" in result.stderr
    assert "--api-key-secret" in result.stderr
    assert not (tmp_path / "out").exists()


def test_an_output_directory_holding_another_files_results_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VITAL_API_KEY", KEY)
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.json").write_text(
        json.dumps(
            {
                "source": {"bucket": "local", "key": "incoming/other.jsonl"},
                "status": "succeeded",
                "started_at": "2026-01-01T00:00:00Z",
                "finished_at": "2026-01-01T00:00:01Z",
                "counts": {},
                "outcomes_key": "results/other.jsonl/outcomes.csv",
            }
        )
    )
    path = tmp_path / "a.jsonl"
    path.write_bytes(encode_rows([make_row(0)], "jsonl"))

    result = RUNNER.invoke(app, ["run", str(path), "--out", str(out)])

    assert result.exit_code == 2
    assert "holds the results of other.jsonl" in result.stderr
    assert KEY not in result.output


def test_a_missing_file_exits_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VITAL_API_KEY", KEY)
    result = RUNNER.invoke(app, ["run", str(tmp_path / "no.csv"), "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "no such file" in result.stderr


@pytest.mark.parametrize(
    ("region", "environment", "base_url"),
    [
        (None, None, "http://127.0.0.1:9"),
        ("eu", None, "https://api.eu.junction.com"),
        (None, "sandbox", "https://api.sandbox.us.junction.com"),
        ("eu", "sandbox", "https://api.sandbox.eu.junction.com"),
    ],
)
def test_the_host_comes_from_the_options_over_the_environment(
    region: str | None, environment: str | None, base_url: str
) -> None:
    env = {"VITAL_API_BASE_URL": "http://127.0.0.1:9", "VITAL_API_KEY": KEY}
    access = Access(None, region, environment, env)
    assert access.settings({}).base_url == base_url


def test_the_settings_name_the_secret_when_one_is_given() -> None:
    access = Access("vital/key", None, None, {"VITAL_API_KEY": KEY})
    assert access.settings({}).vital_api_key_secret == "vital/key"
    assert access.settings({"CHUNK_SIZE": "7"}).chunk_size == 7


def test_a_local_import_never_reaches_the_lambda_s_invocation_cap() -> None:
    assert settings_for({}, {}).max_invocations_per_file >= 1_000_000


def test_a_local_import_stopped_before_it_starts_hands_on_with_nothing_sent(
    tmp_path: Path,
) -> None:
    # Given an import asked to stop before its first row
    path = tmp_path / "a.jsonl"
    path.write_bytes(encode_rows([make_row(n) for n in range(3)], "jsonl"))
    sent: list[httpx.Request] = []

    def vital(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(200, json={"user_ids_imported": [], "user_ids_failed": []})

    local = LocalImport(
        path,
        tmp_path / "out",
        settings_for({"CHUNK_SIZE": "1"}, {}),
        secrets=lambda: StaticKey(KEY),
        transport=httpx.MockTransport(vital),
    )
    local.stop()

    # When it runs
    result = local.execute()

    # Then it sent nothing and stored a checkpoint for the next start
    assert sent == []
    assert result.continuation is not None
    checkpoint = local.checkpoint()
    assert checkpoint is not None
    assert checkpoint.next_segment == 1
    assert local.ref().segment == 1


def test_plain_progress_lines_say_rows_chunks_rate_and_share() -> None:
    line = describe(Snapshot(500, 1000, 2_000, 4, Counts(rows=1_000)), elapsed=4.0)
    assert line == (
        "progress: 1,000 rows done of 2,000 read, 4 chunks answered, 250 rows/s, "
        "50% of the file read"
    )


@pytest.mark.parametrize(
    ("bytes_read", "rows", "estimate"),
    [(0, 0, None), (250, 10, 40), (1000, 37, 37), (1200, 37, 37)],
)
def test_the_row_total_is_estimated_from_the_rows_read_per_byte(
    bytes_read: int, rows: int, estimate: int | None
) -> None:
    assert estimated_rows(Snapshot(bytes_read, 1000, rows, 0, Counts())) == estimate


def test_without_a_terminal_progress_is_a_line_every_few_seconds(
    capsys: pytest.CaptureFixture[str],
) -> None:
    now = [0.0]
    display = Display(tty=False, clock=lambda: now[0])
    for t in (1.0, 2.0, 5.5, 6.0, 11.0):
        now[0] = t
        display.update(Snapshot(10, 100, int(t * 10), 1, Counts()))
    display.close(Snapshot(100, 100, 200, 2, Counts()))
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 3  # at 5.5 s, at 11 s, and the last
    assert lines[-1].startswith("progress: 0 rows done of 200 read, 2 chunks answered")


def test_on_a_terminal_progress_is_a_bar() -> None:
    display = Display(tty=True, clock=lambda: 1.0)
    display.update(Snapshot(10, 100, 5, 1, Counts()))
    display.note("stopping")
    display.close(Snapshot(100, 100, 50, 2, Counts(rows=50)))
    assert display.progress is not None
    assert display.progress.finished
