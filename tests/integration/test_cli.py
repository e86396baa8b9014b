"""The installed ``bulk-import`` console script, run as a person runs it, against the local stack
(moto and the Vital stand-in): exit codes, ``--json`` output, the files written, and no token
in anything it prints."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import boto3
import pytest

from tests.helpers import (
    access_token,
    encode_rows,
    make_row,
    parse_outcomes,
    refresh_token,
    user_id,
)
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


# --- run ------------------------------------------------------------------------------------------


def run_env(cli_env: dict[str, str], stack: Stack) -> dict[str, str]:
    """The environment of ``run``: the stand-in's API key in VITAL_API_KEY."""
    return {**cli_env, "VITAL_API_KEY": stack.vital.api_key}


def write_rows(tmp_path: Path, name: str, rows: list[dict[str, Any]]) -> Path:
    path = tmp_path / name
    path.write_bytes(encode_rows(rows, name.rsplit(".", 1)[-1]))
    return path


def test_run_imports_a_file_and_writes_the_results_as_s3_would(
    stack: Stack, cli_env: dict[str, str], tmp_path: Path
) -> None:
    # Given 25 rows, all of known users but one
    rows = [make_row(n, provider=("oura", "fitbit")[n % 2]) for n in range(25)]
    stack.vital.add_known_users(*(user_id(n) for n in range(24)))
    path = write_rows(tmp_path, "export.jsonl", rows)
    out = tmp_path / "out"

    # When it is run from the laptop
    done = bulk_import(
        "run", str(path), "--out", str(out), "--chunk-size", "5", env=run_env(cli_env, stack)
    )

    # Then every row went once, and the results are those the Lambda writes
    assert done.returncode == 1, done.stderr  # partial: one user unknown to Vital
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "partial"
    assert manifest["counts"]["imported"] == 24
    assert manifest["counts"]["failed"] == 1
    assert len(manifest["chunks"]) == 6
    outcomes = parse_outcomes((out / "outcomes.csv").read_bytes())
    assert len(outcomes) == 25
    assert sorted(u for _, u in stack.vital.posted_connections()) == sorted(
        user_id(n) for n in range(25)
    )
    assert (out / "retry.jsonl").is_file()
    assert not (out / "_state").exists()
    assert "partial" in done.stdout
    assert_no_secret(done, [stack.vital.api_key, *tokens(range(25))])
    assert all(t not in (out / "manifest.json").read_text() for t in tokens(range(25)))


def test_run_exits_2_when_vital_refuses_the_key(
    stack: Stack, cli_env: dict[str, str], tmp_path: Path
) -> None:
    path = write_rows(tmp_path, "export.jsonl", [make_row(n) for n in range(3)])
    env = {**cli_env, "VITAL_API_KEY": "sk_wrong_key_that_must_not_be_printed"}
    done = bulk_import("run", str(path), "--out", str(tmp_path / "out"), env=env, check=2)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["status"] == "failed"
    assert "failed" in done.stdout
    assert_no_secret(done, ["sk_wrong_key_that_must_not_be_printed", *tokens(range(3))])


