"""``wiring.build``: the defaults of an invocation, the overrides tests pass, and the parts that
talk to AWS (the API key, the hand-off, the summary); then the whole handler through it."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import httpx
import pytest
from aws_lambda_powertools.utilities.parameters import SecretsProvider
from aws_lambda_powertools.utilities.parameters.exceptions import GetParameterError
from botocore.exceptions import ClientError, EndpointConnectionError
from moto import mock_aws

from bulk_import import vital, wiring
from bulk_import.config import Settings
from bulk_import.errors import ConfigurationError, TransientError
from bulk_import.events import WorkItem, work_items
from bulk_import.handler import make_handler
from bulk_import.model import ContinuationMessage, ObjectRef
from bulk_import.storage import aws
from bulk_import.storage.checkpoint_store import CheckpointStore
from bulk_import.storage.results import ResultWriter
from bulk_import.wiring import Tunables, Wiring, build
from local.context import LocalLambdaContext
from local.events import s3_event
from tests.fakes import FakeS3, StoreState, fake_aws_env, stores
from tests.helpers import encode_rows, make_row, parse_outcomes

SETTINGS = Settings.from_env({"VITAL_API_KEY_SECRET": "vital-key"})
S3 = FakeS3()


@dataclass
class FixedContext:
    """A Lambda context whose remaining time stands still."""

    aws_request_id: str = "req-0001"
    remaining_ms: int = 42_500

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms


class FakeSecrets:
    """Powertools' ``SecretsProvider.get``: a value, or the error Powertools wraps."""

    def __init__(self, value: str | None = None, error: Exception | None = None) -> None:
        self.value = value
        self.error = error
        self.asked: list[tuple[str, int | None]] = []

    def get(self, name: str, max_age: int | None = None, **kwargs: Any) -> str | None:
        self.asked.append((name, max_age))
        if self.error is not None:
            try:
                raise self.error
            except (ClientError, EndpointConnectionError) as exc:
                raise GetParameterError(str(exc))  # noqa: B904 - as Powertools raises it
        return self.value


def client_error(code: str, status: int = 400) -> ClientError:
    return ClientError(
        {
            "Error": {"Code": code, "Message": f"{code} happened"},
            "ResponseMetadata": {"HTTPStatusCode": status},
        },
        "GetSecretValue",
    )


def with_secrets(provider: FakeSecrets, settings: Settings = SETTINGS) -> Wiring:
    return build(settings, FixedContext(), s3=S3, secrets=lambda: provider)


