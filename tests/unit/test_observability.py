"""The tracer is Powertools' Tracer in Lambda and a no-op elsewhere (no X-Ray import cost)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROBE = (
    "import sys, bulk_import.handler; from bulk_import.observability import tracer; "
    "print(type(tracer).__name__, 'aws_xray_sdk.core' in sys.modules)"
)


def _probe(**env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if k not in {"LAMBDA_TASK_ROOT", "AWS_SAM_LOCAL"}}
    return subprocess.run(  # noqa: S603 - our own interpreter, a fixed probe
        [sys.executable, "-c", PROBE],
        env={**clean, "POWERTOOLS_TRACE_DISABLED": "false", **env},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, "_NoTracer False"),
        ({"LAMBDA_TASK_ROOT": "/var/task"}, "Tracer True"),
        ({"LAMBDA_TASK_ROOT": "/var/task", "POWERTOOLS_TRACE_DISABLED": "true"}, "_NoTracer False"),
    ],
)
def test_tracer_only_in_lambda_with_tracing_on(env: dict[str, str], expected: str) -> None:
    assert _probe(**env) == expected


def test_idempotency_utility_is_not_imported_without_a_table() -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, bulk_import.handler; "
            "print('aws_lambda_powertools.utilities.idempotency' in sys.modules)",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert out == "False"
