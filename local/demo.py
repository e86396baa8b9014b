"""`make demo`: the real handler on the embedded stack (moto server + Vital stand-in).

Uploads every sample in events/samples/, invokes the handler with the matching S3 event from
events/, and prints what happened to each file. Nothing here is known to the Lambda package:
it only sees environment variables, exactly as in AWS.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import os
import sys
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus

import boto3

from local.context import LocalLambdaContext
from local.moto_server import MotoStack, aws_env
from local.standin import StandinState, VitalStandin

ROOT = Path(__file__).resolve().parent.parent
EVENTS = ROOT / "events"
SAMPLES = EVENTS / "samples"
BUCKET = "vital-import-demo"
SECRET_NAME = "vital/bulk-import/api-key"  # noqa: S105 - a secret's name, not its value
# One sample has no provider in its rows or key: it comes from the object's metadata.
OBJECT_METADATA = {"garmin-connections.json.gz": {"provider": "garmin"}}
# Sample user ids are uuid5(SAMPLE_NAMESPACE, "user-<n>"); two are unknown to the stand-in,
# so the demo shows Vital reporting failed imports too.
SAMPLE_NAMESPACE = uuid.UUID("6f1c2d8e-0000-4000-8000-000000000000")
UNKNOWN_SAMPLE_USERS = (11, 45)


def sample_user_id(n: int) -> str:
    return str(uuid.uuid5(SAMPLE_NAMESPACE, f"user-{n}"))


def known_sample_users() -> set[str]:
    return {sample_user_id(n) for n in range(100) if n not in UNKNOWN_SAMPLE_USERS}


def demo_environment(endpoint_url: str, vital_url: str, *, verbose: bool) -> dict[str, str]:
    return {
        **aws_env(endpoint_url),
        "VITAL_API_BASE_URL": vital_url,
        "VITAL_API_KEY_SECRET": SECRET_NAME,
        "CHUNK_SIZE": "5",
        "MAX_CONCURRENCY": "4",
        "POWERTOOLS_SERVICE_NAME": "bulk-import",
        "POWERTOOLS_METRICS_NAMESPACE": "VitalBulkImport",
        "POWERTOOLS_LOG_LEVEL": "INFO" if verbose else "WARNING",
        "POWERTOOLS_METRICS_DISABLED": "false" if verbose else "true",
        "POWERTOOLS_TRACE_DISABLED": "true",
    }


def upload_sample(s3: Any, key: str) -> Path:
    path = SAMPLES / key.rsplit("/", 1)[-1]
    extra = {"Metadata": OBJECT_METADATA[path.name]} if path.name in OBJECT_METADATA else {}
    s3.put_object(Bucket=BUCKET, Key=key, Body=path.read_bytes(), **extra)
    return path


def print_file(s3: Any, key: str, summary: dict[str, Any]) -> None:
    manifest_key = summary["manifest"]
    manifest = json.loads(s3.get_object(Bucket=BUCKET, Key=manifest_key)["Body"].read())
    counts = manifest["counts"]
    shown = ", ".join(f"{k} {v}" for k, v in counts.items() if k != "rows" and v)
    print(f"\n{key}\n  status   {manifest['status']}  ({counts['rows']} rows: {shown or 'none'})")
    providers = ", ".join(f"{p} {c['rows']}" for p, c in manifest["providers"].items())
    print(f"  chunks   {len(manifest['chunks'])} posted; providers: {providers or '-'}")
    if manifest.get("error"):
        print(f"  error    {manifest['error']['type']}: {manifest['error']['message']}")
    outcomes = s3.get_object(Bucket=BUCKET, Key=manifest["outcomes_key"])["Body"].read()
    notable = [
        row
        for row in csv.DictReader(io.StringIO(outcomes.decode()))
        if row["outcome"] not in {"imported", "enqueued"}
    ]
    for row in sorted(notable, key=lambda r: int(r["line"]))[:8]:
        print(f"  line {row['line']:>4}  {row['outcome']:<9} {row['detail']}")
    print(f"  manifest s3://{BUCKET}/{manifest_key}")
    print(f"  outcomes s3://{BUCKET}/{manifest['outcomes_key']}")
    if manifest.get("retry_key"):
        retry_rows = counts["failed"] + counts["errored"]
        print(
            f"  retry    s3://{BUCKET}/{manifest['retry_key']} ({retry_rows} row(s) to re-upload)"
        )


def run(*, verbose: bool) -> int:
    state = StandinState(known_users=known_sample_users())
    with MotoStack() as moto, VitalStandin(state) as vital:
        os.environ.update(demo_environment(moto.endpoint_url, vital.url, verbose=verbose))
        # Imported only now: Powertools reads its settings from the environment at import.
        from bulk_import.handler import lambda_handler  # noqa: PLC0415

        s3 = boto3.client("s3")
        s3.create_bucket(Bucket=BUCKET)
        boto3.client("secretsmanager").create_secret(Name=SECRET_NAME, SecretString=state.api_key)
        print(f"local stack: moto {moto.endpoint_url}, Vital stand-in {vital.url}")
        failures = 0
        for event_path in sorted(EVENTS.glob("*.json")):
            event = json.loads(event_path.read_text())
            for record in event["Records"]:
                upload_sample(s3, unquote_plus(record["s3"]["object"]["key"]))
            emf = io.StringIO()  # Powertools prints EMF metrics to stdout; shown with --verbose
            with contextlib.redirect_stdout(sys.stdout if verbose else emf):
                result = lambda_handler(event, LocalLambdaContext())
            for summary in result["files"]:
                print_file(s3, summary["key"], summary)
                failures += summary["status"] == "failed"
        received = len(state.bulk_import_requests())
        print(f"\nVital stand-in received {received} bulk_import request(s).")
    return 1 if failures else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--verbose", action="store_true", help="show the function's JSON logs")
    sys.exit(run(verbose=parser.parse_args().verbose))


if __name__ == "__main__":
    main()
