"""peer: what a user would write with Vital's official SDK (``vital`` from PyPI).

Read the whole object, parse it with the standard library, build the SDK's ConnectionRecipe
models, and call ``client.link.bulk_import`` sequentially per chunk of ``CHUNK_SIZE`` rows per
provider. The SDK's defaults apply (its own httpx client, 60 s timeout, 2 retries).
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from typing import Any

import boto3
from vital import ConnectionRecipe, Vital


def run(spec: dict[str, Any]) -> dict[str, int]:
    chunk_size = int(os.environ["CHUNK_SIZE"])
    api_key = boto3.client("secretsmanager").get_secret_value(
        SecretId=os.environ["VITAL_API_KEY_SECRET"]
    )["SecretString"]
    data = boto3.client("s3").get_object(Bucket=spec["bucket"], Key=spec["key"])["Body"].read()
    by_provider: dict[str, list[ConnectionRecipe]] = defaultdict(list)
    for line in data.splitlines():
        if line.strip():
            row = json.loads(line)
            by_provider[row.pop("provider")].append(ConnectionRecipe(**row))
    client = Vital(api_key=api_key, base_url=os.environ["VITAL_API_BASE_URL"])
    sent = requests = 0
    for provider, recipes in by_provider.items():
        for start in range(0, len(recipes), chunk_size):
            result = client.link.bulk_import(
                provider=provider,  # type: ignore[arg-type]
                connections=recipes[start : start + chunk_size],
                wait_for_completion=True,
            )
            sent += len(result.user_ids_imported or [])
            requests += 1
    return {"rows_sent": sent, "requests": requests}
