"""The verification pass (VERIFY_AFTER_IMPORT): what Vital lists decides each row's status.

A fresh import of 12 rows, all imported (``FakePost``), then every user looked up through a fake
Vital transport: connected, listed with an error, or not listed; or Vital not answering.
"""

from __future__ import annotations

import csv
import io

import httpx

from bulk_import.config import Settings
from bulk_import.model import ObjectRef, Verification
from tests.fakes import FakePost, FakeS3, FakeVital, StoreState, run_offline
from tests.helpers import encode_rows, make_row, user_id

BUCKET = "bucket-a"
KEY = "incoming/oura/a.jsonl"
VERIFICATION = "results/oura/a.jsonl/verification.csv"
SECRET = "tok_" + "s3cr3t" * 5


def import_and_verify(vital: FakeVital, **env: str) -> tuple[FakeS3, Verification | None]:
    s3 = FakeS3()
    s3.put(KEY, encode_rows([make_row(n) for n in range(12)], "jsonl"))
    config = Settings.from_env(
        {"VITAL_API_KEY_SECRET": "k", "CHUNK_SIZE": "5", "VERIFY_AFTER_IMPORT": "true", **env}
    )
    result = run_offline(
        s3,
        StoreState(),
        config,
        ObjectRef(bucket=BUCKET, key=KEY, sequencer="0A"),
        transport=httpx.MockTransport(vital),
        post_chunk=FakePost(),
    )
    assert result.manifest is not None
    return s3, result.manifest.verification


def listed(status: str = "connected", details: object = None) -> dict[str, object]:
    return {"slug": "oura", "name": "Oura", "status": status, "error_details": details}


def test_each_imported_user_gets_the_status_vital_lists() -> None:
    vital = FakeVital(providers={user_id(n): [listed()] for n in range(8)})
    vital.providers[user_id(8)] = [listed("error", {"message": f"token {SECRET} expired"})]
    vital.providers[user_id(9)] = [listed() | {"slug": "fitbit"}]  # another provider only
    s3, verification = import_and_verify(vital)

    assert verification == Verification(key=VERIFICATION, connected=8, error=1, missing=3)
    rows = list(csv.DictReader(io.StringIO(s3.objects[VERIFICATION].decode())))
    by_user = {r["user_id"]: r for r in rows}
    assert len(rows) == 12
    assert by_user[user_id(0)]["status"] == "connected"
    assert by_user[user_id(8)]["status"] == "error"
    assert by_user[user_id(8)]["detail"].startswith("Vital lists this connection as error")
    assert SECRET not in s3.objects[VERIFICATION].decode()
    assert by_user[user_id(9)]["status"] == by_user[user_id(11)]["status"] == "missing"
    assert vital.asked.count(f"/v2/user/providers/{user_id(3)}") == 1


def test_when_vital_cannot_be_asked_the_rows_are_unchecked_not_missing() -> None:
    vital = FakeVital(down=True)
    s3, verification = import_and_verify(vital, MAX_ATTEMPTS="1")
    assert verification == Verification(key=VERIFICATION, unchecked=12)
    assert s3.objects[VERIFICATION].decode().splitlines() == ["line,user_id,provider,status,detail"]


def test_without_the_setting_nothing_is_looked_up() -> None:
    vital = FakeVital()
    s3 = FakeS3()
    s3.put(KEY, encode_rows([make_row(n) for n in range(3)], "jsonl"))
    config = Settings.from_env({"VITAL_API_KEY_SECRET": "k"})
    result = run_offline(
        s3,
        StoreState(),
        config,
        ObjectRef(bucket=BUCKET, key=KEY),
        transport=httpx.MockTransport(vital),
        post_chunk=FakePost(),
    )
    assert result.manifest is not None
    assert result.manifest.verification is None
    assert vital.asked == []
    assert VERIFICATION not in s3.objects
