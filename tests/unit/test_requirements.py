"""functions/requirements.txt is what SAM installs: it must be exactly the lock's export."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXPORT = [
    "export",
    "--locked",
    "--no-dev",
    "--no-emit-project",
    "--format",
    "requirements-txt",
    "--quiet",
]


def _uv() -> str:
    found = shutil.which("uv") or str(ROOT / ".tools" / "bin" / "uv")
    if not Path(found).exists():
        pytest.fail("uv not found; run ./local/bootstrap.sh (make test does)")
    return found


def _requirements(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip() and not line.startswith("#")]


def test_requirements_txt_matches_the_lock_file() -> None:
    exported = subprocess.run(  # noqa: S603 - a fixed command line
        [_uv(), *EXPORT],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "UV_OFFLINE": "1"},
    ).stdout
    committed = (ROOT / "functions" / "requirements.txt").read_text()
    assert _requirements(committed) == _requirements(exported), (
        "functions/requirements.txt drifted from uv.lock; run `make requirements`"
    )


def test_requirements_pin_every_package_with_hashes() -> None:
    lines = _requirements((ROOT / "functions" / "requirements.txt").read_text())
    packages = [line for line in lines if not line.startswith(" ")]
    assert packages, "no packages exported"
    for line in packages:
        assert "==" in line, line
    assert any("--hash=sha256:" in line for line in lines)
