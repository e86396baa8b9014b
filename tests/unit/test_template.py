"""template.yaml: lints clean, renders with SAM, and keeps its security promises.

No network: cfn-lint and the SAM translator run in-process, and the translator gets a stub for
the only call it could make to AWS (listing managed policies).
"""

from __future__ import annotations

import ast
import importlib
import json
import re
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from cfnlint.api import lint, lint_file
from cfnlint.config import ManualArgs
from cfnlint.decode import cfn_yaml

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "template.yaml"

# functions/ holds the Lambda package; put it on the path until a conftest does it for all tests.
FUNCTIONS = ROOT / "functions"
if str(FUNCTIONS) not in sys.path:
    sys.path.insert(0, str(FUNCTIONS))

FAKE_PSEUDO_PARAMETERS = {
    "AWS::AccountId": "123456789012",
    "AWS::Region": "us-east-1",
    "AWS::Partition": "aws",
    "AWS::StackName": "bulk-import-test",
}

# The only actions allowed on Resource "*": AWS offers no narrower resource for them.
RESOURCE_WILDCARD_ALLOWED = frozenset(
    {
        "xray:PutTraceSegments",  # X-Ray has no resource-level permissions
        "xray:PutTelemetryRecords",  # X-Ray has no resource-level permissions
    }
)
# AWS managed policies a role may carry. Empty: the ones SAM would attach
# (AWSLambdaBasicExecutionRole, AWSXrayWriteOnlyAccess, AWSLambdaSQSQueueExecutionRole) all
# grant their actions on "*", and their documents are not in the template to check.
MANAGED_POLICIES_ALLOWED: frozenset[str] = frozenset()

PREFIXES = {"incoming/", "results/", "retry/"}
# Junction's documented base URLs, by the template's VitalEnvironment and VitalRegion values.
VITAL_BASE_URLS = {
    ("production", "us"): "https://api.us.junction.com",
    ("production", "eu"): "https://api.eu.junction.com",
    ("sandbox", "us"): "https://api.sandbox.us.junction.com",
    ("sandbox", "eu"): "https://api.sandbox.eu.junction.com",
}
# Metrics the function emits (Powertools EMF); alarms may only watch these.
FUNCTION_METRICS = {
    "RowsRead",
    "RowsRejected",
    "RowsDuplicate",
    "RowsImported",
    "RowsFailed",
    "RowsEnqueued",
    "RowsErrored",
    "ChunksPosted",
    "Retries",
    "Throttles",
    "ServerErrors",
    "FilesProcessed",
    "FilesFailed",
}


# --------------------------------------------------------------------------------------------
# Loading and rendering
# --------------------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """cfn-lint's YAML nodes as plain dicts, lists and strings."""
    return json.loads(json.dumps(value))


@pytest.fixture(scope="module")
def source() -> dict[str, Any]:
    # cfn-lint's loader understands the short-form tags (!Sub, !Ref, ...) and returns long form.
    return _plain(cfn_yaml.load(str(TEMPLATE)))


def _sam_translator_is_declared() -> bool:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    dev = pyproject.get("dependency-groups", {}).get("dev", [])
    return any(re.match(r"aws-sam-translator\b", str(requirement)) for requirement in dev)


@pytest.fixture(scope="module")
def rendered(source: dict[str, Any]) -> dict[str, Any]:
    """The template as SAM would hand it to CloudFormation. A failing transform fails the test."""
    try:
        parser = importlib.import_module("samtranslator.parser.parser")
        public = importlib.import_module("samtranslator.public.translator")
        exceptions = importlib.import_module("samtranslator.model.exceptions")
    except ImportError:
        if _sam_translator_is_declared():
            raise
        pytest.skip("aws-sam-translator is not installed: add it to the dev dependency group")

    sam_template = _plain(source)
    # What `sam validate` does: the translator only accepts code already uploaded to S3.
    for resource in sam_template["Resources"].values():
        if resource["Type"] == "AWS::Serverless::Function":
            resource["Properties"]["CodeUri"] = "s3://artifacts-bucket/bulk-import.zip"

    translator = public.Translator(
        None,
        parser.Parser(),
        boto_session=boto3.session.Session(region_name=FAKE_PSEUDO_PARAMETERS["AWS::Region"]),
    )
    try:
        output = translator.translate(
            sam_template,
            parameter_values=dict(FAKE_PSEUDO_PARAMETERS),
            # Stands in for the IAM ListPolicies call; the template names no managed policy.
            get_managed_policy_map=dict,
        )
    except exceptions.InvalidDocumentException as error:
        causes = "; ".join(cause.message for cause in error.causes)
        pytest.fail(f"SAM transform failed: {causes}")
    return _plain(output)


def _resources(template: dict[str, Any], resource_type: str) -> dict[str, dict[str, Any]]:
    return {
        name: resource
        for name, resource in template["Resources"].items()
        if resource["Type"] == resource_type
    }


def _one(template: dict[str, Any], resource_type: str) -> tuple[str, dict[str, Any]]:
    found = _resources(template, resource_type)
    assert len(found) == 1, f"expected one {resource_type}, found {sorted(found)}"
    ((name, resource),) = found.items()
    return name, resource.get("Properties", {})


def _import_bucket(template: dict[str, Any]) -> dict[str, Any]:
    """The import bucket's properties (the stack has a second bucket: its access logs)."""
    return template["Resources"]["ImportBucket"]["Properties"]


