"""Observability's import costs and hooks.

The tracer is Powertools' Tracer in Lambda and a no-op elsewhere (no X-Ray import cost); the
retry machinery is imported, and its notices routed to the structured log, only on a retry.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import stamina

from bulk_import.config import Settings
from bulk_import.observability import logger
from bulk_import.vital import VitalClient

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


def _loaded_by_handler_import(*modules: str) -> list[bool]:
    """Which of ``modules`` importing the handler loads, in a fresh interpreter."""
    probe = f"import sys, bulk_import.handler; print(*(m in sys.modules for m in {modules!r}))"
    out = subprocess.run(  # noqa: S603 - our own interpreter, a fixed probe
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout.split()
    return [word == "True" for word in out]


def test_idempotency_utility_is_not_imported_without_a_table() -> None:
    assert _loaded_by_handler_import("aws_lambda_powertools.utilities.idempotency") == [False]


def test_importing_the_handler_builds_no_model_schema() -> None:
    """Models defer their schemas to first use (``defer_build``): a cold start pays only for the
    models its invocation touches, not for every model the package defines."""
    probe = (
        "import pydantic, bulk_import.handler\n"
        "seen, todo = [], [pydantic.BaseModel]\n"
        "while todo:\n"
        "    cls = todo.pop(); todo.extend(cls.__subclasses__()); seen.append(cls)\n"
        "ours = [c for c in seen if c.__module__.startswith('bulk_import.')]\n"
        "print(len(ours), *sorted(c.__name__ for c in ours if c.__pydantic_complete__))"
    )
    out = subprocess.run(  # noqa: S603 - our own interpreter, a fixed probe
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout.split()
    assert int(out[0]) >= 10
    assert out[1:] == []


def test_retry_machinery_is_imported_only_when_a_request_is_retried() -> None:
    """stamina and tenacity cost ~10 ms of every cold start; an invocation that never retries
    should not pay it (``vital.retry.RetryPolicy`` imports them on the first retry)."""
    assert _loaded_by_handler_import("stamina", "tenacity") == [False, False]


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


def test_a_retry_is_logged_as_a_structured_line() -> None:
    answers = [httpx.Response(503), httpx.Response(200, json={"user_ids_imported": []})]
    settings = Settings.model_validate(
        {"VITAL_API_KEY_SECRET": "x", "VITAL_API_BASE_URL": "http://vital.test"}
    )
    transport = httpx.MockTransport(lambda request: answers.pop(0))
    capture = _Lines()
    capture.setFormatter(logger.registered_formatter)  # what CloudWatch would get
    logger.addHandler(capture)
    try:
        with (
            stamina.set_testing(True, attempts=3),
            VitalClient(settings, "sk_unit_KEY_0123456789", lambda: 900.0, transport) as vital,
        ):
            result = vital.post_bulk_import(b'{"provider":"oura","connections":[]}')
    finally:
        logger.removeHandler(capture)
    assert result.attempts == 2
    [retry] = [json.loads(line) for line in capture.lines if "retry scheduled" in line]
    assert (retry["retry"], retry["cause"]) == (1, "_Retryable")


def test_powertools_service_and_namespace_come_from_the_environment() -> None:
    # Fixed in the code, a template that set others would change nothing.
    child = (
        "from bulk_import import observability as o\n"
        "o.metrics.add_metric(name='RowsRead', unit='Count', value=1)\n"
        "print(o.logger.service)\n"
        "o.metrics.flush_metrics()\n"
    )
    env = {
        **os.environ,
        "POWERTOOLS_SERVICE_NAME": "importer-eu",
        "POWERTOOLS_METRICS_NAMESPACE": "MigrationEU",
    }
    done = subprocess.run(  # noqa: S603 - our interpreter, fixed code
        [sys.executable, "-c", child], env=env, capture_output=True, text=True, check=True
    )
    service, emf = done.stdout.splitlines()[:2]
    assert service == "importer-eu"
    document = json.loads(emf)
    assert document["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "MigrationEU"
    assert document["service"] == "importer-eu"


def test_every_metric_the_function_emits_is_in_the_operations_guide() -> None:
    root = Path(__file__).resolve().parents[2]
    package = root / "functions" / "bulk_import"
    source = "".join(path.read_text() for path in sorted(package.rglob("*.py")))
    emitted = set(re.findall(r'(?:name=|_ignored\()"([A-Z]\w+)"', source))
    emitted |= set(re.findall(r'\("((?:Rows|Chunks|Files)\w+)"', source))
    emitted |= {"FilesFailed", "FilesProcessed"}  # chosen by status in one call
    guide = (root / "docs" / "operations.md").read_text()
    section = guide.split("## Metrics, logs, traces and notifications", 1)[1].split("\n## ", 1)[0]
    assert len(emitted) > 15
    assert {name for name in emitted if f"`{name}`" not in section} == set()