@pytest.fixture
def aws_mock(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """moto in-process, with the package's cached boto3 clients built inside it."""
    fake_aws_env(monkeypatch)
    aws.clear_caches()
    try:
        with mock_aws():
            yield
    finally:
        aws.clear_caches()


# --- defaults -------------------------------------------------------------------------------------


def test_given_settings_and_a_context_then_build_yields_the_defaults() -> None:
    w = build(SETTINGS, FixedContext(), s3=S3)
    assert w.settings is SETTINGS
    assert w.s3 is S3
    assert w.request_id == "req-0001"
    assert w.remaining_seconds() == 42.5
    assert w.tunables == Tunables()
    assert w.transport is None
    assert w.results is None
    assert w.new_store is CheckpointStore
    assert w.post_chunk is vital.post_chunk
    assert w.secrets is aws.secrets_provider
    assert w.clock is time.monotonic
    assert w.sleep is time.sleep


def test_the_remaining_seconds_follow_the_context_as_it_counts_down() -> None:
    context = FixedContext(remaining_ms=10_000)
    w = build(SETTINGS, context, s3=S3)
    context.remaining_ms = 1_250
    assert w.remaining_seconds() == 1.25


def test_without_an_idempotency_table_the_guard_leaves_the_work_as_it_is() -> None:
    def work(ref: ObjectRef) -> dict[str, Any]:
        return {}

    assert build(SETTINGS, FixedContext(), s3=S3).guard(work) is work


def test_without_an_s3_override_the_packages_cached_client_is_used(aws_mock: None) -> None:
    w = build(SETTINGS, FixedContext())
    assert w.s3 is aws.s3_client()
    assert w.s3.meta.service_model.service_name == "s3"


def test_the_writer_is_built_from_s3_and_the_spool_keep_limit() -> None:
    w = build(SETTINGS, FixedContext(), s3=S3)
    assert w.writer() == ResultWriter(S3, Tunables().spool_keep_bytes)  # type: ignore[arg-type]
    small = build(SETTINGS, FixedContext(), s3=S3, tunables=Tunables(spool_keep_bytes=123))
    assert small.writer().spool_keep_bytes == 123
    assert small.writer().s3 is S3


def test_given_a_results_writer_then_writer_returns_it() -> None:
    results = ResultWriter(FakeS3(), 7)  # type: ignore[arg-type]
    w = build(SETTINGS, FixedContext(), s3=S3, results=results)
    assert w.writer() is results


# --- overrides ------------------------------------------------------------------------------------


def _post(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("not posted in this test")


OVERRIDES: dict[str, object] = {
    "s3": FakeS3(),
    "request_id": "req-other",
    "remaining_seconds": lambda: 3.0,
    "secrets": lambda: FakeSecrets("k"),
    "guard": lambda work: work,
    "transport": httpx.MockTransport(lambda request: httpx.Response(200)),
    "new_store": stores(StoreState()),
    "results": ResultWriter(FakeS3(), 9),  # type: ignore[arg-type]
    "post_chunk": _post,
    "serialise": lambda row: b"{}",
    "tunables": Tunables(recheck_delay_seconds=5),
    "clock": lambda: 100.0,
    "sleep": lambda seconds: None,
}


def test_every_part_of_the_wiring_can_be_overridden() -> None:
    names = set(Wiring._fields)
    assert names - {"settings"} == set(OVERRIDES)


@pytest.mark.parametrize("name", sorted(OVERRIDES))
def test_an_override_replaces_exactly_the_named_part(name: str) -> None:
    plain = build(SETTINGS, FixedContext(), s3=S3)
    changed = build(SETTINGS, FixedContext(), **{"s3": S3, name: OVERRIDES[name]})
    assert getattr(changed, name) is OVERRIDES[name]
    for part in Wiring._fields:
        if part in {name, "remaining_seconds", "guard"}:
            continue
        assert getattr(changed, part) == getattr(plain, part), part
    if name != "remaining_seconds":
        assert changed.remaining_seconds() == 42.5


def test_an_override_of_no_part_fails_loudly() -> None:
    with pytest.raises(TypeError, match="clocks"):
        build(SETTINGS, FixedContext(), s3=S3, clocks=lambda: 0.0)


def test_the_wiring_is_frozen() -> None:
    w = build(SETTINGS, FixedContext(), s3=S3)
    with pytest.raises(AttributeError):
        w.clock = lambda: 0.0  # type: ignore[misc]


# --- the hand-off and the summary --------------------------------------------------------------


def test_given_no_continuation_queue_when_handing_off_then_the_error_holds_the_event() -> None:
    ref = ObjectRef(bucket="bucket-a", key="incoming/oura/a.jsonl", version_id="v1", segment=2)
    w = build(SETTINGS, FixedContext(), s3=S3)
    with pytest.raises(ConfigurationError) as exc:
        w.hand_off(ContinuationMessage(ref=ref))
    message = str(exc.value)
    assert "CONTINUATION_QUEUE_URL" in message
    # The event in the message continues the import when the function is invoked with it
    marker = "continue from the checkpoint: "
    event = json.loads(message[message.index(marker) + len(marker) :])
    assert work_items(event, SETTINGS) == [WorkItem(ref, from_queue=True)]


def test_given_a_continuation_queue_when_handing_off_then_the_message_is_queued(
    aws_mock: None,
) -> None:
    sqs = boto3.client("sqs")
    url = sqs.create_queue(QueueName="continuations")["QueueUrl"]
    settings = Settings.from_env({"VITAL_API_KEY_SECRET": "k", "CONTINUATION_QUEUE_URL": url})
    w = build(settings, FixedContext(), s3=S3)
    ref = ObjectRef(bucket="bucket-a", key="incoming/a.jsonl", segment=1)
    w.hand_off(ContinuationMessage(ref=ref))
    [message] = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)["Messages"]
    assert ContinuationMessage.model_validate_json(message["Body"]).ref == ref
    # A delayed second look is not visible before its delay
    w.hand_off(ContinuationMessage(ref=ref), delay_seconds=900)
    assert "Messages" not in sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)


