#!/usr/bin/env bash
# Prints functions/requirements.txt (what SAM installs) from uv.lock: the project's runtime
# dependencies only, without the packages the python3.13 Lambda runtime already ships (boto3 and
# its closure). One definition, used by `make requirements` and by the drift test.
set -euo pipefail
cd "$(dirname "$0")/.."
UV="$(command -v uv 2>/dev/null || echo .tools/bin/uv)"
RUNTIME_PROVIDED=(boto3 botocore s3transfer jmespath python-dateutil six urllib3)
args=()
for package in "${RUNTIME_PROVIDED[@]}"; do args+=(--no-emit-package "$package"); done
"$UV" export --locked --no-default-groups --no-emit-project --format requirements-txt \
    --no-header --quiet "${args[@]}"
