"""Settings from the environment: defaults, normalisation, and errors that name the variable."""

from __future__ import annotations

from pathlib import Path

import pytest
from botocore.exceptions import (
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
    ParamValidationError,
    ReadTimeoutError,
)
from pydantic import ValidationError

from bulk_import.config import BASE_URLS, Settings, SettingsError, get_settings
from bulk_import.model import PROVIDERS

ALIASES = sorted(Settings.variables())
TEAM_ID = "0b4c9e2a-7d31-4f8e-9a6b-1c2d3e4f5a6b"
# Junction's documented hosts, by (VITAL_ENVIRONMENT, VITAL_REGION).
DOCUMENTED_BASE_URLS = {
    ("production", "us"): "https://api.us.junction.com",
    ("production", "eu"): "https://api.eu.junction.com",
    ("sandbox", "us"): "https://api.sandbox.us.junction.com",
    ("sandbox", "eu"): "https://api.sandbox.eu.junction.com",
}


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ALIASES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_defaults() -> None:
    s = Settings.from_env({"VITAL_API_KEY_SECRET": "vital/api-key"})
    expected = {
        "vital_region": "us",
        "vital_environment": "production",
        "vital_api_base_url": None,
        "vital_api_key_secret": "vital/api-key",
        "vital_team_id": None,
        "chunk_size": 500,
        "max_body_bytes": 4_000_000,
        "max_concurrency": 4,
        "wait_for_completion": True,
        "incoming_prefix": "incoming/",
        "results_prefix": "results/",
        "retry_prefix": "retry/",
        "idempotency_table": None,
        "continuation_queue_url": None,
        "notify_topic_arn": None,
        "max_decompressed_bytes": 20 * 1024**3,
        "max_row_bytes": 1_000_000,
        "failure_threshold_percent": 100.0,
        "safety_margin_seconds": 60.0,
        "http_timeout_seconds": 30.0,
        "max_attempts": 5,
        "secret_max_age_seconds": 300,
    }
    dumped = s.model_dump()
    # Settings added later need their own default test; these must not change silently.
    assert {name: dumped[name] for name in expected} == expected
    assert s.base_url == "https://api.us.junction.com"
    assert s.bulk_import_url == "https://api.us.junction.com/v2/link/bulk_import"
    assert s.bulk_op_url == "https://api.us.junction.com/v2/link/bulk_op"


def test_from_env_reads_os_environ_through_get_settings(env: pytest.MonkeyPatch) -> None:
    env.setenv("VITAL_API_KEY_SECRET", "arn:aws:secretsmanager:eu-west-1:1:secret:k")
    env.setenv("VITAL_API_BASE_URL", "https://api.sandbox.eu.tryvital.io")
    env.setenv("CHUNK_SIZE", "250")
    env.setenv("WAIT_FOR_COMPLETION", "false")
    env.setenv("VITAL_TEAM_ID", TEAM_ID)
    s = get_settings()
    assert s is get_settings()  # cached per execution environment
    assert (s.chunk_size, s.wait_for_completion, s.vital_team_id) == (250, False, TEAM_ID)
    assert s.bulk_import_url == "https://api.sandbox.eu.tryvital.io/v2/link/bulk_import"
    env.setenv("CHUNK_SIZE", "10")
    assert get_settings().chunk_size == 250
    get_settings.cache_clear()
    assert get_settings().chunk_size == 10


@pytest.mark.parametrize(
    ("value", "expected"),
    [("uploads", "uploads/"), ("uploads/", "uploads/"), ("a/b", "a/b/")],
)
def test_prefixes_get_a_trailing_slash(value: str, expected: str) -> None:
    s = Settings.from_env(
        {
            "VITAL_API_KEY_SECRET": "k",
            "INCOMING_PREFIX": value,
            "RESULTS_PREFIX": value.replace("uploads", "reports").replace("a/", "r/"),
            "RETRY_PREFIX": value.replace("uploads", "again").replace("a/", "t/"),
        }
    )
    assert s.incoming_prefix == expected
    assert s.results_prefix == expected.replace("uploads", "reports").replace("a/", "r/")
    assert s.retry_prefix == expected.replace("uploads", "again").replace("a/", "t/")


