"""The local stack, started once per session: moto's server and the Vital stand-in."""

from __future__ import annotations

import io
import json
import logging
import uuid
from collections.abc import Iterator
from contextlib import redirect_stdout
from dataclasses import dataclass, field
from typing import Any

import boto3
import pytest

from local.context import LocalLambdaContext
from local.events import s3_event
from local.moto_server import MotoStack, aws_env
from local.standin import StandinState, VitalStandin
from tests.helpers import parse_outcomes

SECRET_NAME = "tests/vital-api-key"


@pytest.fixture(scope="session")
def moto_stack() -> Iterator[MotoStack]:
    with MotoStack() as stack:
        yield stack


@pytest.fixture(scope="session")
def standin() -> Iterator[VitalStandin]:
    with VitalStandin(StandinState()) as server:
        yield server


@pytest.fixture(scope="session")
def stack_env(moto_stack: MotoStack, standin: VitalStandin) -> Iterator[dict[str, str]]:
    env = {
        **aws_env(moto_stack.endpoint_url),
        "VITAL_API_BASE_URL": standin.url,
        "VITAL_API_KEY_SECRET": SECRET_NAME,
        "POWERTOOLS_SERVICE_NAME": "bulk-import",
        "POWERTOOLS_METRICS_NAMESPACE": "VitalBulkImport",
        "POWERTOOLS_LOG_LEVEL": "DEBUG",
        "POWERTOOLS_TRACE_DISABLED": "true",
    }
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("AWS_PROFILE", raising=False)
        for name, value in env.items():
            mp.setenv(name, value)
        _ensure_api_key_secret(standin.state.api_key)
        yield env


def _ensure_api_key_secret(api_key: str) -> None:
    """Recreate the secret if a test reset moto (moto's state is per process)."""
    secrets = boto3.client("secretsmanager")
    try:
        secrets.describe_secret(SecretId=SECRET_NAME)
    except secrets.exceptions.ResourceNotFoundException:
        secrets.create_secret(Name=SECRET_NAME, SecretString=api_key)


@dataclass
class Stack:
    """One test's view of the stack: a fresh bucket, a reset stand-in, captured output."""

    bucket: str
    vital: StandinState
    s3: Any
    log_lines: list[str]
    stdout: list[str] = field(default_factory=list)

    def put(self, key: str, body: bytes, metadata: dict[str, str] | None = None) -> str | None:
        extra = {"Metadata": metadata} if metadata else {}
        response = self.s3.put_object(Bucket=self.bucket, Key=key, Body=body, **extra)
        return response.get("VersionId")

    def invoke(
        self, event: dict[str, Any], timeout_seconds: float = 900.0, **fakes: Any
    ) -> dict[str, Any]:
        """Run the real handler on ``event``; ``fakes`` replace collaborators (``wiring.build``)."""
        from bulk_import import wiring  # noqa: PLC0415 - env set first
        from bulk_import.config import get_settings  # noqa: PLC0415
        from bulk_import.handler import lambda_handler, make_handler  # noqa: PLC0415

        handler = lambda_handler
        if fakes:
            handler = make_handler(lambda settings, ctx: wiring.build(settings, ctx, **fakes))
        get_settings.cache_clear()  # tests change settings through the environment
        out = io.StringIO()
        with redirect_stdout(out):
            result: dict[str, Any] = handler(event, LocalLambdaContext(timeout_seconds))
        self.stdout.append(out.getvalue())
        return result

    def import_keys(self, *keys: str, **kwargs: Any) -> dict[str, Any]:
        """Import ``keys`` as one S3 event; ``kwargs`` as for ``invoke``."""
        return self.invoke(s3_event(self.bucket, keys), **kwargs)

    def get(self, key: str) -> bytes:
        body: bytes = self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        return body

    def manifest(self, result_prefix: str) -> dict[str, Any]:
        manifest: dict[str, Any] = json.loads(self.get(result_prefix + "manifest.json"))
        return manifest

    def outcomes(self, result_prefix: str) -> list[dict[str, str]]:
        return parse_outcomes(self.get(result_prefix + "outcomes.csv"))

    def everything_written(self) -> str:
        """Every object outside incoming/ and retry/ (which hold tokens by design), logs, stdout."""
        texts = []
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket):
            for obj in page.get("Contents", []):
                if not obj["Key"].startswith(("incoming/", "retry/")):
                    texts.append(self.get(obj["Key"]).decode("utf-8", "replace"))
        return "\n".join([*texts, *self.log_lines, *self.stdout])


def drain_queue(
    stack: Stack, queue_url: str, timeout_seconds: float, limit: int = 50, **fakes: Any
) -> int:
    """Invoke the handler with every continuation message until none is left; ``fakes`` as for
    ``Stack.invoke``."""
    sqs = boto3.client("sqs")
    for invocations in range(limit):
        messages = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=1).get(
            "Messages", []
        )
        if not messages:
            return invocations
        (message,) = messages
        event = {"Records": [{"eventSource": "aws:sqs", "body": message["Body"]}]}
        stack.invoke(event, timeout_seconds=timeout_seconds, **fakes)
        sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
    pytest.fail("continuations did not converge")


@pytest.fixture
def continuation_queue(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> str:
    url: str = boto3.client("sqs").create_queue(QueueName=f"cont-{uuid.uuid4().hex[:8]}")[
        "QueueUrl"
    ]
    monkeypatch.setenv("CONTINUATION_QUEUE_URL", url)
    return url


class _Collect(logging.Handler):
    def __init__(self, sink: list[str]) -> None:
        super().__init__(logging.DEBUG)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        self.sink.append(self.format(record))


@pytest.fixture
def stack(
    stack_env: dict[str, str], standin: VitalStandin, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Stack]:
    from bulk_import.config import get_settings  # noqa: PLC0415
    from bulk_import.observability import logger  # noqa: PLC0415
    from bulk_import.storage import aws  # noqa: PLC0415

    standin.state.reset()
    _ensure_api_key_secret(standin.state.api_key)
    monkeypatch.setenv("CHUNK_SIZE", "10")
    get_settings.cache_clear()
    aws.clear_caches()
    s3 = boto3.client("s3")
    bucket = f"test-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    lines: list[str] = []
    # The same formatter the function uses, so tests see exactly what CloudWatch would.
    handler = _Collect(lines)
    handler.setFormatter(logger.registered_formatter)
    logger.addHandler(handler)
    try:
        yield Stack(bucket=bucket, vital=standin.state, s3=s3, log_lines=lines)
    finally:
        logger.removeHandler(handler)
        get_settings.cache_clear()