def test_run_stopped_by_ctrl_c_resumes_without_sending_anything_twice(
    stack: Stack, cli_env: dict[str, str], tmp_path: Path
) -> None:
    # Given 120 rows sent 5 at a time, one request at a time, each answered after 0.15 s
    rows = [make_row(n) for n in range(120)]
    stack.vital.add_known_users(*(user_id(n) for n in range(120)))
    stack.vital.latency_seconds = 0.15
    path = write_rows(tmp_path, "big.jsonl", rows)
    out = tmp_path / "out"
    args = [str(SCRIPT), "run", str(path), "--out", str(out), "--chunk-size", "5"]
    env = run_env(cli_env, stack)

    # When Ctrl-C comes once a few requests are answered
    with subprocess.Popen(  # noqa: S603 - our own console script
        [*args, "--concurrency", "1"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as proc:
        for _ in range(200):  # bounded: up to 20 s
            if len(stack.vital.bulk_import_requests()) >= 3 or proc.poll() is not None:
                break
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=TIMEOUT_SECONDS)

    # Then it stops cleanly, with a checkpoint and without the results
    assert proc.returncode == 130, stderr
    assert b"run the same command again to resume" in stderr
    sent_before = len(stack.vital.posted_connections())
    assert 0 < sent_before < 120
    assert (out / "_state" / "checkpoint.json").is_file()
    assert not (out / "manifest.json").exists()

    # When the same command runs again
    stack.vital.latency_seconds = 0.0
    done = bulk_import(*args[1:], env=env, check=0)

    # Then it resumes: every row imported, none sent twice, none in doubt
    assert "resuming" in done.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "succeeded"
    assert manifest["counts"]["imported"] == 120
    assert manifest["segments"] == 2
    posted = [u for _, u in stack.vital.posted_connections()]
    assert len(posted) == 120
    assert len(set(posted)) == 120
    assert len(parse_outcomes((out / "outcomes.csv").read_bytes())) == 120
    for text in (stdout.decode(), stderr.decode(), done.stdout, done.stderr):
        assert stack.vital.api_key not in text

    # And a third run finds the import finished and sends nothing
    again = bulk_import(*args[1:], env=env, check=0)
    assert "finished import" in again.stderr
    assert len(stack.vital.posted_connections()) == 120


def test_run_refuses_an_output_directory_of_another_file(
    stack: Stack, cli_env: dict[str, str], tmp_path: Path
) -> None:
    stack.vital.add_known_users(user_id(0))
    first = write_rows(tmp_path, "one.jsonl", [make_row(0)])
    other = write_rows(tmp_path, "two.jsonl", [make_row(0)])
    env = run_env(cli_env, stack)
    bulk_import("run", str(first), "--out", str(tmp_path / "out"), env=env, check=0)
    done = bulk_import("run", str(other), "--out", str(tmp_path / "out"), env=env, check=2)
    assert "choose another --out" in done.stderr


# --- verify ---------------------------------------------------------------------------------------


def test_verify_checks_each_imported_row_against_the_stand_in(
    stack: Stack, cli_env: dict[str, str], tmp_path: Path
) -> None:
    # Given a run that imported 6 of 8 rows (two users unknown to Vital)
    rows = [make_row(n, provider=("oura", "garmin")[n % 2]) for n in range(8)]
    stack.vital.add_known_users(*(user_id(n) for n in range(6)))
    path = write_rows(tmp_path, "export.jsonl", rows)
    out = tmp_path / "out"
    env = run_env(cli_env, stack)
    bulk_import("run", str(path), "--out", str(out), env=env, check=1)
    # and an outcome Vital never saw (imported by another import, as the file says)
    outcomes = out / "outcomes.csv"
    with outcomes.open("a", encoding="utf-8") as file:
        file.write(f"99,{user_id(50)},oura,imported,\n")

    # When it is verified
    report = tmp_path / "verified.csv"
    done = bulk_import("verify", str(outcomes), "--out", str(report), env=env)

    # Then the imported rows are connected, the unknown user is missing; failed rows are not
    # looked up
    assert done.returncode == 1, done.stderr
    found = parse_verified(report)
    assert {line: status for line, status, _ in found} == {
        **{str(n + 1): "connected" for n in range(6)},
        "99": "missing",
    }
    assert "connected" in done.stdout
    assert_no_secret(done, [stack.vital.api_key, *tokens(range(8))])


def parse_verified(path: Path) -> list[tuple[str, str, str]]:
    with path.open(newline="", encoding="utf-8") as file:
        return [(r["line"], r["status"], r["detail"]) for r in csv.DictReader(file)]


# --- upload and status ----------------------------------------------------------------------------


def wait_for_object(stack: Stack, key: str) -> None:
    for _ in range(200):  # bounded: up to 20 s
        listed = stack.s3.list_objects_v2(Bucket=stack.bucket, Prefix=key).get("Contents", [])
        if listed:
            return
        time.sleep(0.1)
    pytest.fail(f"{key} was never uploaded")


def test_upload_dry_run_follow_shows_the_validated_import(
    stack: Stack, cli_env: dict[str, str], tmp_path: Path
) -> None:
    # Given a file with one duplicate, uploaded as a dry run and followed
    rows = [make_row(n) for n in range(6)]
    rows.append(dict(rows[2]))
    path = write_rows(tmp_path, "export.jsonl", rows)
    key = "incoming/oura/export.jsonl"
    args = [str(SCRIPT), "upload", str(path), f"s3://{stack.bucket}/incoming/oura/", "--dry-run"]
    with subprocess.Popen(  # noqa: S603 - our own console script
        [*args, "--follow", "--poll-seconds", "0.2"],
        env=cli_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        # When the function imports it (the S3 event, delivered here by hand)
        wait_for_object(stack, key)
        head = stack.s3.head_object(Bucket=stack.bucket, Key=key)
        stack.import_keys(key)
        stdout, stderr = proc.communicate(timeout=TIMEOUT_SECONDS)

    # Then the upload carried the dry-run metadata, the follower saw the manifest, and Vital
    # heard nothing
    assert head["Metadata"] == {"dry-run": "true"}
    assert proc.returncode == 0, stderr
    assert "validated" in stdout
    assert "uploaded (dry run" in stderr
    assert stack.vital.recorded() == []

    # And status says the same, as JSON
    done = bulk_import("status", f"s3://{stack.bucket}/{key}", "--json", env=cli_env, check=0)
    doc = json.loads(done.stdout)
    assert doc["state"] == "validated"
    assert doc["dry_run"] is True
    assert doc["counts"]["valid"] == 6
    assert doc["counts"]["duplicates"] == 1
    for text in (stdout, stderr, done.stdout):
        assert all(t not in text for t in tokens(range(6)))


def test_status_of_an_import_not_started_and_of_a_finished_one(
    stack: Stack, cli_env: dict[str, str]
) -> None:
    stack.vital.add_known_users(*(user_id(n) for n in range(3)))
    stack.put("incoming/oura/a.jsonl", encode_rows([make_row(n) for n in range(4)], "jsonl"))
    uri = f"s3://{stack.bucket}/incoming/oura/a.jsonl"

    pending = bulk_import("status", uri, "--json", env=cli_env, check=0)
    assert json.loads(pending.stdout)["state"] == "pending"

    stack.import_keys("incoming/oura/a.jsonl")
    finished = bulk_import("status", uri, env=cli_env, check=1)
    assert "partial" in finished.stdout
    assert "imported" in finished.stdout

    missing = bulk_import("status", uri + ".gone", env=cli_env, check=2)
    assert "not found" in missing.stdout


def test_upload_names_the_bucket_s_own_kms_key(
    stack: Stack, cli_env: dict[str, str], tmp_path: Path
) -> None:
    # Given a bucket whose default encryption is a customer-managed KMS key
    key_arn = boto3.client("kms").create_key()["KeyMetadata"]["Arn"]
    stack.s3.put_bucket_encryption(
        Bucket=stack.bucket,
        ServerSideEncryptionConfiguration={
            "Rules": [
                {
                    "ApplyServerSideEncryptionByDefault": {
                        "SSEAlgorithm": "aws:kms",
                        "KMSMasterKeyID": key_arn,
                    }
                }
            ]
        },
    )
    path = write_rows(tmp_path, "a.jsonl", [make_row(0)])

    # When the file is uploaded
    uri = f"s3://{stack.bucket}/incoming/a.jsonl"
    bulk_import("upload", str(path), uri, "--provider", "oura", env=cli_env, check=0)

    # Then it is under that key, with the provider in its metadata
    head = stack.s3.head_object(Bucket=stack.bucket, Key="incoming/a.jsonl")
    assert head["ServerSideEncryption"] == "aws:kms"
    assert head["SSEKMSKeyId"] == key_arn
    assert head["Metadata"] == {"provider": "oura"}


def test_run_and_verify_read_the_api_key_from_secrets_manager(
    stack: Stack, cli_env: dict[str, str], tmp_path: Path
) -> None:
    # Given the key only in Secrets Manager (the stack's secret), not in VITAL_API_KEY
    stack.vital.add_known_users(*(user_id(n) for n in range(3)))
    path = write_rows(tmp_path, "a.jsonl", [make_row(n) for n in range(3)])
    env = {k: v for k, v in cli_env.items() if k != "VITAL_API_KEY"}
    secret = env["VITAL_API_KEY_SECRET"]

    # When run and verify name the secret
    out = tmp_path / "out"
    ran = bulk_import("run", str(path), "--out", str(out), "--api-key-secret", secret, env=env)
    report = tmp_path / "v.csv"
    verify_args = ["verify", str(out / "outcomes.csv"), "--out", str(report)]
    checked = bulk_import(*verify_args, "--api-key-secret", secret, env=env)

    # Then both reach Vital with it, and print it nowhere; a secret that does not exist is
    # one line and exit 2
    assert ran.returncode == 0, ran.stderr
    assert checked.returncode == 0, checked.stderr
    assert_no_secret(ran, [stack.vital.api_key])
    assert_no_secret(checked, [stack.vital.api_key])
    missing = bulk_import(
        "run", str(path), "--out", str(tmp_path / "o2"), "--api-key-secret", "no/such", env=env
    )
    assert missing.returncode == 2
    assert "no/such" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1