def test_empty_strings_are_treated_as_unset() -> None:
    s = Settings.from_env(
        {
            "VITAL_API_KEY_SECRET": "k",
            "VITAL_API_BASE_URL": "",
            "VITAL_REGION": "",
            "VITAL_ENVIRONMENT": "",
            "VITAL_TEAM_ID": "",
            "CHUNK_SIZE": "",
            "WAIT_FOR_COMPLETION": "",
            "INCOMING_PREFIX": "",
            "RESULTS_PREFIX": "",
            "IDEMPOTENCY_TABLE": "",
        }
    )
    assert s == Settings.from_env({"VITAL_API_KEY_SECRET": "k"})
    assert s.vital_team_id is None
    assert s.incoming_prefix == "incoming/"
    assert s.idempotency_table is None


@pytest.mark.parametrize(("environment", "region"), sorted(DOCUMENTED_BASE_URLS))
def test_region_and_environment_pick_the_junction_host(environment: str, region: str) -> None:
    s = Settings.from_env(
        {"VITAL_API_KEY_SECRET": "k", "VITAL_ENVIRONMENT": environment, "VITAL_REGION": region}
    )
    expected = DOCUMENTED_BASE_URLS[environment, region]
    assert (s.vital_environment, s.vital_region) == (environment, region)
    assert s.base_url == expected
    assert s.bulk_import_url == expected + "/v2/link/bulk_import"
    assert s.bulk_op_url == expected + "/v2/link/bulk_op"


def test_the_hosts_have_one_mapping_covering_every_region_and_environment() -> None:
    assert dict(BASE_URLS) == DOCUMENTED_BASE_URLS


@pytest.mark.parametrize(
    ("environment", "region", "default"),
    [
        ("sandbox", None, "https://api.sandbox.us.junction.com"),
        (None, "eu", "https://api.eu.junction.com"),
    ],
)
def test_region_and_environment_default_separately(
    environment: str | None, region: str | None, default: str
) -> None:
    environ = {"VITAL_API_KEY_SECRET": "k"}
    if environment:
        environ["VITAL_ENVIRONMENT"] = environment
    if region:
        environ["VITAL_REGION"] = region
    assert Settings.from_env(environ).base_url == default


@pytest.mark.parametrize(
    "url",
    [
        "https://api.tryvital.io",
        "https://api.eu.tryvital.io",
        "https://api.sandbox.tryvital.io",
        "https://api.sandbox.eu.tryvital.io",
    ],
)
@pytest.mark.parametrize(("environment", "region"), sorted(DOCUMENTED_BASE_URLS))
def test_base_url_takes_precedence_over_region_and_environment(
    url: str, environment: str, region: str
) -> None:
    s = Settings.from_env(
        {
            "VITAL_API_KEY_SECRET": "k",
            "VITAL_API_BASE_URL": url,
            "VITAL_ENVIRONMENT": environment,
            "VITAL_REGION": region,
        }
    )
    assert s.base_url == url
    assert s.bulk_import_url == url + "/v2/link/bulk_import"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (TEAM_ID, TEAM_ID),
        (TEAM_ID.upper(), TEAM_ID),
        (f"  {TEAM_ID}\n", TEAM_ID),
    ],
)
def test_team_id_is_a_uuid(value: str, expected: str) -> None:
    s = Settings.from_env({"VITAL_API_KEY_SECRET": "k", "VITAL_TEAM_ID": value})
    assert s.vital_team_id == expected


