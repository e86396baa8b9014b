"""boto3 clients and the API key, built lazily and cached per execution environment.

No endpoint code: boto3 honours AWS_ENDPOINT_URL, which is how the local stack is reached.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError

from bulk_import.errors import ConfigurationError, TransientError, aws_error_code

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.parameters import SecretsProvider
    from mypy_boto3_s3.client import S3Client
    from mypy_boto3_sns.client import SNSClient
    from mypy_boto3_sqs.client import SQSClient

    from bulk_import.model import ContinuationMessage

_CONFIG = Config(retries={"mode": "standard", "max_attempts": 5}, max_pool_connections=16)


@lru_cache(maxsize=1)
def s3_client() -> S3Client:
    return boto3.client("s3", config=_CONFIG)


def fetch(s3: S3Client, bucket: str, key: str) -> tuple[bytes, str] | None:
    """An object's body and ETag, or None when there is none."""
    try:
        response = s3.get_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if aws_error_code(exc) in {"NoSuchKey", "404"}:
            return None
        raise
    return response["Body"].read(), response["ETag"]


def vital_api_key(secret_name: str, max_age_seconds: int, secrets: SecretsProvider) -> str:
    """The Vital API key from Secrets Manager via Powertools Parameters (cached ``max_age``)."""
    from aws_lambda_powertools.utilities import parameters  # noqa: PLC0415 - cold start

    try:
        value = secrets.get(secret_name, max_age=max_age_seconds)
    except parameters.exceptions.GetParameterError as exc:
        original = exc.__cause__ or exc.__context__  # Powertools raises it inside its except
        cause = aws_error_code(original) or (type(original).__name__ if original else "error")
        if _transient(original):
            raise TransientError(
                f"Secrets Manager did not answer ({cause}) when the Vital API key was read; "
                "the invocation fails so that Lambda retries it"
            ) from None
        raise ConfigurationError(
            f"could not read the Vital API key from Secrets Manager secret '{secret_name}' "
            f"({cause}); check VITAL_API_KEY_SECRET and the function's permissions"
        ) from None
    key = _key_from_secret(value if isinstance(value, str) else "")
    if not key:
        raise ConfigurationError(
            f"Secrets Manager secret '{secret_name}' holds no API key: store the key as plain "
            'text, or as JSON {"api_key": "..."}'
        )
    return key


# Answers that say "not now" rather than "not so": boto3 has already retried them.
_TRANSIENT_CODES = frozenset(
    {
        "ThrottlingException",
        "Throttling",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "InternalServiceError",
        "InternalFailure",
        "ServiceUnavailable",
        "RequestTimeout",
    }
)


def _transient(error: BaseException | None) -> bool:
    """A dropped connection or timeout, a throttle, a 5xx: no fault of the configuration."""
    if isinstance(error, ClientError):
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return aws_error_code(error) in _TRANSIENT_CODES or status >= 500
    # Not every BotoCoreError: missing credentials or a region, an invalid parameter are set-up.
    return isinstance(error, BotoConnectionError | HTTPClientError)


@lru_cache(maxsize=1)
def secrets_provider() -> SecretsProvider:
    """Powertools' provider on a client of boto3's default session, the one S3's client uses.

    ``parameters.get_secret`` would build its provider on a new boto3 Session: another botocore
    session to set up and another copy of the endpoint rules to load, ~35 ms of every cold start.
    """
    from aws_lambda_powertools.utilities.parameters import SecretsProvider  # noqa: PLC0415

    return SecretsProvider(boto3_client=boto3.client("secretsmanager", config=_CONFIG))


def _key_from_secret(value: str) -> str:
    """Plain text, or the console's key/value JSON with an ``api_key`` entry."""
    value = value.strip()
    if not value.startswith("{"):
        return value
    try:
        parsed = json.loads(value)
    except ValueError:
        return ""
    if not isinstance(parsed, dict):
        return ""
    for name in ("api_key", "VITAL_API_KEY", "apiKey", "x-vital-api-key"):
        candidate = parsed.get(name)
        if isinstance(candidate, str) and candidate.strip():
            return candidate.strip()
    return ""


def clear_caches() -> None:
    """For tests that point boto3 at a new endpoint."""
    from aws_lambda_powertools.utilities import parameters  # noqa: PLC0415 - cold start

    s3_client.cache_clear()
    secrets_provider.cache_clear()
    sqs_client.cache_clear()
    sns_client.cache_clear()
    parameters.clear_caches()  # type: ignore[no-untyped-call]


@lru_cache(maxsize=1)
def sqs_client() -> SQSClient:
    return boto3.client("sqs", config=_CONFIG)


# SQS's longest delay, and the longest an idempotency hold can last: it ends with the holding
# invocation's timeout (900 s at most).
RECHECK_DELAY_SECONDS = 900


def hand_off(message: ContinuationMessage, queue_url: str | None, delay_seconds: int = 0) -> None:
    """Queue the rest of a long file for a fresh invocation (the message holds no tokens)."""
    body = message.model_dump_json()
    if not queue_url:
        # The same event again would find the hand-off saved and try it again: the way on is
        # the continuation itself, in the shape of the queue's event.
        event = json.dumps({"Records": [{"eventSource": "aws:sqs", "body": body}]})
        raise ConfigurationError(
            "the file needs another invocation but CONTINUATION_QUEUE_URL is not set; set it "
            "(template.yaml creates the queue), or invoke the function with this event to "
            f"continue from the checkpoint: {event}"
        )
    sqs_client().send_message(QueueUrl=queue_url, MessageBody=body, DelaySeconds=delay_seconds)


@lru_cache(maxsize=1)
def sns_client() -> SNSClient:
    return boto3.client("sns", config=_CONFIG)


def announce(topic_arn: str, summary: dict[str, Any]) -> None:
    """Publish a finished file's summary (status, counts, where the manifest is; no tokens)."""
    sns_client().publish(
        TopicArn=topic_arn,
        Subject=f"Vital bulk import {summary.get('status', 'finished')}"[:99],
        Message=json.dumps(summary),
        MessageAttributes={
            "status": {"DataType": "String", "StringValue": str(summary.get("status"))}
        },
    )