def _bucket_policy(template: dict[str, Any], bucket: str) -> dict[str, Any]:
    """The properties of the one bucket policy of the named bucket."""
    (policy,) = [
        props
        for props in (
            r["Properties"] for r in _resources(template, "AWS::S3::BucketPolicy").values()
        )
        if props["Bucket"] == {"Ref": bucket}
    ]
    return policy


def _function(source: dict[str, Any]) -> dict[str, Any]:
    """The function's properties with the Globals merged in (what SAM does)."""
    _, props = _one(source, "AWS::Serverless::Function")
    merged = {**source.get("Globals", {}).get("Function", {}), **props}
    merged["Environment"] = {"Variables": _environment(source)}
    return merged


def _environment(source: dict[str, Any]) -> dict[str, Any]:
    _, props = _one(source, "AWS::Serverless::Function")
    global_env = source.get("Globals", {}).get("Function", {}).get("Environment", {})
    return {
        **global_env.get("Variables", {}),
        **props.get("Environment", {}).get("Variables", {}),
    }


def _branches(value: Any) -> Iterator[Any]:
    """Each concrete value a template value can take: both arms of Fn::If, no AWS::NoValue."""
    if isinstance(value, dict) and set(value) == {"Fn::If"}:
        _, when_true, when_false = value["Fn::If"]
        yield from _branches(when_true)
        yield from _branches(when_false)
    elif value != {"Ref": "AWS::NoValue"}:
        yield value


def _items(value: Any) -> list[Any]:
    """A policy field that may be one item, a list, or Fn::If of either, as a flat list."""
    items: list[Any] = []
    for branch in _branches(value):
        for item in branch if isinstance(branch, list) else [branch]:
            items.extend(_branches(item))
    return items


# --------------------------------------------------------------------------------------------
# cfn-lint
# --------------------------------------------------------------------------------------------


def test_cfn_lint_is_clean() -> None:
    matches = lint_file(TEMPLATE, config=ManualArgs(regions=["us-east-1", "eu-west-1"]))

    problems = [str(match) for match in matches if not match.rule.id.startswith("I")]
    assert problems == []


def test_rendered_template_lints_clean(rendered: dict[str, Any]) -> None:
    # cfn-lint checks SAM resources without expanding them, so only the rendered template shows
    # a cycle through what SAM generates (bucket notification -> permission -> function -> role).
    matches = lint(json.dumps(rendered), regions=["us-east-1"])

    problems = [str(match) for match in matches if not match.rule.id.startswith("I")]
    assert problems == []


# --------------------------------------------------------------------------------------------
# IAM: least privilege
# --------------------------------------------------------------------------------------------


