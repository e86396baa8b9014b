"""``bulk-import verify`` and the look-up under it (``vital.user_providers``), with Vital as an
``httpx.MockTransport``: what each answer makes of a row, the report written, the exit code."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import stamina
from typer.testing import CliRunner

from bulk_import.config import Settings
from bulk_import.errors import VitalAuthError
from bulk_import.vital import VitalClient, user_providers
from bulk_import_cli.app import app
from bulk_import_cli.run import Access
from bulk_import_cli.verify import verify
from tests.helpers import user_id

KEY = "sk_verify_key_never_printed_0123456789"
BASE = "http://vital.test"
HEADER = "line,user_id,provider,outcome,detail\n"


@pytest.fixture(autouse=True)
def _no_waiting() -> Iterator[None]:
    with stamina.set_testing(True, attempts=3, cap=True):
        yield


def provider(slug: str, status: str = "connected", **extra: Any) -> dict[str, Any]:
    return {"name": slug.title(), "slug": slug, "status": status, **extra}


class Vital:
    """Answers ``GET /v2/user/providers/{user_id}`` from a table; unknown users get 404."""

    def __init__(self, users: dict[str, list[dict[str, Any]] | httpx.Response]) -> None:
        self.users = users
        self.asked: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        assert request.headers["x-vital-api-key"] == KEY
        wanted = request.url.path.removeprefix("/v2/user/providers/")
        self.asked.append(wanted)
        answer = self.users.get(wanted)
        if answer is None:
            return httpx.Response(404, json={"detail": "User not found."})
        if isinstance(answer, httpx.Response):
            return answer
        return httpx.Response(200, json={"providers": answer})


SETTINGS = Settings(vital_api_key_secret="x", vital_api_base_url=BASE)


def client(vital: Any) -> VitalClient:
    return VitalClient(SETTINGS, KEY, lambda: 900.0, httpx.MockTransport(vital))


def test_a_known_user_s_providers_and_an_unknown_user() -> None:
    vital = Vital({user_id(1): [provider("oura"), provider("fitbit", "error")]})
    with client(vital) as c:
        found = user_providers(c, user_id(1))
        assert found is not None
        assert [(p.slug, p.status) for p in found] == [("oura", "connected"), ("fitbit", "error")]
        assert user_providers(c, user_id(2)) is None


def test_a_refused_key_is_an_auth_error_and_a_5xx_is_retried() -> None:
    flaky = iter([httpx.Response(503), httpx.Response(200, json={"providers": []})])
    vital = Vital({user_id(1): httpx.Response(401, json={"detail": "bad key"})})
    with client(vital) as c, pytest.raises(VitalAuthError):
        user_providers(c, user_id(1))
    with client(lambda request: next(flaky)) as c:
        assert user_providers(c, user_id(3)) == []


def write_outcomes(path: Path, rows: list[tuple[int, str, str, str]]) -> Path:
    path.write_text(
        HEADER + "".join(f"{line},{uid},{prov},{outcome},\n" for line, uid, prov, outcome in rows),
        encoding="utf-8",
    )
    return path


def read_report(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"))))


def test_verify_writes_one_line_per_row_that_may_have_reached_vital(tmp_path: Path) -> None:
    # Given imported, enqueued and errored rows (checked), and failed, rejected and duplicate
    # rows (not checked)
    outcomes = write_outcomes(
        tmp_path / "outcomes.csv",
        [
            (2, user_id(1), "oura", "imported"),
            (3, user_id(1), "fitbit", "enqueued"),
            (4, user_id(2), "oura", "errored"),
            (5, user_id(3), "oura", "imported"),
            (6, user_id(4), "oura", "failed"),
            (7, "", "", "rejected"),
            (8, user_id(1), "oura", "duplicate"),
            (9, user_id(5), "whoop_v2", "imported"),
        ],
    )
    vital = Vital(
        {
            user_id(1): [provider("oura"), provider("fitbit", "error", error_details="revoked")],
            user_id(2): [],
            user_id(5): [provider("whoop_v2", "paused")],
        }
    )
    report = tmp_path / "verified.csv"
    access = Access(None, None, None, {"VITAL_API_KEY": KEY, "VITAL_API_BASE_URL": BASE})

    # When it is verified
    code = verify(outcomes, report, access, 2, httpx.MockTransport(vital))

    # Then each checked row has a status, each user was asked once, and the exit code says so
    assert code == 1
    assert [(r["line"], r["status"]) for r in read_report(report)] == [
        ("2", "connected"),
        ("3", "error"),
        ("4", "missing"),
        ("5", "missing"),
        ("9", "error"),
    ]
    details = {r["line"]: r["detail"] for r in read_report(report)}
    # Vital's own error text is not copied: it may quote a token
    assert details["3"] == "Vital lists this connection as error: see GET /v2/user/providers"
    assert "revoked" not in report.read_text()
    assert details["5"] == "Vital does not know this user"
    assert details["9"] == "Vital lists this connection as paused: see GET /v2/user/providers"
    assert sorted(vital.asked) == sorted({user_id(n) for n in (1, 2, 3, 5)})


def test_verify_exits_0_when_every_connection_is_live(tmp_path: Path) -> None:
    outcomes = write_outcomes(tmp_path / "o.csv", [(2, user_id(1), "oura", "imported")])
    access = Access(None, None, None, {"VITAL_API_KEY": KEY, "VITAL_API_BASE_URL": BASE})
    vital = Vital({user_id(1): [provider("oura")]})
    assert verify(outcomes, tmp_path / "r.csv", access, 1, httpx.MockTransport(vital)) == 0


def test_verify_of_a_file_that_is_not_an_outcomes_csv_exits_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VITAL_API_KEY", KEY)
    path = tmp_path / "x.csv"
    path.write_text("a,b\n1,2\n", encoding="utf-8")
    result = CliRunner().invoke(app, ["verify", str(path), "--out", str(tmp_path / "r.csv")])
    assert result.exit_code == 2
    assert "not an outcomes.csv" in result.stderr
    assert KEY not in result.output
