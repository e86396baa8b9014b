"""The deployment package `make package` builds: what ships, and that it fits Lambda's limits."""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
ZIP = ROOT / "build" / "lambda-arm64.zip"
EM_AARCH64 = 183
# Lambda's limits for a zip deployment: 50 MB zipped (direct upload), 250 MB unzipped.
MAX_ZIPPED = 50 * 1024 * 1024
MAX_UNZIPPED = 250 * 1024 * 1024


def _stop(signum: int, _: object) -> None:
    pytest.exit(f"stopped by {signal.Signals(signum).name}", returncode=128 + signum)


@pytest.fixture(scope="module")
def package() -> zipfile.ZipFile:
    # Its own process group, so that stopping pytest stops the whole build (sam and pip run
    # under uv, grandchildren of pytest), not just the script: on Ctrl-C, a pytest-timeout, and
    # SIGTERM or SIGHUP (a cancelled CI job, `timeout`, a kill of pytest's group), which would
    # otherwise end pytest without running the clean-up.
    stops = {sig: signal.signal(sig, _stop) for sig in (signal.SIGTERM, signal.SIGHUP)}
    build = subprocess.Popen(
        ["./local/package.sh"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        out, err = build.communicate()
    except BaseException:
        os.killpg(build.pid, signal.SIGKILL)
        build.wait()
        raise
    finally:
        for sig, handler in stops.items():
            signal.signal(sig, handler)
    if build.returncode:
        raise subprocess.CalledProcessError(build.returncode, build.args, out, err)
    with zipfile.ZipFile(ZIP) as zf:
        yield zf


def elf_machine(data: bytes) -> int:
    assert data[:4] == b"\x7fELF"
    little = data[5] == 1
    (machine,) = struct.unpack("<H" if little else ">H", data[18:20])
    return int(machine)


def test_handler_module_and_runtime_dependencies_are_at_the_root(package: zipfile.ZipFile) -> None:
    names = set(package.namelist())
    assert "bulk_import/handler.py" in names
    for top in (
        "httpx",
        "pydantic",
        "pydantic_core",
        "aws_lambda_powertools",
        "stamina",
        "zstandard",
    ):
        assert any(n.startswith(top + "/") for n in names), top


def test_no_test_local_or_dev_code_and_the_locked_sdk(package: zipfile.ZipFile) -> None:
    tops = {n.split("/", 1)[0] for n in package.namelist()}
    forbidden = {
        "tests",
        "local",
        "bench",
        "moto",
        "pytest",
        "hypothesis",
        "fastapi",
        "uvicorn",
        "vital",
        "pyinstrument",
        "mypy_boto3_s3",
    }
    assert not tops & forbidden
    # The locked SDK, not the runtime's (conditional writes and deletes need botocore 1.35.69+).
    assert {"boto3", "botocore", "s3transfer"} <= tops


def test_bytecode_is_compiled_ahead_for_python_313(package: zipfile.ZipFile) -> None:
    names = package.namelist()
    assert "bulk_import/__pycache__/handler.cpython-313.pyc" in names
    assert "pydantic/__pycache__/main.cpython-313.pyc" in names
    pycs = [n for n in names if n.endswith(".pyc")]
    assert all(".cpython-313." in n for n in pycs)
    # Unchecked-hash (PEP 552 flags word: bit 0 hash-based, bit 1 check the source): zip mtimes
    # cannot invalidate it, and no cold start reads and hashes the sources to check it.
    flags = int.from_bytes(
        package.read("bulk_import/__pycache__/handler.cpython-313.pyc")[4:8], "little"
    )
    assert flags == 0b01


def test_native_code_is_arm64_only(package: zipfile.ZipFile) -> None:
    native = [n for n in package.namelist() if n.endswith(".so") or ".so." in n]
    assert native, "expected compiled extensions (pydantic-core, zstandard)"
    for name in native:
        assert elf_machine(package.read(name)[:64]) == EM_AARCH64, name


def test_package_fits_lambda_limits(package: zipfile.ZipFile) -> None:
    assert ZIP.stat().st_size < MAX_ZIPPED
    assert sum(i.file_size for i in package.infolist()) < MAX_UNZIPPED