def _identity_policies(template: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for name, resource in template["Resources"].items():
        props = resource.get("Properties", {})
        if resource["Type"] == "AWS::IAM::Role":
            for policy in _items(props.get("Policies", [])):
                yield f"{name}/{policy['PolicyName']}", policy["PolicyDocument"]
        elif resource["Type"] in {"AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"}:
            yield name, props["PolicyDocument"]


def _statements(template: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for where, document in _identity_policies(template):
        for index, statement in enumerate(_items(document["Statement"])):
            yield f"{where}[{statement.get('Sid', index)}]", statement


def _resource_text(resource: Any) -> str | None:
    """The ARN pattern a Resource stands for, pseudo parameters filled; None for Ref/GetAtt."""
    if isinstance(resource, dict) and set(resource) == {"Fn::Sub"}:
        sub = resource["Fn::Sub"]
        text = sub if isinstance(sub, str) else sub[0]
    elif isinstance(resource, str):
        text = resource
    else:
        return None  # Ref / GetAtt name one resource of this stack
    return re.sub(
        r"\$\{([^}]+)\}", lambda m: FAKE_PSEUDO_PARAMETERS.get(m[1], m[1].replace(":", "")), text
    )


def _is_wildcard_resource(resource: Any) -> bool:
    text = _resource_text(resource)
    if text is None:
        return False
    # "*" itself, or an ARN whose resource part is only a wildcard (all queues, all buckets, ...)
    return text == "*" or re.fullmatch(r"arn:[^:]*:[^:]*:[^:]*:[^:]*:[*?]+", text) is not None


def _wildcard_problems(where: str, statement: dict[str, Any]) -> list[str]:
    if statement.get("Effect") != "Allow":
        return []
    problems = [
        f"{where}: {key} allows everything not listed"
        for key in ("NotAction", "NotResource")
        if key in statement
    ]
    actions = _items(statement.get("Action", []))
    problems += [
        f"{where}: wildcard action {action!r}"
        for action in actions
        if not isinstance(action, str) or "*" in action or "?" in action
    ]
    if any(_is_wildcard_resource(r) for r in _items(statement.get("Resource", []))):
        problems += [
            f"{where}: {action!r} on Resource '*'"
            for action in actions
            if action not in RESOURCE_WILDCARD_ALLOWED
        ]
    return problems


@pytest.mark.parametrize("which", ["source", "rendered"])
def test_iam_policies_name_their_resources(which: str, request: pytest.FixtureRequest) -> None:
    template = request.getfixturevalue(which)

    statements = list(_statements(template))
    problems = [p for where, st in statements for p in _wildcard_problems(where, st)]

    assert statements, "no IAM policy statement found: the walk is broken"
    assert problems == []


@pytest.mark.parametrize("which", ["source", "rendered"])
def test_roles_carry_no_unlisted_managed_policies(
    which: str, request: pytest.FixtureRequest
) -> None:
    template = request.getfixturevalue(which)

    attached = {
        f"{name}: {arn}"
        for name, role in _resources(template, "AWS::IAM::Role").items()
        for arn in _items(role["Properties"].get("ManagedPolicyArns", []))
        if (arn if isinstance(arn, str) else json.dumps(arn)) not in MANAGED_POLICIES_ALLOWED
    }

    assert attached == set()


def test_the_detector_flags_wildcards() -> None:
    # Guards the two tests above against passing vacuously.
    star = {"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*"}
    all_queues = {"Effect": "Allow", "Action": "sqs:SendMessage", "Resource": "arn:aws:sqs:*:*:*"}
    all_s3 = {"Effect": "Allow", "Action": "s3:*", "Resource": "arn:aws:s3:::b/x"}
    xray = {"Effect": "Allow", "Action": "xray:PutTraceSegments", "Resource": "*"}

    assert _wildcard_problems("t", star)
    assert _wildcard_problems("t", all_queues)
    assert _wildcard_problems("t", all_s3)
    assert _wildcard_problems("t", xray) == []


def test_function_uses_the_explicit_role(source: dict[str, Any]) -> None:
    function = _function(source)

    # SAM generates no role (and so attaches no managed policy) when Role is given.
    assert function["Role"] == {"Fn::GetAtt": ["ImportFunctionRole", "Arn"]}
    assert "Policies" not in function


def test_rendered_template_has_only_the_explicit_role(rendered: dict[str, Any]) -> None:
    assert set(_resources(rendered, "AWS::IAM::Role")) == {"ImportFunctionRole"}


def test_function_can_never_write_under_incoming(source: dict[str, Any]) -> None:
    writes = [
        where
        for where, statement in _statements(source)
        if statement["Effect"] == "Allow"
        and {"s3:PutObject", "s3:DeleteObject"} & set(_items(statement["Action"]))
        and any("/incoming/" in (_resource_text(r) or "") for r in _items(statement["Resource"]))
    ]

    assert writes == []


def test_secret_access_is_the_one_secret(source: dict[str, Any]) -> None:
    grants = [
        statement
        for _, statement in _statements(source)
        if "secretsmanager:GetSecretValue" in _items(statement["Action"])
    ]

    assert len(grants) == 1
    assert [_resource_text(r) for r in _items(grants[0]["Resource"])] == [
        "arn:aws:secretsmanager:us-east-1:123456789012:secret:VitalApiKeySecretName-??????"
    ]


# --------------------------------------------------------------------------------------------
# Function
# --------------------------------------------------------------------------------------------


def test_function_runtime_handler_and_limits(source: dict[str, Any]) -> None:
    function = _function(source)

    assert function["Handler"] == "bulk_import.handler.lambda_handler"
    assert function["CodeUri"] == "functions/"
    assert function["Runtime"] == "python3.13"
    assert function["Architectures"] == ["arm64"]
    assert function["Tracing"] == "Active"
    assert function["Timeout"] == 900
    # 0 reserves none: an account with a concurrency limit of 10 cannot reserve any.
    assert function["ReservedConcurrentExecutions"] == {
        "Fn::If": ["ReservesConcurrency", {"Ref": "ReservedConcurrency"}, {"Ref": "AWS::NoValue"}]
    }
    assert source["Conditions"]["ReservesConcurrency"] == {
        "Fn::Not": [{"Fn::Equals": [{"Ref": "ReservedConcurrency"}, 0]}]
    }
    assert function["LoggingConfig"]["ApplicationLogLevel"] == "INFO"
    # Long files chain invocations through the continuation queue; Terminate stops at 16.
    assert function["RecursiveLoop"] == "Allow"
    assert function["LoggingConfig"]["LogGroup"] == {"Ref": "ImportLogGroup"}


def test_handler_names_a_function_under_code_uri(source: dict[str, Any]) -> None:
    function = _function(source)
    module, _, name = function["Handler"].rpartition(".")
    path = ROOT / function["CodeUri"] / (module.replace(".", "/") + ".py")

    # Read, not imported: a module-level function, or a name bound to one (make_handler()).
    defined = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            defined.add(node.name)
        elif isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
            defined.update(t.id for t in node.targets if isinstance(t, ast.Name))
    assert name in defined


def test_s3_event_fires_only_under_incoming(source: dict[str, Any]) -> None:
    _, props = _one(source, "AWS::Serverless::Function")
    bucket = source["Resources"]["ImportBucket"]
    (notification,) = bucket["Properties"]["NotificationConfiguration"]["LambdaConfigurations"]

    assert [e for e in props["Events"].values() if e["Type"] == "S3"] == []
    assert notification == {
        "Event": "s3:ObjectCreated:*",
        "Function": {"Fn::GetAtt": ["ImportFunction", "Arn"]},
        "Filter": {"S3Key": {"Rules": [{"Name": "prefix", "Value": "incoming/"}]}},
    }
    assert "ImportFunctionS3Permission" in bucket["DependsOn"]
    assert _environment(source)["INCOMING_PREFIX"] == "incoming/"


def test_rendered_bucket_notifies_only_for_incoming(rendered: dict[str, Any]) -> None:
    bucket = _import_bucket(rendered)
    notifications = bucket["NotificationConfiguration"]

    assert set(notifications) == {"LambdaConfigurations"}
    assert [c["Filter"] for c in notifications["LambdaConfigurations"]] == [
        {"S3Key": {"Rules": [{"Name": "prefix", "Value": "incoming/"}]}}
    ]


def test_continuation_queue_feeds_one_message_at_a_time(source: dict[str, Any]) -> None:
    _, props = _one(source, "AWS::Serverless::Function")
    sqs_events = [e["Properties"] for e in props["Events"].values() if e["Type"] == "SQS"]
    queue = source["Resources"]["ContinuationQueue"]["Properties"]

    assert sqs_events == [{"Queue": {"Fn::GetAtt": ["ContinuationQueue", "Arn"]}, "BatchSize": 1}]
    # AWS: a Lambda event source queue's visibility timeout is at least 6x the function timeout.
    assert queue["VisibilityTimeout"] >= 6 * _function(source)["Timeout"]
    assert queue["RedrivePolicy"]["deadLetterTargetArn"] == {
        "Fn::GetAtt": ["ContinuationDLQ", "Arn"]
    }


def test_a_second_look_at_a_busy_event_waits_out_the_longest_hold(
    source: dict[str, Any],
) -> None:
    """An idempotency hold ends with its invocation's timeout; SQS delays 900 s at most."""
    from bulk_import.storage.aws import RECHECK_DELAY_SECONDS  # noqa: PLC0415

    assert _function(source)["Timeout"] <= RECHECK_DELAY_SECONDS <= 900


def test_async_failures_land_in_the_dlq(source: dict[str, Any]) -> None:
    config = _function(source)["EventInvokeConfig"]

    assert config["MaximumRetryAttempts"] == 2
    # A backlog beyond the reserved concurrency waits as long as Lambda allows, not an hour.
    assert config["MaximumEventAgeInSeconds"] == 21600
    assert config["DestinationConfig"]["OnFailure"] == {
        "Type": "SQS",
        "Destination": {"Fn::GetAtt": ["ImportDLQ", "Arn"]},
    }


def _settings_aliases() -> tuple[set[str], set[str]]:
    """(every alias of bulk_import.config.Settings, the aliases without a default)."""
    settings = importlib.import_module("bulk_import.config").Settings
    required = {
        name.upper() for name, field in settings.model_fields.items() if field.is_required()
    }
    return set(settings.variables()), required


def test_environment_names_are_settings_fields(source: dict[str, Any]) -> None:
    aliases, required = _settings_aliases()
    names = set(_environment(source))

    unknown = {n for n in names - aliases if not n.startswith("POWERTOOLS_")}
    assert unknown == set()
    assert required <= names
    assert {
        "POWERTOOLS_SERVICE_NAME",
        "POWERTOOLS_METRICS_NAMESPACE",
        "POWERTOOLS_LOG_LEVEL",
    } <= names


def _resolve(value: Any, template: dict[str, Any], overrides: dict[str, str]) -> str:
    """An environment value as CloudFormation would deploy it with the given parameters."""
    parameters = template["Parameters"]
    if isinstance(value, str | int | float):
        return str(value)
    if set(value) == {"Ref"}:
        name = value["Ref"]
        if name in parameters:
            return overrides.get(name, str(parameters[name].get("Default", "")))
        assert name in template["Resources"], f"Ref to unknown {name}"
        return f"{name}-physical-id"
    if set(value) == {"Fn::FindInMap"}:
        mapping, first, second = value["Fn::FindInMap"]
        return str(
            template["Mappings"][mapping][_resolve(first, template, overrides)][
                _resolve(second, template, overrides)
            ]
        )
    if set(value) == {"Fn::If"}:
        condition, when_true, when_false = value["Fn::If"]
        holds = _holds(template["Conditions"][condition], template, overrides)
        return _resolve(when_true if holds else when_false, template, overrides)
    raise AssertionError(f"no resolver for {value}: extend _resolve")


def _holds(condition: dict[str, Any], template: dict[str, Any], overrides: dict[str, str]) -> bool:
    """A CloudFormation condition's value with the given parameters."""
    ((function, arguments),) = condition.items()
    if function == "Fn::Equals":
        first, second = (_resolve(a, template, overrides) for a in arguments)
        return first == second
    if function == "Fn::Not":
        return not _holds(arguments[0], template, overrides)
    if function == "Fn::And":
        return all(_holds(a, template, overrides) for a in arguments)
    if function == "Fn::Or":
        return any(_holds(a, template, overrides) for a in arguments)
    if function == "Condition":
        return _holds(template["Conditions"][arguments], template, overrides)
    raise AssertionError(f"no evaluator for {function}: extend _holds")


def _deployed_settings(source: dict[str, Any], overrides: dict[str, str]) -> Any:
    settings_cls = importlib.import_module("bulk_import.config").Settings
    environment = {
        name: _resolve(value, source, overrides) for name, value in _environment(source).items()
    }
    return settings_cls.from_env(environment)


def test_vital_parameters_offer_every_environment_and_region(source: dict[str, Any]) -> None:
    parameters = source["Parameters"]

    assert parameters["VitalEnvironment"]["AllowedValues"] == ["production", "sandbox"]
    assert parameters["VitalEnvironment"]["Default"] == "production"
    assert parameters["VitalRegion"]["AllowedValues"] == ["us", "eu"]
    assert parameters["VitalRegion"]["Default"] == "us"
    assert parameters["VitalApiBaseUrl"]["Default"] == ""
    assert {
        (environment, region)
        for environment in parameters["VitalEnvironment"]["AllowedValues"]
        for region in parameters["VitalRegion"]["AllowedValues"]
    } == set(VITAL_BASE_URLS)
    # The hosts live in config.BASE_URLS only: the template passes the choice, not a URL.
    assert "junction.com" not in TEMPLATE.read_text()


@pytest.mark.parametrize(("vital_environment", "vital_region"), sorted(VITAL_BASE_URLS))
@pytest.mark.parametrize("notify", ["true", "false"])
def test_deployed_environment_is_valid_settings(
    source: dict[str, Any], vital_environment: str, vital_region: str, notify: str
) -> None:
    overrides = {
        "VitalEnvironment": vital_environment,
        "VitalRegion": vital_region,
        "NotifyOnCompletion": notify,
    }

    settings = _deployed_settings(source, overrides)

    expected = VITAL_BASE_URLS[vital_environment, vital_region]
    assert settings.bulk_import_url == expected + "/v2/link/bulk_import"
    assert settings.vital_team_id is None
    assert settings.incoming_prefix == "incoming/"
    assert settings.results_prefix == "results/"
    assert settings.retry_prefix == "retry/"
    assert (settings.notify_topic_arn is not None) == (notify == "true")


def test_deployed_base_url_parameter_takes_precedence(source: dict[str, Any]) -> None:
    overrides = {"VitalEnvironment": "sandbox", "VitalApiBaseUrl": "https://api.eu.tryvital.io"}

    settings = _deployed_settings(source, overrides)

    assert settings.bulk_op_url == "https://api.eu.tryvital.io/v2/link/bulk_op"


@pytest.mark.parametrize(
    ("parameter", "value", "allowed"),
    [
        ("VitalApiBaseUrl", "", True),
        ("VitalApiBaseUrl", "https://api.sandbox.tryvital.io", True),
        ("VitalApiBaseUrl", "http://api.tryvital.io", False),
        ("VitalApiBaseUrl", "api.tryvital.io", False),
        ("VitalTeamId", "", True),
        ("VitalTeamId", "0b4c9e2a-7d31-4f8e-9a6b-1c2d3e4f5a6b", True),
        ("VitalTeamId", "team-1", False),
    ],
)
def test_vital_parameters_refuse_malformed_values(
    source: dict[str, Any], parameter: str, value: str, allowed: bool
) -> None:
    pattern = source["Parameters"][parameter]["AllowedPattern"]

    assert (re.fullmatch(pattern, value) is not None) is allowed
    if allowed:
        _deployed_settings(source, {parameter: value})  # and Settings take it too


# --------------------------------------------------------------------------------------------
# Bucket
# --------------------------------------------------------------------------------------------


def test_bucket_policy_denies_plain_http(source: dict[str, Any]) -> None:
    policy = _bucket_policy(source, "ImportBucket")
    statements = _items(policy["PolicyDocument"]["Statement"])

    tls = [
        s
        for s in statements
        if s["Effect"] == "Deny"
        and s["Principal"] in ("*", {"AWS": "*"})
        and "s3:*" in _items(s["Action"])
        and s.get("Condition") == {"Bool": {"aws:SecureTransport": "false"}}
    ]
    assert len(tls) == 1
    assert _items(tls[0]["Resource"]) == [
        {"Fn::GetAtt": ["ImportBucket", "Arn"]},
        {"Fn::Sub": "${ImportBucket.Arn}/*"},
    ]
    assert policy["Bucket"] == {"Ref": "ImportBucket"}


def test_bucket_policy_refuses_the_aws_managed_key(source: dict[str, Any]) -> None:
    """``--sse aws:kms`` without a key id puts the object under aws/s3, not the bucket's key."""
    policy = _bucket_policy(source, "ImportBucket")
    statements = _items(policy["PolicyDocument"]["Statement"])

    refusing = [
        s
        for s in statements
        if s["Effect"] == "Deny"
        and s["Principal"] == "*"
        and _items(s["Action"]) == ["s3:PutObject"]
        and s["Condition"]
        == {
            "StringEquals": {"s3:x-amz-server-side-encryption": "aws:kms"},
            "Null": {"s3:x-amz-server-side-encryption-aws-kms-key-id": "true"},
        }
    ]
    assert len(refusing) == 1


def test_bucket_blocks_public_access(source: dict[str, Any]) -> None:
    bucket = _import_bucket(source)

    assert bucket["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True,
        "BlockPublicPolicy": True,
        "IgnorePublicAcls": True,
        "RestrictPublicBuckets": True,
    }
    assert bucket["OwnershipControls"] == {"Rules": [{"ObjectOwnership": "BucketOwnerEnforced"}]}
    assert bucket["VersioningConfiguration"] == {"Status": "Enabled"}


def test_bucket_is_encrypted_with_its_own_rotating_key(source: dict[str, Any]) -> None:
    bucket = _import_bucket(source)
    (rule,) = bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    default = rule["ServerSideEncryptionByDefault"]
    key_name = default["KMSMasterKeyID"]["Fn::GetAtt"][0]
    key = source["Resources"][key_name]

    assert default["SSEAlgorithm"] == "aws:kms"
    assert rule["BucketKeyEnabled"] is True
    assert key["Type"] == "AWS::KMS::Key"
    assert key["Properties"]["EnableKeyRotation"] is True


def test_bucket_name_needs_no_reference_to_the_bucket(source: dict[str, Any]) -> None:
    # The role names the bucket by the same !Sub; a Ref would close a dependency cycle.
    bucket = _import_bucket(source)
    name_template, variables = bucket["BucketName"]["Fn::Sub"]
    role_resources = [
        r["Fn::Sub"]
        for _, st in _statements(source)
        for r in _items(st["Resource"])
        if isinstance(r, dict) and "Fn::Sub" in r and ":s3:::" in json.dumps(r)
    ]

    assert role_resources
    for template_text, role_variables in role_resources:
        assert template_text.removeprefix("arn:${AWS::Partition}:s3:::").startswith(name_template)
        assert role_variables == variables


def test_lifecycle_expires_each_prefix(source: dict[str, Any]) -> None:
    bucket = _import_bucket(source)
    rules = bucket["LifecycleConfiguration"]["Rules"]

    expiry = {r["Prefix"]: r["ExpirationInDays"] for r in rules if "Prefix" in r}
    assert expiry == {
        "incoming/": {"Ref": "IncomingRetentionDays"},
        "results/": {"Ref": "ResultsRetentionDays"},
        "retry/": {"Ref": "RetryRetentionDays"},
    }
    assert set(expiry) == PREFIXES
    assert all(r["Status"] == "Enabled" for r in rules)
    assert any("NoncurrentVersionExpiration" in r for r in rules)
    assert any(r.get("AbortIncompleteMultipartUpload") == {"DaysAfterInitiation": 1} for r in rules)


# --------------------------------------------------------------------------------------------
# Table, alarms, secrets
# --------------------------------------------------------------------------------------------


def test_idempotency_table_matches_powertools_schema(source: dict[str, Any]) -> None:
    table = source["Resources"]["IdempotencyTable"]["Properties"]

    assert table["KeySchema"] == [{"AttributeName": "id", "KeyType": "HASH"}]
    assert table["AttributeDefinitions"] == [{"AttributeName": "id", "AttributeType": "S"}]
    assert table["TimeToLiveSpecification"] == {"AttributeName": "expiration", "Enabled": True}
    assert table["BillingMode"] == "PAY_PER_REQUEST"
    assert table["SSESpecification"]["SSEEnabled"] is True
    assert table["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"] is True


def test_row_failure_alarm_watches_the_function_metrics(source: dict[str, Any]) -> None:
    environment = _environment(source)
    metrics = source["Resources"]["RowFailureRateAlarm"]["Properties"]["Metrics"]
    stats = [m["MetricStat"]["Metric"] for m in metrics if "MetricStat" in m]

    assert {s["MetricName"] for s in stats} <= FUNCTION_METRICS
    assert {"RowsFailed", "RowsErrored", "RowsImported"} <= {s["MetricName"] for s in stats}
    for stat in stats:
        # Powertools puts every metric under the namespace with one dimension, service=<name>.
        assert stat["Namespace"] == environment["POWERTOOLS_METRICS_NAMESPACE"]
        assert stat["Dimensions"] == [
            {"Name": "service", "Value": environment["POWERTOOLS_SERVICE_NAME"]}
        ]
    assert [m["Id"] for m in metrics if m.get("ReturnData")] == ["failureRate"]


def test_operational_alarms_exist(source: dict[str, Any]) -> None:
    alarms = _resources(source, "AWS::CloudWatch::Alarm")
    watched = {
        (a["Properties"].get("Namespace"), a["Properties"].get("MetricName"))
        for a in alarms.values()
    }

    assert {
        ("AWS/Lambda", "Errors"),
        ("AWS/Lambda", "Throttles"),
        ("AWS/SQS", "ApproximateNumberOfMessagesVisible"),
    } <= watched
    # A failed file returns normally (no Lambda error): its own metric raises the alarm.
    files_failed = alarms["FilesFailedAlarm"]["Properties"]
    environment = _environment(source)
    assert files_failed["MetricName"] == "FilesFailed"
    assert files_failed["Namespace"] == environment["POWERTOOLS_METRICS_NAMESPACE"]
    assert files_failed["Dimensions"] == [
        {"Name": "service", "Value": environment["POWERTOOLS_SERVICE_NAME"]}
    ]
    assert "FilesFailed" in FUNCTION_METRICS
    dlq_alarm = alarms["ImportDLQAlarm"]["Properties"]
    assert dlq_alarm["Dimensions"][0]["Value"] == {"Fn::GetAtt": ["ImportDLQ", "QueueName"]}
    # A continuation chain that stalls in its queue (throttled, or failing before the redrive).
    age = alarms["ContinuationQueueAgeAlarm"]["Properties"]
    assert age["MetricName"] == "ApproximateAgeOfOldestMessage"
    assert age["Dimensions"][0]["Value"] == {"Fn::GetAtt": ["ContinuationQueue", "QueueName"]}
    assert age["Threshold"] > 900  # longer than the longest delay a second look is sent with


# Shapes of secrets: Vital API keys (sk_/pk_...), AWS access key ids, and long random-looking
# tokens (letters with several digits mixed in, unlike names such as "ThroughS3").
_KEY_SHAPED = re.compile(r"\b(?:sk|pk)_[A-Za-z0-9_]{8,}|\bAKIA[0-9A-Z]{16}\b")
_LONG_TOKEN = re.compile(r"[A-Za-z0-9+/_=-]{24,}")


def _secret_like(text: str) -> list[str]:
    random_looking = [
        token
        for token in _LONG_TOKEN.findall(text)
        if len(re.findall(r"\d", token)) >= 4 and re.search(r"[A-Za-z]", token)
    ]
    return _KEY_SHAPED.findall(text) + random_looking


def test_template_holds_no_api_key(source: dict[str, Any]) -> None:
    text = TEMPLATE.read_text()
    environment_names = set(_environment(source))

    # The detector works: a Vital-shaped key and a bare random token are both caught.
    assert _secret_like("x-vital-api-key: sk_us_5f2c7a1e9b0d4c3a8e6f")
    assert _secret_like("Default: Zq8rT2m9Xw4vK7pL1nB6cY3hJ5")
    assert _secret_like(text) == []
    # The key is fetched from Secrets Manager at run time: only the secret's name is configured.
    assert not {n for n in environment_names if "API_KEY" in n} - {"VITAL_API_KEY_SECRET"}
    assert _environment(source)["VITAL_API_KEY_SECRET"] == {"Ref": "VitalApiKeySecretName"}
    assert not [p for p in source["Parameters"] if re.fullmatch(r"(?i).*api_?key", p)]


# --------------------------------------------------------------------------------------------
# Transport, encryption and scoping of what the stack deploys
# --------------------------------------------------------------------------------------------


def _denies_plain_http(statement: dict[str, Any], service: str) -> bool:
    return (
        statement["Effect"] == "Deny"
        and statement["Principal"] in ("*", {"AWS": "*"})
        and f"{service}:*" in _items(statement["Action"])
        and statement.get("Condition") == {"Bool": {"aws:SecureTransport": "false"}}
    )


def test_s3_invoke_permission_is_for_this_bucket_in_this_account(
    source: dict[str, Any], rendered: dict[str, Any]
) -> None:
    """The only S3 invoke permission names the bucket (by the !Sub name the bucket takes) and
    the account: no other bucket, whoever owns it, can invoke the function."""
    permissions = [
        props
        for props in (
            r["Properties"] for r in _resources(rendered, "AWS::Lambda::Permission").values()
        )
        if props["Principal"] == "s3.amazonaws.com"
    ]
    (permission,) = permissions
    assert permission["SourceAccount"] == {"Ref": "AWS::AccountId"}
    assert permission["FunctionName"] == {"Ref": "ImportFunction"}
    name, suffix = source["Resources"]["ImportBucket"]["Properties"]["BucketName"]["Fn::Sub"]
    assert permission["SourceArn"] == {"Fn::Sub": ["arn:${AWS::Partition}:s3:::" + name, suffix]}


def test_kms_grants_go_through_the_services_that_use_the_key(source: dict[str, Any]) -> None:
    # The key encrypts the bucket (S3) and the topics (SNS); the log group is CloudWatch Logs'
    # business (the key policy), and the queues, the table and the secret use other keys.
    grants = [
        statement
        for _, statement in _statements(source)
        if any(str(a).startswith("kms:") for a in _items(statement["Action"]))
    ]

    assert grants
    for grant in grants:
        assert grant["Effect"] == "Allow"
        assert _items(grant["Resource"]) == [{"Fn::GetAtt": ["ImportKey", "Arn"]}]
        assert grant["Condition"] == {
            "StringEquals": {
                "kms:ViaService": [
                    {"Fn::Sub": "s3.${AWS::Region}.amazonaws.com"},
                    {"Fn::Sub": "sns.${AWS::Region}.amazonaws.com"},
                ]
            }
        }


def test_queues_and_topics_refuse_plain_http(source: dict[str, Any]) -> None:
    resources = source["Resources"]
    covered: dict[str, list[str]] = {}
    for policy_type, targets, service in (
        ("AWS::SQS::QueuePolicy", "Queues", "sqs"),
        ("AWS::SNS::TopicPolicy", "Topics", "sns"),
    ):
        for name, policy in _resources(source, policy_type).items():
            props = policy["Properties"]
            tls = [
                s
                for s in _items(props["PolicyDocument"]["Statement"])
                if _denies_plain_http(s, service)
            ]
            assert len(tls) == 1, name
            for target in _items(props[targets]):
                covered.setdefault(target["Ref"], []).append(name)
                # The Deny names the queue's or the topic's own ARN.
                own_arn = {"Fn::GetAtt": [target["Ref"], "Arn"]} if service == "sqs" else target
                assert own_arn in _items(tls[0]["Resource"])
                # A topic's policy exists exactly when its topic does.
                assert policy.get("Condition") == resources[target["Ref"]].get("Condition")

    queues_and_topics = {
        name for name, r in resources.items() if r["Type"] in {"AWS::SQS::Queue", "AWS::SNS::Topic"}
    }
    assert set(covered) == queues_and_topics
    assert all(len(policies) == 1 for policies in covered.values())


def test_alarm_topic_takes_this_accounts_alarms(source: dict[str, Any]) -> None:
    # A topic policy replaces SNS's default one, which is what let CloudWatch alarms publish.
    policy = source["Resources"]["AlarmTopicPolicy"]["Properties"]["PolicyDocument"]
    (allow,) = [s for s in _items(policy["Statement"]) if s["Effect"] == "Allow"]

    assert allow["Principal"] == {"Service": "cloudwatch.amazonaws.com"}
    assert _items(allow["Action"]) == ["sns:Publish"]
    assert allow["Condition"]["StringEquals"] == {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}
    assert allow["Condition"]["ArnLike"] == {
        "aws:SourceArn": {
            "Fn::Sub": "arn:${AWS::Partition}:cloudwatch:${AWS::Region}:${AWS::AccountId}:alarm:*"
        }
    }


def test_log_group_is_encrypted_with_the_stack_key_and_expires(source: dict[str, Any]) -> None:
    log_group = source["Resources"]["ImportLogGroup"]["Properties"]
    key_policy = source["Resources"]["ImportKey"]["Properties"]["KeyPolicy"]
    logs = [
        s
        for s in _items(key_policy["Statement"])
        if s.get("Principal") == {"Service": {"Fn::Sub": "logs.${AWS::Region}.amazonaws.com"}}
    ]
    log_group_arn = (
        "arn:${AWS::Partition}:logs:${AWS::Region}:${AWS::AccountId}:log-group:"
        + log_group["LogGroupName"]["Fn::Sub"]
    )

    assert _function(source)["LoggingConfig"]["LogGroup"] == {"Ref": "ImportLogGroup"}
    assert log_group["KmsKeyId"] == {"Fn::GetAtt": ["ImportKey", "Arn"]}
    assert log_group["RetentionInDays"] == {"Ref": "LogRetentionDays"}
    # CloudWatch Logs may use the key for this one log group only.
    assert len(logs) == 1
    assert logs[0]["Effect"] == "Allow"
    assert logs[0]["Condition"] == {
        "ArnEquals": {"kms:EncryptionContext:aws:logs:arn": {"Fn::Sub": log_group_arn}}
    }


def test_list_bucket_is_limited_to_the_function_prefixes(source: dict[str, Any]) -> None:
    from bulk_import.storage.keys import STATE_DIR, results_prefix  # noqa: PLC0415

    lists = [
        statement
        for _, statement in _statements(source)
        if "s3:ListBucket" in _items(statement["Action"])
    ]
    # What CheckpointStore.stored_parts lists for an upload under incoming/.
    listed = [
        results_prefix("incoming/acme/file.csv", "incoming/", prefix) + STATE_DIR
        for prefix in ("results/", "retry/")
    ]

    assert len(lists) == 1
    # IfExists: S3's 404-or-403 check of a missing key (a first import's checkpoint) has no
    # s3:prefix, and must still count as allowed for the key to answer 404 NoSuchKey.
    patterns = _items(lists[0]["Condition"]["StringLikeIfExists"]["s3:prefix"])
    assert set(lists[0]["Condition"]) == {"StringLikeIfExists"}
    assert set(patterns) == {p + "*" for p in PREFIXES}
    for prefix in listed:
        assert any(re.fullmatch(re.escape(p).replace(r"\*", ".*"), prefix) for p in patterns)
    assert not any(re.fullmatch(re.escape(p).replace(r"\*", ".*"), "") for p in patterns)


def test_import_bucket_access_is_logged_to_a_private_bucket(source: dict[str, Any]) -> None:
    logging = _import_bucket(source)["LoggingConfiguration"]
    target = logging["DestinationBucketName"]["Ref"]
    logs_bucket = source["Resources"][target]
    props = logs_bucket["Properties"]
    policy = _bucket_policy(source, target)["PolicyDocument"]
    statements = _items(policy["Statement"])
    delivery = [s for s in statements if s["Effect"] == "Allow"]

    assert target != "ImportBucket"
    # S3 delivers access logs to SSE-S3 buckets only (SSE-KMS is not supported there).
    assert props["BucketEncryption"]["ServerSideEncryptionConfiguration"] == [
        {"ServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}
    ]
    assert (
        props["PublicAccessBlockConfiguration"]
        == _import_bucket(source)["PublicAccessBlockConfiguration"]
    )
    assert props["OwnershipControls"] == {"Rules": [{"ObjectOwnership": "BucketOwnerEnforced"}]}
    assert "LoggingConfiguration" not in props
    rules = props["LifecycleConfiguration"]["Rules"]
    assert [r["ExpirationInDays"] for r in rules if r["Status"] == "Enabled"] == [
        {"Ref": "ResultsRetentionDays"}
    ]
    assert len([s for s in statements if _denies_plain_http(s, "s3")]) == 1
    # Only S3's logging service writes, only under the log prefix, only for the import bucket.
    assert len(delivery) == 1
    assert delivery[0]["Principal"] == {"Service": "logging.s3.amazonaws.com"}
    assert _items(delivery[0]["Action"]) == ["s3:PutObject"]
    assert delivery[0]["Resource"] == {
        "Fn::Sub": "${" + target + ".Arn}/" + logging["LogFilePrefix"] + "*"
    }
    source_arn = delivery[0]["Condition"]["ArnEquals"]["aws:SourceArn"]["Fn::Sub"]
    assert (
        source_arn[0]
        == "arn:${AWS::Partition}:s3:::" + _import_bucket(source)["BucketName"]["Fn::Sub"][0]
    )
    assert delivery[0]["Condition"]["StringEquals"] == {
        "aws:SourceAccount": {"Ref": "AWS::AccountId"}
    }