@pytest.mark.parametrize(
    "value",
    [
        "team-1",
        "sk_live_notateamid",
        TEAM_ID[:-1],
        TEAM_ID + "0",
        TEAM_ID.replace("-", ""),
        "{" + TEAM_ID + "}",
        "urn:uuid:" + TEAM_ID,
        TEAM_ID.replace("0", "g"),
    ],
)
def test_malformed_team_id_names_the_variable_without_its_value(value: str) -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_env({"VITAL_API_KEY_SECRET": "k", "VITAL_TEAM_ID": value})
    message = str(info.value)
    assert message.startswith("invalid configuration: VITAL_TEAM_ID: ")
    assert "UUID" in message
    assert value not in message
    assert message.count(": ") == 2  # one problem, no input echoed
    assert info.value.__cause__ is None


def test_extra_providers_add_to_the_documented_ones() -> None:
    s = Settings.from_env({"VITAL_API_KEY_SECRET": "k", "EXTRA_PROVIDERS": " Acme_Ring, ,zeta2 "})
    assert s.extra_providers == {"acme_ring", "zeta2"}
    assert s.providers == PROVIDERS | {"acme_ring", "zeta2"}
    assert Settings.from_env({"VITAL_API_KEY_SECRET": "k"}).providers == PROVIDERS


@pytest.mark.parametrize("value", ["oura,acme-ring", "oura,2fit", "oura,sk_live_0123456789abc="])
def test_a_malformed_extra_provider_names_the_variable_and_the_entry_not_its_text(
    value: str,
) -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_env({"VITAL_API_KEY_SECRET": "k", "EXTRA_PROVIDERS": value})
    message = str(info.value)
    assert message.startswith("invalid configuration: EXTRA_PROVIDERS: entry 2 is not a provider")
    assert value.split(",")[1] not in message


def test_base_url_trailing_slash_does_not_double() -> None:
    s = Settings.model_validate(
        {"VITAL_API_KEY_SECRET": "x", "VITAL_API_BASE_URL": "http://vital.test/"}
    )
    assert s.bulk_import_url == "http://vital.test/v2/link/bulk_import"
    s = Settings.model_validate(
        {"vital_api_key_secret": "x", "vital_api_base_url": "http://vital.test"}
    )
    assert s.bulk_op_url == "http://vital.test/v2/link/bulk_op"


@pytest.mark.parametrize("value", ["abc", "0", "5001", "1.5", "-3"])
def test_invalid_chunk_size_names_the_variable(value: str) -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_env({"VITAL_API_KEY_SECRET": "k", "CHUNK_SIZE": value})
    assert str(info.value).startswith("invalid configuration: CHUNK_SIZE: ")
    assert f"input_value={value}" not in str(info.value)


def test_missing_api_key_secret_names_the_variable_and_echoes_no_environment() -> None:
    environ = {"VITAL_API_KEY_SECRET": "", "AWS_SECRET_ACCESS_KEY": "shh-not-for-logs"}
    with pytest.raises(SettingsError) as info:
        Settings.from_env(environ)
    assert str(info.value) == "invalid configuration: VITAL_API_KEY_SECRET: Field required"
    assert "shh-not-for-logs" not in str(info.value)
    assert info.value.__cause__ is None


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("VITAL_API_BASE_URL", "not a url"),
        ("VITAL_REGION", "ap"),
        ("VITAL_REGION", "US "),
        ("VITAL_ENVIRONMENT", "staging"),
        ("VITAL_ENVIRONMENT", "production-eu"),
        ("MAX_CONCURRENCY", "65"),
        ("WAIT_FOR_COMPLETION", "maybe"),
        ("MAX_ATTEMPTS", "0"),
        ("FAILURE_THRESHOLD_PERCENT", "101"),
        ("MAX_ROW_BYTES", "10"),
        ("REJECTED_STOP_AFTER_ROWS", "-1"),
        ("REJECTED_STOP_PERCENT", "101"),
    ],
)
def test_other_invalid_values_name_their_variable(name: str, value: str) -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_env({"VITAL_API_KEY_SECRET": "k", name: value})
    assert str(info.value).startswith(f"invalid configuration: {name}: ")
    assert str(info.value).count(": ") == 2  # one problem, no input echoed


def test_rejection_threshold_defaults_to_a_thousand_rows_or_half_of_them() -> None:
    s = Settings.from_env({"VITAL_API_KEY_SECRET": "k"})
    assert (s.rejected_stop_after_rows, s.rejected_stop_percent) == (1000, 50.0)