def test_given_no_topic_when_announcing_then_nothing_is_published(aws_mock: None) -> None:
    w = build(SETTINGS, FixedContext(), s3=S3)
    w.announce({"status": "succeeded"})
    assert boto3.client("sns").list_topics()["Topics"] == []


def test_given_a_topic_when_announcing_then_the_summary_is_published(aws_mock: None) -> None:
    sns, sqs = boto3.client("sns"), boto3.client("sqs")
    topic = sns.create_topic(Name="finished")["TopicArn"]
    url = sqs.create_queue(QueueName="inbox")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=arn["QueueArn"])
    settings = Settings.from_env({"VITAL_API_KEY_SECRET": "k", "NOTIFY_TOPIC_ARN": topic})
    build(settings, FixedContext(), s3=S3).announce({"status": "partial", "key": "incoming/a"})
    [message] = sqs.receive_message(QueueUrl=url)["Messages"]
    envelope = json.loads(message["Body"])
    assert json.loads(envelope["Message"]) == {"status": "partial", "key": "incoming/a"}
    assert envelope["Subject"] == "Vital bulk import partial"


# --- the API key ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("secret", "key"),
    [
        ("sk_us_plain", "sk_us_plain"),
        ("  sk_us_spaced\n", "sk_us_spaced"),
        ('{"api_key": "sk_us_json"}', "sk_us_json"),
        ('{"other": "x", "api_key": " sk_us_json2 "}', "sk_us_json2"),
    ],
)
def test_the_api_key_is_read_from_plain_text_or_json(secret: str, key: str) -> None:
    provider = FakeSecrets(secret)
    assert with_secrets(provider).api_key() == key
    assert provider.asked == [("vital-key", SETTINGS.secret_max_age_seconds)]


@pytest.mark.parametrize(
    "secret", ['{"password": "hunter2-secret"}', '{"api_key": ""}', "", "   ", None, "{not json"]
)
def test_a_secret_without_a_key_is_a_configuration_error_that_echoes_nothing(
    secret: str | None,
) -> None:
    with pytest.raises(ConfigurationError) as exc:
        with_secrets(FakeSecrets(secret)).api_key()
    assert "holds no API key" in str(exc.value)
    assert "hunter2" not in str(exc.value)


@pytest.mark.parametrize(
    "error",
    [
        client_error("ThrottlingException"),
        client_error("InternalServiceError", 500),
        client_error("SomethingNew", 503),
        EndpointConnectionError(endpoint_url="https://secretsmanager.us-east-1.amazonaws.com"),
    ],
)
def test_given_secrets_manager_does_not_answer_then_the_key_read_is_transient(
    error: Exception,
) -> None:
    with pytest.raises(TransientError) as exc:
        with_secrets(FakeSecrets(error=error)).api_key()
    assert "Lambda retries" in str(exc.value)


@pytest.mark.parametrize(
    "code", ["AccessDeniedException", "ResourceNotFoundException", "DecryptionFailure"]
)
def test_given_the_secret_cannot_be_read_then_it_is_a_configuration_error(code: str) -> None:
    with pytest.raises(ConfigurationError) as exc:
        with_secrets(FakeSecrets(error=client_error(code))).api_key()
    message = str(exc.value)
    assert "'vital-key'" in message
    assert code in message
    assert "VITAL_API_KEY_SECRET" in message


