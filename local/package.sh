#!/usr/bin/env bash
# Builds what Lambda runs, for python3.13 on arm64, without Docker: `sam build`, which runs
# functions/Makefile (manylinux aarch64 wheels from functions/requirements.txt), then zips it.
# Output: .aws-sam/build/ImportFunction/ and build/lambda-arm64.zip
set -euo pipefail
cd "$(dirname "$0")/.."
./local/bootstrap.sh >/dev/null
UV="$(command -v uv 2>/dev/null || echo .tools/bin/uv)"
PYTHON313="$(readlink -f .venv/bin/python)"
export SAM_CLI_TELEMETRY=0
# functions/Makefile runs pip and compileall with the same Python 3.13 the tests use.
export PYTHON="$PYTHON313"
"$UV" tool run --python "$PYTHON313" \
    --constraints local/sam-cli.txt --from aws-sam-cli \
    sam build --template template.yaml --build-dir .aws-sam/build >&2
.venv/bin/python - <<'PY'
import os, pathlib, zipfile
src = pathlib.Path(".aws-sam/build/ImportFunction")
out = pathlib.Path("build/lambda-arm64.zip")
out.parent.mkdir(exist_ok=True)
with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
    for path in sorted(src.rglob("*")):
        if path.is_file():
            zf.write(path, path.relative_to(src))
print(f"{out} {out.stat().st_size / 1e6:.1f} MB zipped")
PY
