"""`make demo` on the embedded stack: every sample file gets its summary."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def test_demo_prints_a_summary_for_every_sample() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "local.demo"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )

    assert run.returncode == 0, run.stderr[-2000:]
    out = run.stdout
    for key in (
        "incoming/connections.jsonl",
        "incoming/oura/Früh export 2026.csv",
        "incoming/garmin-connections.json.gz",
        "incoming/strava.ndjson.zst",
    ):
        assert f"\n{key}\n" in out
    assert out.count("  status   ") == 4
    assert "rejected  user_id: must be a Vital user id" in out
    assert "duplicate duplicate of line 3" in out
    assert "retry    s3://vital-import-demo/retry/" in out
    assert "fake-at-" not in out  # sample tokens
    assert "fake-rt-" not in out