def test_rejection_threshold_is_set_by_its_variables_zero_rows_or_100_percent_off() -> None:
    s = Settings.from_env(
        {
            "VITAL_API_KEY_SECRET": "k",
            "REJECTED_STOP_AFTER_ROWS": "0",
            "REJECTED_STOP_PERCENT": "100",
        }
    )
    assert (s.rejected_stop_after_rows, s.rejected_stop_percent) == (0, 100.0)
    assert {"REJECTED_STOP_AFTER_ROWS", "REJECTED_STOP_PERCENT"} <= Settings.variables()


def test_settings_are_frozen() -> None:
    s = Settings.from_env({"VITAL_API_KEY_SECRET": "x"})
    with pytest.raises(ValidationError, match="frozen"):
        s.chunk_size = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("incoming", "results"), [("data/", "data/"), ("uploads/", "uploads/results/")]
)
def test_results_prefix_inside_incoming_prefix_is_refused(incoming: str, results: str) -> None:
    with pytest.raises(SettingsError, match="RESULTS_PREFIX"):
        Settings.from_env(
            {"VITAL_API_KEY_SECRET": "k", "INCOMING_PREFIX": incoming, "RESULTS_PREFIX": results}
        )


@pytest.mark.parametrize(
    ("results", "retry"), [("out/", "out/"), ("results/", "results/retry/"), ("r/x/", "r/")]
)
def test_retry_files_cannot_share_the_results_prefix(results: str, retry: str) -> None:
    """Retry files hold tokens: under the results prefix they would keep its longer expiry."""
    with pytest.raises(SettingsError, match=r"RETRY_PREFIX \(.*\) must not overlap RESULTS_PREFIX"):
        Settings.from_env(
            {"VITAL_API_KEY_SECRET": "k", "RESULTS_PREFIX": results, "RETRY_PREFIX": retry}
        )


@pytest.mark.parametrize(
    ("stored", "key"),
    [
        ("sk_plain_value", "sk_plain_value"),
        ("  sk_padded \n", "sk_padded"),
        ('{"api_key": "sk_in_json"}', "sk_in_json"),
        ('{"VITAL_API_KEY": "sk_upper"}', "sk_upper"),
        ('{"other": "x"}', ""),
        ("{not json", ""),
        ("[1, 2]", "[1, 2]"),
    ],
)
def test_api_key_secret_may_be_plain_text_or_json(stored: str, key: str) -> None:
    from bulk_import.storage.aws import _key_from_secret  # noqa: PLC0415

    assert _key_from_secret(stored) == key


def test_readme_documents_every_setting() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    for name in Settings.variables():
        assert f"`{name}`" in readme, f"README does not document {name}"


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (ClientError({"Error": {"Code": "ThrottlingException"}}, "GetSecretValue"), True),
        (
            ClientError(
                {"Error": {"Code": "Whatever"}, "ResponseMetadata": {"HTTPStatusCode": 503}},
                "GetSecretValue",
            ),
            True,
        ),
        (EndpointConnectionError(endpoint_url="https://secretsmanager.test"), True),
        (ReadTimeoutError(endpoint_url="https://secretsmanager.test"), True),
        (ClientError({"Error": {"Code": "ResourceNotFoundException"}}, "GetSecretValue"), False),
        (ClientError({"Error": {"Code": "AccessDeniedException"}}, "GetSecretValue"), False),
        (NoCredentialsError(), False),
        (ParamValidationError(report="bad SecretId"), False),
        (None, False),
    ],
    ids=lambda v: type(v).__name__ if not isinstance(v, bool) else str(v),
)
def test_secrets_manager_errors_worth_a_retry_are_told_from_set_up_errors(
    error: BaseException | None, transient: bool
) -> None:
    # A retry cures a throttle or an outage, not a missing secret, a denied role or a typo.
    from bulk_import.storage.aws import _transient  # noqa: PLC0415

    assert _transient(error) is transient
