"""Runs the handler once in its own process, for tests that kill it mid-file.

Usage: python -m tests.integration.run_handler EVENT_JSON TIMEOUT_SECONDS
The environment (AWS_ENDPOINT_URL, VITAL_API_BASE_URL, …) comes from the parent test.
"""

from __future__ import annotations

import json
import sys

from local.context import LocalLambdaContext


def main() -> None:
    from bulk_import.handler import lambda_handler  # noqa: PLC0415 - after the env is set

    event = json.loads(sys.argv[1])
    result = lambda_handler(event, LocalLambdaContext(timeout_seconds=float(sys.argv[2])))
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
