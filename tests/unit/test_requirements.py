"""functions/requirements.txt is what SAM installs: it must be exactly the lock's export."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# The runtime ships a boto3 of its own, of whatever version AWS last bundled: the package
# carries the locked one, which the checkpoint's conditional writes and deletes need.
SDK = {"boto3", "botocore", "s3transfer", "jmespath", "python-dateutil", "urllib3"}
DEV_ONLY = {"moto", "pytest", "hypothesis", "fastapi", "uvicorn", "vital", "pyinstrument", "mypy"}
# The operator's command line (the `cli` extra): installed locally, never shipped.
CLI_ONLY = {"typer", "rich", "click", "shellingham"}


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip() and not line.startswith("#")]


def _packages(text: str) -> set[str]:
    return {line.split("==")[0] for line in _lines(text) if not line.startswith(" ")}


def test_requirements_txt_matches_the_lock_file() -> None:
    exported = subprocess.run(
        ["./local/export-requirements.sh"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "UV_OFFLINE": "1"},
    ).stdout
    committed = (ROOT / "functions" / "requirements.txt").read_text()
    assert _lines(committed) == _lines(exported), (
        "functions/requirements.txt drifted from uv.lock; run `make requirements`"
    )


def test_requirements_pin_runtime_packages_and_the_sdk_with_hashes() -> None:
    text = (ROOT / "functions" / "requirements.txt").read_text()
    packages = _packages(text)
    assert {"httpx", "pydantic", "aws-lambda-powertools", "stamina", "zstandard"} <= packages
    assert packages >= SDK
    assert not packages & DEV_ONLY
    assert not packages & CLI_ONLY
    for line in _lines(text):
        if not line.startswith(" "):
            assert "==" in line, line
    assert "--hash=sha256:" in text


def test_sam_cli_runs_at_pinned_versions() -> None:
    """`make sam-validate` and `make package` run SAM CLI under local/sam-cli.txt: every
    dependency at one version, so a new release of one cannot change CI overnight."""
    pins = _lines((ROOT / "local" / "sam-cli.txt").read_text())
    named = {line.split("==")[0] for line in pins}
    wanted = _lines((ROOT / "local" / "sam-cli.in").read_text())
    assert set(wanted) <= set(pins), "local/sam-cli.in changed: run `make tools-lock`"
    assert {"aws-sam-cli", "aws-sam-translator", "boto3", "cfn-lint"} <= named
    assert all("==" in line for line in pins)
    users = [ROOT / "Makefile", ROOT / "local" / "package.sh"]
    for path in users:
        assert "--constraints local/sam-cli.txt --from aws-sam-cli " in path.read_text(), path


def test_scanners_run_at_pinned_versions_in_make_test() -> None:
    """checkov and bandit run under local/scanners.txt, and `make test` (what CI runs) runs them."""
    pins = _lines((ROOT / "local" / "scanners.txt").read_text())
    wanted = _lines((ROOT / "local" / "scanners.in").read_text())
    assert set(wanted) <= set(pins), "local/scanners.in changed: run `make tools-lock`"
    assert {"checkov", "bandit"} <= {line.split("==")[0] for line in pins}
    assert all("==" in line for line in pins)
    makefile = (ROOT / "Makefile").read_text()
    assert "--constraints local/scanners.txt" in makefile
    test_target = next(line for line in makefile.splitlines() if line.startswith("test:"))
    assert " scan " in f"{test_target} "
