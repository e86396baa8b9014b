"""The embedded local stack itself: the Vital stand-in and moto's server, over real sockets."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import boto3
import httpx
import pytest
from fastapi import FastAPI

from local.moto_server import MotoStack, aws_env
from local.standin import (
    BULK_IMPORT_PATH,
    BULK_OP_PATH,
    MIGRATION_DISABLED_DETAIL,
    BulkImportBody,
    StandinState,
    VitalStandin,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

API_KEY = "sk_test_local_stack"
KNOWN_A = str(uuid.UUID(int=0xA))
KNOWN_B = str(uuid.UUID(int=0xB))
UNKNOWN = str(uuid.UUID(int=0xC))
TEAM = "0b4c9e2a-7d31-4f8e-9a6b-1c2d3e4f5a6b"
OTHER_TEAM = "5f0e6d7c-2b3a-4c1d-8e9f-a0b1c2d3e4f5"
CLIENT_TIMEOUT = httpx.Timeout(5.0)


def recipe(user_id: str, **overrides: Any) -> dict[str, Any]:
    connection: dict[str, Any] = {
        "user_id": user_id,
        "access_token": f"access-{user_id}",
        "refresh_token": f"refresh-{user_id}",
        "provider_id": f"provider-{user_id}",
        "expires_at": 1_900_000_000,
        "oauth_scopes": ["daily", "heartrate"],
    }
    connection.update(overrides)
    return connection


def bulk_body(*user_ids: str, provider: str = "oura", wait: bool = True) -> dict[str, Any]:
    return {
        "provider": provider,
        "connections": [recipe(user_id) for user_id in user_ids],
        "wait_for_completion": wait,
    }


# ---- fixtures ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def standin() -> Iterator[VitalStandin]:
    with VitalStandin(StandinState(api_key=API_KEY, known_users={KNOWN_A, KNOWN_B})) as server:
        yield server


@pytest.fixture
def vital(standin: VitalStandin) -> Iterator[VitalStandin]:
    standin.state.reset()
    yield standin
    standin.state.reset()


@pytest.fixture
def client(vital: VitalStandin) -> Iterator[httpx.Client]:
    headers = {"x-vital-api-key": API_KEY}
    with httpx.Client(base_url=vital.url, headers=headers, timeout=CLIENT_TIMEOUT) as http:
        yield http


@pytest.fixture(scope="module")
def moto_stack() -> Iterator[MotoStack]:
    with MotoStack() as stack:
        yield stack


@pytest.fixture
def aws(moto_stack: MotoStack, monkeypatch: pytest.MonkeyPatch) -> boto3.Session:
    """A fresh boto3 session that knows nothing but the environment pointing at moto."""
    moto_stack.reset()
    for name, value in aws_env(moto_stack.endpoint_url).items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return boto3.Session()


# ---- Vital stand-in: the documented behaviour -------------------------------------------


def test_wrong_or_missing_api_key_is_401(vital: VitalStandin, client: httpx.Client) -> None:
    wrong = client.post(
        BULK_IMPORT_PATH, json=bulk_body(KNOWN_A), headers={"x-vital-api-key": "nope"}
    )
    missing = httpx.post(f"{vital.url}{BULK_IMPORT_PATH}", json=bulk_body(KNOWN_A), timeout=5.0)

    assert wrong.status_code == missing.status_code == 401
    assert isinstance(wrong.json()["detail"], str)
    records = vital.state.bulk_import_requests()
    assert [(r.status, r.api_key_ok) for r in records] == [(401, False), (401, False)]
    assert "nope" not in repr(records)
    assert vital.state.posted_connections() == []


def test_link_migration_disabled_is_403(vital: VitalStandin, client: httpx.Client) -> None:
    vital.state.link_migration_enabled = False

    response = client.post(BULK_IMPORT_PATH, json=bulk_body(KNOWN_A))

    assert response.status_code == 403
    assert response.json() == {"detail": MIGRATION_DISABLED_DETAIL}
    assert "Link Migration is not enabled" in response.json()["detail"]
    assert client.get(BULK_OP_PATH).status_code == 403


def test_team_id_mismatch_is_403(vital: VitalStandin, client: httpx.Client) -> None:
    vital.state.team_id = TEAM

    other = client.post(BULK_IMPORT_PATH, params={"team_id": OTHER_TEAM}, json=bulk_body(KNOWN_A))
    same = client.post(BULK_IMPORT_PATH, params={"team_id": TEAM}, json=bulk_body(KNOWN_A))
    upper = client.post(BULK_IMPORT_PATH, params={"team_id": TEAM.upper()}, json=bulk_body(KNOWN_A))
    absent = client.post(BULK_IMPORT_PATH, json=bulk_body(KNOWN_A))

    statuses = (other.status_code, same.status_code, upper.status_code, absent.status_code)
    assert statuses == (403, 200, 200, 200)
    assert vital.state.bulk_import_requests()[1].query == {"team_id": TEAM}


@pytest.mark.parametrize("team_id", ["team-1", TEAM[:-1], TEAM + "0", TEAM.replace("0", "g")])
@pytest.mark.parametrize("path", [BULK_IMPORT_PATH, BULK_OP_PATH])
def test_malformed_team_id_is_fastapis_422(
    vital: VitalStandin, client: httpx.Client, team_id: str, path: str
) -> None:
    """As FastAPI answers for a ``team_id: UUID | None`` query parameter, whatever the team."""
    ask = client.post if path == BULK_IMPORT_PATH else client.get
    kwargs: dict[str, Any] = {"json": bulk_body(KNOWN_A)} if path == BULK_IMPORT_PATH else {}

    response = ask(path, params={"team_id": team_id}, **kwargs)

    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"] == ["query", "team_id"]
    assert error["type"] == "uuid_parsing"
    assert isinstance(error["msg"], str)
    assert vital.state.posted_connections() == []
    assert vital.state.bulk_ops() == []


def test_bad_uuid_is_422_pointing_at_the_connection(client: httpx.Client) -> None:
    body = bulk_body(KNOWN_A, KNOWN_B, UNKNOWN, KNOWN_A)
    body["connections"][3]["user_id"] = "not-a-uuid"

    response = client.post(BULK_IMPORT_PATH, json=body)

    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", "connections", 3, "user_id"]
    assert isinstance(error["msg"], str)
    assert isinstance(error["type"], str)


def test_unknown_provider_and_missing_field_are_422(client: httpx.Client) -> None:
    unknown_provider = client.post(BULK_IMPORT_PATH, json=bulk_body(KNOWN_A, provider="myspace"))
    body = bulk_body(KNOWN_A, KNOWN_B)
    del body["connections"][1]["expires_at"]
    missing_field = client.post(BULK_IMPORT_PATH, json=body)

    assert unknown_provider.status_code == 422
    assert unknown_provider.json()["detail"][0]["loc"] == ["body", "provider"]
    assert missing_field.status_code == 422
    assert missing_field.json()["detail"][0]["loc"] == ["body", "connections", 1, "expires_at"]


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"{not json",
        b"[]",
        b'{"provider": "oura"}',
        b'{"provider": "oura", "connections": [{"user_id": "x"}], "wait_for_completion": "no"}',
        b'{"provider": "oura", "connections": "none"}',
        b"null",
        b'{"provider": "\xff"}',
    ],
    ids=[
        "empty",
        "invalid-json",
        "array",
        "no-connections",
        "bad-fields",
        "wrong-type",
        "null",
        "not-utf8",
    ],
)
def test_422_bodies_are_fastapis_own(content: bytes, client: httpx.Client) -> None:
    """The stand-in parses bodies itself (one pass); its errors must stay what FastAPI answers."""
    reference = FastAPI()

    @reference.post(BULK_IMPORT_PATH)
    async def bulk_import(body: BulkImportBody) -> None:  # pragma: no cover - never valid here
        raise AssertionError(body)

    headers = {"content-type": "application/json"}

    async def ask_fastapi() -> httpx.Response:
        transport = httpx.ASGITransport(app=reference)
        async with httpx.AsyncClient(transport=transport, base_url="http://reference") as direct:
            return await direct.post(BULK_IMPORT_PATH, content=content, headers=headers)

    expected = asyncio.run(ask_fastapi())

    response = client.post(BULK_IMPORT_PATH, content=content, headers=headers)

    assert expected.status_code in (400, 422)
    assert (response.status_code, response.json()) == (expected.status_code, expected.json())


def test_known_users_import_and_unknown_users_fail(
    vital: VitalStandin, client: httpx.Client
) -> None:
    response = client.post(BULK_IMPORT_PATH, json=bulk_body(KNOWN_A, UNKNOWN, KNOWN_B))

    assert response.status_code == 200
    assert response.json() == {
        "user_ids_imported": [KNOWN_A, KNOWN_B],
        "user_ids_failed": [UNKNOWN],
    }
    assert vital.state.posted_connections() == [
        ("oura", KNOWN_A),
        ("oura", UNKNOWN),
        ("oura", KNOWN_B),
    ]
    [op] = vital.state.bulk_ops()
    assert op["status"] == "success"
    assert (op["provider"], op["pending"], op["processed"]) == ("oura", 0, 3)
    providers = client.get(f"/v2/user/providers/{KNOWN_A}")
    assert providers.status_code == 200
    assert [(p["slug"], p["status"]) for p in providers.json()["providers"]] == [
        ("oura", "connected")
    ]
    assert client.get(f"/v2/user/providers/{UNKNOWN}").status_code == 404


def test_wait_for_completion_false_is_202_with_empty_body(
    vital: VitalStandin, client: httpx.Client
) -> None:
    vital.state.op_complete_after_seconds = 0.2

    response = client.post(BULK_IMPORT_PATH, json=bulk_body(KNOWN_A, UNKNOWN, wait=False))

    assert response.status_code == 202
    assert response.content == b""
    [op] = client.get(BULK_OP_PATH).json()["data"]
    assert (op["status"], op["pending"], op["processed"], op["ended_at"]) == (
        "in_progress",
        2,
        0,
        None,
    )
    assert client.get(f"/v2/user/providers/{KNOWN_A}").json() == {"providers": []}
    deadline = time.monotonic() + 5.0
    while op["status"] == "in_progress" and time.monotonic() < deadline:
        time.sleep(0.05)
        [op] = client.get(BULK_OP_PATH).json()["data"]
    assert (op["status"], op["pending"], op["processed"]) == ("success", 0, 2)
    assert op["ended_at"] is not None
    assert len(client.get(f"/v2/user/providers/{KNOWN_A}").json()["providers"]) == 1


@pytest.mark.parametrize("user_id", [KNOWN_A, KNOWN_A.upper()])  # the fast and the model parse
def test_omitted_wait_for_completion_is_enqueued_with_202(
    vital: VitalStandin, client: httpx.Client, user_id: str
) -> None:
    body = bulk_body(user_id, UNKNOWN)
    del body["wait_for_completion"]

    response = client.post(BULK_IMPORT_PATH, json=body)

    assert (response.status_code, response.content) == (202, b"")
    [op] = vital.state.bulk_ops()
    assert (op["provider"], op["pending"]) == ("oura", 2)
    assert [u.lower() for _, u in vital.state.posted_connections()] == [KNOWN_A, UNKNOWN]


def test_force_202_answers_empty_even_when_waiting(
    vital: VitalStandin, client: httpx.Client
) -> None:
    vital.state.force_202 = True

    response = client.post(BULK_IMPORT_PATH, json=bulk_body(KNOWN_A, wait=True))

    assert (response.status_code, response.content) == (202, b"")
    assert vital.state.posted_connections() == [("oura", KNOWN_A)]
    assert vital.state.bulk_ops()[0]["status"] == "in_progress"


def test_rejected_user_is_422_at_its_index(vital: VitalStandin, client: httpx.Client) -> None:
    vital.state.reject_user_ids = {KNOWN_B}

    response = client.post(BULK_IMPORT_PATH, json=bulk_body(KNOWN_A, UNKNOWN, KNOWN_B))

    assert response.status_code == 422
    assert [e["loc"] for e in response.json()["detail"]] == [["body", "connections", 2, "user_id"]]
    assert vital.state.bulk_ops() == []


def test_unattributed_rejection_is_422_at_body(vital: VitalStandin, client: httpx.Client) -> None:
    vital.state.reject_unattributed = {UNKNOWN}

    response = client.post(BULK_IMPORT_PATH, json=bulk_body(KNOWN_A, UNKNOWN))

    assert response.status_code == 422
    assert [e["loc"] for e in response.json()["detail"]] == [["body"]]


# ---- Vital stand-in: faults ----------------------------------------------------------------


def test_status_script_503_then_200(vital: VitalStandin, client: httpx.Client) -> None:
    vital.state.status_script = [503, 200]

    first = client.post(BULK_IMPORT_PATH, json=bulk_body(KNOWN_A))
    second = client.post(BULK_IMPORT_PATH, json=bulk_body(KNOWN_A))
    third = client.post(BULK_IMPORT_PATH, json=bulk_body(KNOWN_A))

    assert [first.status_code, second.status_code, third.status_code] == [503, 200, 200]
    assert vital.state.status_script == []
    assert [r.status for r in vital.state.bulk_import_requests()] == [503, 200, 200]
    assert vital.state.posted_connections() == [("oura", KNOWN_A), ("oura", KNOWN_A)]


def test_429_carries_retry_after(vital: VitalStandin, client: httpx.Client) -> None:
    vital.state.status_script = [429]
    vital.state.retry_after = "2"

    scripted = client.post(BULK_IMPORT_PATH, json=bulk_body(KNOWN_A))

    assert scripted.status_code == 429
    assert scripted.headers["retry-after"] == "2"
    vital.state.throttle_every = 2
    statuses = [client.post(BULK_IMPORT_PATH, json=bulk_body(KNOWN_A)).status_code for _ in "abc"]
    # Requests 2, 3, 4 overall: the 2nd and the 4th are throttled.
    assert statuses == [429, 200, 429]


def test_gateway_errors_are_not_json(vital: VitalStandin, client: httpx.Client) -> None:
    vital.state.status_script = [502, 504, 500]

    statuses = [client.post(BULK_IMPORT_PATH, json=bulk_body(KNOWN_A)) for _ in range(3)]

    assert [r.status_code for r in statuses] == [502, 504, 500]
    assert statuses[0].headers["content-type"].startswith("text/html")
    assert statuses[2].json() == {"detail": "Internal Server Error"}


@pytest.mark.parametrize(
    ("reset", "expected"),
    [(False, httpx.RemoteProtocolError), (True, httpx.ReadError)],
    ids=["close", "reset"],
)
def test_dropped_connection_is_a_transport_error(
    vital: VitalStandin,
    client: httpx.Client,
    reset: bool,
    expected: type[httpx.TransportError],
) -> None:
    vital.state.drop_script = [True]
    vital.state.drop_with_reset = reset

    with pytest.raises(expected):
        client.post(BULK_IMPORT_PATH, json=bulk_body(KNOWN_A))
    after = client.post(BULK_IMPORT_PATH, json=bulk_body(KNOWN_A))

    assert after.status_code == 200
    dropped, answered = vital.state.bulk_import_requests()
    assert (dropped.status, dropped.dropped) == (0, True)
    assert (answered.status, answered.dropped) == (200, False)
    assert vital.state.posted_connections() == [("oura", KNOWN_A)]
    assert len(vital.state.bulk_ops()) == 1


@pytest.mark.parametrize(
    ("reset", "expected"),
    [(False, httpx.RemoteProtocolError), (True, httpx.ReadError)],
    ids=["close", "reset"],
)
def test_a_lost_answer_keeps_the_chunk_but_the_client_gets_no_answer(
    vital: VitalStandin,
    client: httpx.Client,
    reset: bool,
    expected: type[httpx.TransportError],
) -> None:
    vital.state.lose_answer_script = [True]
    vital.state.drop_with_reset = reset

    with pytest.raises(expected):
        client.post(BULK_IMPORT_PATH, json=bulk_body(KNOWN_A))

    (lost,) = vital.state.bulk_import_requests()
    assert (lost.status, lost.answer_lost, lost.dropped) == (200, True, False)
    assert vital.state.posted_connections() == [("oura", KNOWN_A)]
    assert vital.state.posted_connections(include_undelivered=False) == []
    listed = client.get(f"/v2/user/providers/{KNOWN_A}").json()["providers"]
    assert [(p["slug"], p["status"]) for p in listed] == [("oura", "connected")]
    assert [op["status"] for op in vital.state.bulk_ops()] == ["success"]


def test_lose_answer_every_loses_every_nth(vital: VitalStandin, client: httpx.Client) -> None:
    vital.state.lose_answer_every = 2
    answered: list[int | str] = []
    for _ in range(4):
        try:
            answered.append(client.post(BULK_IMPORT_PATH, json=bulk_body(KNOWN_A)).status_code)
        except httpx.TransportError:
            answered.append("lost")
    assert answered == [200, "lost", 200, "lost"]
    assert len(vital.state.bulk_ops()) == 4


def test_drop_every_drops_every_nth(vital: VitalStandin, client: httpx.Client) -> None:
    vital.state.drop_every = 2
    outcomes: list[int | str] = []
    for _ in range(4):
        try:
            outcomes.append(client.post(BULK_IMPORT_PATH, json=bulk_body(KNOWN_A)).status_code)
        except httpx.TransportError:
            outcomes.append("dropped")

    assert outcomes == [200, "dropped", 200, "dropped"]


def test_latency_delays_and_requests_are_served_concurrently(
    vital: VitalStandin, client: httpx.Client
) -> None:
    vital.state.latency_seconds = 0.3

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=6) as pool:
        statuses = list(
            pool.map(
                lambda _: (
                    httpx.post(
                        f"{vital.url}{BULK_IMPORT_PATH}",
                        json=bulk_body(KNOWN_A),
                        headers={"x-vital-api-key": API_KEY},
                        timeout=5.0,
                    ).status_code
                ),
                range(6),
            )
        )
    elapsed = time.monotonic() - started

    assert statuses == [200] * 6
    assert 0.3 <= elapsed < 1.5  # six 0.3 s requests overlapped


def test_client_timeout_still_processes_the_import(
    vital: VitalStandin, client: httpx.Client
) -> None:
    vital.state.latency_seconds = 3.0

    with pytest.raises(httpx.ReadTimeout):
        client.post(BULK_IMPORT_PATH, json=bulk_body(KNOWN_A), timeout=0.3)

    deadline = time.monotonic() + 5.0
    while vital.state.bulk_import_requests()[0].status is None and time.monotonic() < deadline:
        time.sleep(0.02)
    [record] = vital.state.bulk_import_requests()
    assert (record.status, record.client_disconnected) == (200, True)
    assert vital.state.posted_connections(include_undelivered=False) == []
    assert vital.state.posted_connections() == [("oura", KNOWN_A)]


def test_slow_body_stalls_after_the_headers(vital: VitalStandin, client: httpx.Client) -> None:
    vital.state.slow_body_seconds = 2.0
    timeout = httpx.Timeout(5.0, read=0.3)

    with client.stream("POST", BULK_IMPORT_PATH, json=bulk_body(KNOWN_A), timeout=timeout) as r:
        assert r.status_code == 200  # the headers arrived
        with pytest.raises(httpx.ReadTimeout):
            r.read()


# ---- Vital stand-in: bulk ops and the record of requests ----------------------------------


def test_bulk_op_pagination(vital: VitalStandin, client: httpx.Client) -> None:
    providers = ["oura", "fitbit", "garmin", "strava", "whoop_v2"]
    for provider in providers:
        assert client.post(BULK_IMPORT_PATH, json=bulk_body(KNOWN_A, provider=provider)).is_success

    pages: list[list[str]] = []
    cursor: str | None = None
    for _ in range(10):
        params: dict[str, str | int] = {"page_size": 2}
        if cursor is not None:
            params["next_cursor"] = cursor
        page = client.get(BULK_OP_PATH, params=params).json()
        pages.append([op["provider"] for op in page["data"]])
        cursor = page["next_cursor"]
        if cursor is None:
            break

    assert pages == [["whoop_v2", "strava"], ["garmin", "fitbit"], ["oura"]]  # newest first
    first = client.get(BULK_OP_PATH, params={"next_cursor": "", "page_size": 50}).json()
    assert len(first["data"]) == 5
    assert first["next_cursor"] is None
    for bad in (0, 51):
        response = client.get(BULK_OP_PATH, params={"page_size": bad})
        assert response.status_code == 422
        assert response.json()["detail"][0]["loc"] == ["query", "page_size"]


def test_requests_are_recorded_without_the_api_key(
    vital: VitalStandin, client: httpx.Client
) -> None:
    body = bulk_body(KNOWN_A, UNKNOWN, provider="garmin")
    client.post(BULK_IMPORT_PATH, params={"team_id": TEAM}, json=body)
    client.get(BULK_OP_PATH, params={"page_size": 3})

    first, second = vital.state.recorded()
    assert (first.method, first.path, first.query) == ("POST", BULK_IMPORT_PATH, {"team_id": TEAM})
    assert first.body == body
    assert (first.status, first.api_key_ok, first.dropped) == (200, True, False)
    assert first.provider == "garmin"
    assert first.user_ids == [KNOWN_A, UNKNOWN]
    assert (second.method, second.path, second.query, second.body) == (
        "GET",
        BULK_OP_PATH,
        {"page_size": "3"},
        None,
    )
    assert second.status == 200
    assert first.timestamp <= second.timestamp
    assert API_KEY not in repr(vital.state.recorded())
    assert vital.state.bulk_import_requests() == [first]
    assert vital.state.bulk_import_count == 1


def test_slim_bodies_keep_user_ids_but_no_tokens(vital: VitalStandin, client: httpx.Client) -> None:
    vital.state.record_full_bodies = False

    client.post(BULK_IMPORT_PATH, json=bulk_body(KNOWN_A))

    [record] = vital.state.bulk_import_requests()
    assert record.body == {
        "provider": "oura",
        "wait_for_completion": True,
        "connections": [{"user_id": KNOWN_A, "provider_id": f"provider-{KNOWN_A}"}],
    }
    assert vital.state.posted_connections() == [("oura", KNOWN_A)]


def test_reset_restores_the_constructed_state(vital: VitalStandin, client: httpx.Client) -> None:
    vital.state.known_users.add(UNKNOWN)
    vital.state.status_script = [503]
    client.post(BULK_IMPORT_PATH, json=bulk_body(KNOWN_A))

    vital.state.reset()

    assert vital.state.known_users == {KNOWN_A, KNOWN_B}
    assert vital.state.status_script == []
    assert vital.state.requests == []
    assert vital.state.bulk_ops() == []
    assert vital.state.bulk_import_count == 0


def test_start_and_stop_leave_no_thread_behind() -> None:
    def standin_threads() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name.startswith("vital-standin")]

    before = standin_threads()
    server = VitalStandin(StandinState(api_key=API_KEY), stop_timeout=2.0)
    with server:
        url = server.url
        assert httpx.get(f"{url}{BULK_OP_PATH}", timeout=5.0).status_code == 401
        assert len(standin_threads()) == len(before) + 1
    assert standin_threads() == before
    assert not server.running
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}{BULK_OP_PATH}", timeout=2.0)


# ---- moto ----------------------------------------------------------------------------------


def test_s3_round_trip_through_env_only(aws: boto3.Session) -> None:
    s3 = aws.client("s3")
    s3.create_bucket(Bucket="connections")
    s3.put_object(Bucket="connections", Key="incoming/oura/a.jsonl", Body=b'{"a": 1}\n')

    got = s3.get_object(Bucket="connections", Key="incoming/oura/a.jsonl")

    assert got["Body"].read() == b'{"a": 1}\n'
    assert [b["Name"] for b in s3.list_buckets()["Buckets"]] == ["connections"]


def test_secrets_manager_through_env_only(aws: boto3.Session) -> None:
    secrets = aws.client("secretsmanager")
    arn = secrets.create_secret(Name="vital/api-key", SecretString=API_KEY)["ARN"]

    by_name = secrets.get_secret_value(SecretId="vital/api-key")
    by_arn = secrets.get_secret_value(SecretId=arn)

    assert by_name["SecretString"] == by_arn["SecretString"] == API_KEY


def test_moto_reset_isolates_state(moto_stack: MotoStack, aws: boto3.Session) -> None:
    s3 = aws.client("s3")
    s3.create_bucket(Bucket="leftover")

    moto_stack.reset()

    assert s3.list_buckets()["Buckets"] == []


def test_aws_env_points_at_the_endpoint(moto_stack: MotoStack) -> None:
    env = aws_env(moto_stack.endpoint_url)

    assert env == moto_stack.env
    assert env["AWS_ENDPOINT_URL"] == moto_stack.endpoint_url
    assert moto_stack.endpoint_url.startswith("http://127.0.0.1:")
    assert env["AWS_REGION"] == env["AWS_DEFAULT_REGION"] == "us-east-1"
