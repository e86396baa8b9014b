#!/usr/bin/env bash
# Prints functions/requirements.txt (what SAM installs) from uv.lock: the project's runtime
# dependencies, boto3 and its closure included. The runtime's own boto3 is whatever version AWS
# last bundled in that region; the checkpoint's conditional writes and deletes need botocore
# 1.35.69 or later, so the package carries the locked one (it comes first on Lambda's sys.path).
# One definition, used by `make requirements` and by the drift test.
set -euo pipefail
cd "$(dirname "$0")/.."
UV="$(command -v uv 2>/dev/null || echo .tools/bin/uv)"
"$UV" export --locked --no-default-groups --no-emit-project --format requirements-txt \
    --no-header --quiet
