#!/usr/bin/env bash
# Creates .venv/ from uv.lock on Python 3.13 with nothing but python3 and pip on the machine.
# Prints the path of the environment's python on success.
set -euo pipefail
cd "$(dirname "$0")/.."

UV_VERSION="0.13.9"

find_uv() {
    if command -v uv >/dev/null 2>&1; then command -v uv; return; fi
    if [[ -x .tools/bin/uv ]]; then echo .tools/bin/uv; return; fi
    echo "bootstrap: uv not found; installing uv==${UV_VERSION} into .tools/ from the package index" >&2
    python3 -m venv .tools >&2
    .tools/bin/pip install --quiet "uv==${UV_VERSION}" >&2
    echo .tools/bin/uv
}

is_313() { "$1" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 13))' >/dev/null 2>&1; }

find_python313() {
    local candidate
    if candidate="$("$UV" python find --no-python-downloads 3.13 2>/dev/null)" && is_313 "$candidate"; then
        echo "$candidate"; return
    fi
    for candidate in python3.13 python3; do
        if command -v "$candidate" >/dev/null 2>&1 && is_313 "$candidate"; then command -v "$candidate"; return; fi
    done
    local roots=("${PYENV_ROOT:-}" "$HOME/.pyenv")
    for root in "${roots[@]}"; do
        [[ -n "$root" ]] || continue
        for candidate in "$root"/versions/3.13*/bin/python3; do
            if [[ -x "$candidate" ]] && is_313 "$candidate"; then echo "$candidate"; return; fi
        done
    done
    # None on the machine: uv's managed build (downloaded from GitHub, not the package index;
    # machines that reach only the index fail here and get the message below).
    if "$UV" python install --quiet 3.13 >&2 2>/dev/null \
        && candidate="$("$UV" python find --no-python-downloads 3.13 2>/dev/null)" && is_313 "$candidate"; then
        echo "$candidate"; return
    fi
    cat >&2 <<'MSG'
bootstrap: no Python 3.13 found. The Lambda runtime is python3.13, and the tests run on it.
Install one of: `uv python install 3.13`, your OS package (python3.13), or `pyenv install 3.13`,
then run this command again.
MSG
    exit 1
}

UV="$(find_uv)"
PYTHON="$(find_python313)"
if [[ ! -x .venv/bin/python ]] || ! is_313 .venv/bin/python || [[ uv.lock -nt .venv/.synced ]] || [[ pyproject.toml -nt .venv/.synced ]]; then
    # --extra cli: the operator's `bulk-import` command (typer, rich), never shipped to Lambda.
    "$UV" sync --locked --extra cli --python "$PYTHON" --quiet >&2
    touch .venv/.synced
fi
echo .venv/bin/python