def test_with_powertools_own_provider_a_missing_secret_is_a_configuration_error(
    aws_mock: None,
) -> None:
    provider = SecretsProvider(boto3_client=boto3.client("secretsmanager"))
    w = build(SETTINGS, FixedContext(), s3=S3, secrets=lambda: provider)
    with pytest.raises(ConfigurationError) as exc:
        w.api_key()
    assert "ResourceNotFoundException" in str(exc.value)


def test_with_powertools_own_provider_a_json_secret_is_read(aws_mock: None) -> None:
    client = boto3.client("secretsmanager")
    client.create_secret(Name="vital-key", SecretString='{"api_key": "sk_from_moto"}')
    provider = SecretsProvider(boto3_client=client)
    w = build(SETTINGS, FixedContext(), s3=S3, secrets=lambda: provider)
    assert w.api_key() == "sk_from_moto"


# --- the handler, end to end ----------------------------------------------------------------------


@dataclass
class VitalFake:
    """``POST /v2/link/bulk_import`` answering 200 with every user imported."""

    requests: list[httpx.Request] = dataclasses.field(default_factory=list)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        body = json.loads(request.content)
        imported = [c["user_id"] for c in body["connections"]]
        return httpx.Response(200, json={"user_ids_imported": imported, "user_ids_failed": []})


def handler_with(**fakes: Any) -> Callable[[dict[str, Any], Any], dict[str, Any]]:
    return make_handler(lambda settings, context: wiring.build(settings, context, **fakes))


def test_given_a_small_file_when_the_handler_runs_then_every_row_is_imported_and_reported(
    aws_mock: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in Settings.variables():
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("VITAL_API_KEY_SECRET", "vital-key")
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="bucket-a")
    rows = [make_row(n) for n in range(3)]
    s3.put_object(Bucket="bucket-a", Key="incoming/oura/a.jsonl", Body=encode_rows(rows, "jsonl"))
    vital_fake = VitalFake()
    handler = handler_with(
        transport=httpx.MockTransport(vital_fake), secrets=lambda: FakeSecrets("sk_test_key")
    )
    context = LocalLambdaContext(120)

    result = handler(s3_event("bucket-a", ["incoming/oura/a.jsonl"]), context)

    [summary] = result["files"]
    assert summary["status"] == "succeeded"
    assert summary["key"] == "incoming/oura/a.jsonl"
    assert summary["counts"]["rows"] == summary["counts"]["imported"] == 3
    assert summary["manifest"] == "results/oura/a.jsonl/manifest.json"
    assert summary["request_id"] == context.aws_request_id
    manifest = json.loads(
        s3.get_object(Bucket="bucket-a", Key="results/oura/a.jsonl/manifest.json")["Body"].read()
    )
    assert manifest["status"] == "succeeded"
    assert manifest["counts"]["imported"] == 3
    outcomes = parse_outcomes(
        s3.get_object(Bucket="bucket-a", Key="results/oura/a.jsonl/outcomes.csv")["Body"].read()
    )
    assert [(o["line"], o["user_id"], o["outcome"]) for o in outcomes] == [
        (str(n + 1), row["user_id"], "imported") for n, row in enumerate(rows)
    ]
    # One request, with the key and every row; the import's state is cleared
    [request] = vital_fake.requests
    assert request.url.path == "/v2/link/bulk_import"
    assert request.headers["x-vital-api-key"] == "sk_test_key"
    body = json.loads(request.content)
    assert body["provider"] == "oura"
    assert [c["user_id"] for c in body["connections"]] == [r["user_id"] for r in rows]
    left = {o["Key"] for o in s3.list_objects_v2(Bucket="bucket-a")["Contents"]}
    assert left == {
        "incoming/oura/a.jsonl",
        "results/oura/a.jsonl/manifest.json",
        "results/oura/a.jsonl/outcomes.csv",
    }
