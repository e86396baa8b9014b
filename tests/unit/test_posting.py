"""posting.post_chunk against a real VitalClient whose transport emulates Vital in-process."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import stamina

from bulk_import.config import Settings
from bulk_import.errors import VitalAuthError
from bulk_import.ingest.chunking import Chunk, PendingRow, serialise
from bulk_import.model import ConnectionRow, Outcome
from bulk_import.vital.client import VitalClient
from bulk_import.vital.posting import (
    ENQUEUED_DETAIL,
    FAILED_DETAIL,
    IMPORTED_DETAIL,
    UNREPORTED_DETAIL,
    ChunkReport,
    Hold,
    post_chunk,
)
from bulk_import.vital.retry import MAX_RETRY_AFTER_SECONDS, parse_retry_after

API_KEY = "sk_test_SECRET_key"
TOKEN = "tok_SECRET_abc123"
BASE = "http://vital.test"

Handler = Callable[[httpx.Request, dict[str, Any]], httpx.Response]


@pytest.fixture(autouse=True)
def _no_backoff() -> Iterator[None]:
    """Retries happen without sleeping; attempts stay capped at Settings.max_attempts."""
    with stamina.set_testing(True, attempts=10, cap=True):
        yield


def user(i: int) -> str:
    return str(uuid.UUID(int=0x6F1C2C4E_0000_4000_8000_000000000000 + i))


def make_chunk(n: int, provider: str = "oura", first_line: int = 2) -> Chunk:
    rows = []
    for i in range(n):
        row = ConnectionRow.model_validate(
            {
                "provider": provider,
                "user_id": user(i),
                "access_token": f"{TOKEN}-{i}",
                "refresh_token": f"ref-{i}",
                "provider_id": f"p{i}",
                "expires_at": 1_700_000_000 + i,
                "oauth_scopes": "daily heartrate",
            }
        )
        rows.append(PendingRow(first_line + i, row.user_id, serialise(row)))
    return Chunk(provider).subset(rows)


class FakeVital:
    """Emulates POST /v2/link/bulk_import; ``respond`` decides each answer."""

    def __init__(self, respond: Handler) -> None:
        self.respond = respond
        self.bodies: list[dict[str, Any]] = []
        self.params: list[dict[str, str]] = []
        self.imported: Counter[str] = Counter()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        assert request.method == "POST"
        assert str(request.url.copy_with(query=None)) == f"{BASE}/v2/link/bulk_import"
        self.params.append(dict(request.url.params))
        assert request.headers["x-vital-api-key"] == API_KEY
        assert request.headers["content-type"] == "application/json"
        body = json.loads(request.content)
        assert set(body) == {"provider", "connections", "wait_for_completion"}
        self.bodies.append(body)
        response = self.respond(request, body)
        if response.status_code == 200 and response.content:
            self.imported.update(response.json().get("user_ids_imported", []))
        return response

    def users(self, n: int) -> list[list[str]]:
        """The user ids of each of the first ``n`` requests."""
        return [[c["user_id"] for c in b["connections"]] for b in self.bodies[:n]]


def all_imported(_: httpx.Request, body: dict[str, Any]) -> httpx.Response:
    ids = [c["user_id"] for c in body["connections"]]
    return httpx.Response(200, json={"user_ids_imported": ids, "user_ids_failed": []})


def settings(**overrides: Any) -> Settings:
    return Settings.model_validate(
        {"VITAL_API_KEY_SECRET": "x", "VITAL_API_BASE_URL": BASE, "MAX_ATTEMPTS": 3, **overrides}
    )


def post(
    respond: Handler, chunk: Chunk, *, wait: bool = True, **overrides: Any
) -> tuple[ChunkReport, FakeVital, VitalClient]:
    fake = FakeVital(respond)
    client = VitalClient(settings(**overrides), API_KEY, lambda: 900.0, httpx.MockTransport(fake))
    with client:
        report = post_chunk(client, chunk, wait)
    return report, fake, client


def outcomes_by_line(report: ChunkReport) -> dict[int, tuple[str, Outcome, str]]:
    lines = [o.line for o in report.outcomes]
    assert len(lines) == len(set(lines)), "each row gets exactly one outcome"
    return {o.line: (o.user_id, o.outcome, o.detail) for o in report.outcomes}


def scripted(*responses: Handler | httpx.Response) -> Handler:
    """Answers in order; the last one repeats."""
    queue = list(responses)

    def respond(request: httpx.Request, body: dict[str, Any]) -> httpx.Response:
        item = queue.pop(0) if len(queue) > 1 else queue[0]
        return item if isinstance(item, httpx.Response) else item(request, body)

    return respond


# --- 200 and 202 ------------------------------------------------------------------------------


def test_200_maps_imported_failed_and_unreported() -> None:
    chunk = make_chunk(4)

    def respond(_: httpx.Request, body: dict[str, Any]) -> httpx.Response:
        assert body["provider"] == "oura"
        assert body["wait_for_completion"] is True
        assert [c["user_id"] for c in body["connections"]] == [user(i) for i in range(4)]
        assert body["connections"][0] == {
            "user_id": user(0),
            "access_token": f"{TOKEN}-0",
            "refresh_token": "ref-0",
            "provider_id": "p0",
            "expires_at": 1_700_000_000,
            "oauth_scopes": ["daily", "heartrate"],
        }
        return httpx.Response(
            200,
            json={
                "user_ids_imported": [user(0), user(3).upper()],
                "user_ids_failed": [user(1)],
            },
        )

    report, fake, _ = post(respond, chunk)
    assert report.shared is None  # rows decided one by one
    assert outcomes_by_line(report) == {
        2: (user(0), Outcome.IMPORTED, IMPORTED_DETAIL),
        3: (user(1), Outcome.FAILED, FAILED_DETAIL),
        4: (user(2), Outcome.ERRORED, UNREPORTED_DETAIL),
        5: (user(3), Outcome.IMPORTED, IMPORTED_DETAIL),
    }
    assert {o.provider for o in report.outcomes} == {"oura"}
    assert report.fatal is None
    assert len(fake.bodies) == 1
    [record] = report.records
    assert {k: v for k, v in record.model_dump().items() if k != "duration_ms"} == {
        "provider": "oura",
        "first_line": 2,
        "last_line": 5,
        "size": 4,
        "bytes": len(chunk.body(True)),  # the body sent (wait_for_completion: true)
        "http_status": 200,
        "attempts": 1,
        "note": None,
    }


def test_a_whole_chunk_imported_is_one_shared_outcome_not_a_tuple_per_row() -> None:
    chunk = make_chunk(3)
    report, _, _ = post(all_imported, chunk)
    assert (report.shared, report.decided) == ((Outcome.IMPORTED, IMPORTED_DETAIL), [])
    assert outcomes_by_line(report) == {
        line: (user(i), Outcome.IMPORTED, IMPORTED_DETAIL) for i, line in enumerate((2, 3, 4))
    }


@pytest.mark.parametrize("hold", list(Hold))
def test_a_chunk_its_gate_holds_back_is_not_sent(hold: Hold) -> None:
    fake = FakeVital(all_imported)
    client = VitalClient(settings(), API_KEY, lambda: 900.0, httpx.MockTransport(fake))
    with client:
        sent = post_chunk(client, make_chunk(2), True, lambda: None)
        held = post_chunk(client, make_chunk(2), True, lambda: hold)
    assert sent.held is None
    assert sent.shared == (Outcome.IMPORTED, IMPORTED_DETAIL)
    assert held.held is hold
    assert (held.records, held.decided, held.shared, held.fatal) == ([], [], None, None)
    assert len(fake.bodies) == 1


def test_200_with_empty_body_leaves_every_row_unreported() -> None:
    report, _, _ = post(lambda _r, _b: httpx.Response(200, content=b""), make_chunk(2))
    assert [o.outcome for o in report.outcomes] == [Outcome.ERRORED, Outcome.ERRORED]
    assert {o.detail for o in report.outcomes} == {UNREPORTED_DETAIL}


@pytest.mark.parametrize(
    "content",
    [b"", b"{}", b'{"status": "queued"}', b"not json", b'{"user_ids_imported": [], "x": 1}'],
)
def test_202_enqueues_every_row(content: bytes) -> None:
    def respond(_: httpx.Request, body: dict[str, Any]) -> httpx.Response:
        assert body["wait_for_completion"] is False
        return httpx.Response(202, content=content)

    report, fake, _ = post(respond, make_chunk(3), wait=False)
    assert outcomes_by_line(report) == {
        2 + i: (user(i), Outcome.ENQUEUED, ENQUEUED_DETAIL) for i in range(3)
    }
    assert [r.http_status for r in report.records] == [202]
    assert len(fake.bodies) == 1


def test_202_with_the_200_lists_uses_them_and_enqueues_the_rest() -> None:
    """DESIGN: accept an empty 202 body as well as the 200 shape."""

    def respond(_: httpx.Request, body: dict[str, Any]) -> httpx.Response:
        ids = [c["user_id"] for c in body["connections"]]
        return httpx.Response(
            202, json={"user_ids_imported": [ids[0]], "user_ids_failed": [ids[1]]}
        )

    report, _, _ = post(respond, make_chunk(3), wait=False)
    assert outcomes_by_line(report) == {
        2: (user(0), Outcome.IMPORTED, IMPORTED_DETAIL),
        3: (user(1), Outcome.FAILED, FAILED_DETAIL),
        4: (user(2), Outcome.ENQUEUED, ENQUEUED_DETAIL),
    }


# --- 422 --------------------------------------------------------------------------------------


def test_422_pointing_at_a_connection_rejects_it_and_resends_the_rest_once() -> None:
    issue = {
        "loc": ["body", "connections", 1, "expires_at"],
        "msg": "Input should be a valid integer",
        "type": "int_parsing",
    }
    respond = scripted(httpx.Response(422, json={"detail": [issue]}), all_imported)
    report, fake, _ = post(respond, make_chunk(4))
    assert outcomes_by_line(report) == {
        2: (user(0), Outcome.IMPORTED, ""),
        3: (
            user(1),
            Outcome.REJECTED,
            "rejected by Vital: expires_at: Input should be a valid integer",
        ),
        4: (user(2), Outcome.IMPORTED, ""),
        5: (user(3), Outcome.IMPORTED, ""),
    }
    assert fake.users(5) == [[user(i) for i in range(4)], [user(0), user(2), user(3)]]
    assert [(r.http_status, r.first_line, r.last_line, r.size) for r in report.records] == [
        (422, 2, 5, 4),
        (200, 2, 5, 3),
    ]
    assert report.records[0].note == "rejected by Vital"
    assert report.fatal is None


def test_422_pointing_at_a_token_field_keeps_vitals_message_readable() -> None:
    issue = {"loc": ["body", "connections", 0, "access_token"], "msg": "Field required"}
    respond = scripted(httpx.Response(422, json={"detail": [issue]}), all_imported)
    report, _, _ = post(respond, make_chunk(2))
    assert outcomes_by_line(report) == {
        2: (user(0), Outcome.REJECTED, "rejected by Vital: access_token: Field required"),
        3: (user(1), Outcome.IMPORTED, ""),
    }


def test_422_message_never_echoes_a_token() -> None:
    issue = {
        "loc": ["body", "connections", 0, "refresh_token"],
        "msg": f"bad value {{'refresh_token': '{TOKEN}'}}",
    }
    respond = scripted(httpx.Response(422, json={"detail": [issue]}), all_imported)
    report, _, _ = post(respond, make_chunk(2))
    assert report.outcomes[0].outcome is Outcome.REJECTED
    assert TOKEN not in report.outcomes[0].detail
    assert "[REDACTED]" in report.outcomes[0].detail


def points_at_first_bad(bad: set[str]) -> Handler:
    """Like FastAPI stopping at the first error: a 422 names one bad connection per request."""

    def respond(request: httpx.Request, body: dict[str, Any]) -> httpx.Response:
        ids = [c["user_id"] for c in body["connections"]]
        for index, user_id in enumerate(ids):
            if user_id in bad:
                loc = ["body", "connections", index, "user_id"]
                issue = {"loc": loc, "msg": "Unknown user", "type": "value_error"}
                return httpx.Response(422, json={"detail": [issue]})
        return all_imported(request, body)

    return respond


def test_422_for_several_rows_one_at_a_time_still_isolates_each() -> None:
    bad = {user(1), user(3), user(4)}
    report, fake, _ = post(points_at_first_bad(bad), make_chunk(6))
    outcomes = outcomes_by_line(report)
    assert {line: o for line, (_, o, _) in outcomes.items()} == {
        2: Outcome.IMPORTED,
        3: Outcome.REJECTED,
        4: Outcome.IMPORTED,
        5: Outcome.REJECTED,
        6: Outcome.REJECTED,
        7: Outcome.IMPORTED,
    }
    assert outcomes[3][2] == "rejected by Vital: user_id: Unknown user"
    assert fake.imported == Counter({user(0): 1, user(2): 1, user(5): 1})
    assert len(report.records) == len(fake.bodies)


def rejects_user(bad: str) -> Handler:
    """A 422 Vital cannot attribute to a connection whenever ``bad`` is in the request."""

    def respond(request: httpx.Request, body: dict[str, Any]) -> httpx.Response:
        if any(c["user_id"] == bad for c in body["connections"]):
            return httpx.Response(
                422, json={"detail": [{"loc": ["body"], "msg": "Bad request", "type": "x"}]}
            )
        return all_imported(request, body)

    return respond


@pytest.mark.parametrize("bad_index", [0, 5, 7])
def test_unattributable_422_bisects_to_the_one_bad_row(bad_index: int) -> None:
    chunk = make_chunk(8)
    report, fake, _ = post(rejects_user(user(bad_index)), chunk)
    expected = {2 + i: (user(i), Outcome.IMPORTED, "") for i in range(8) if i != bad_index}
    expected[2 + bad_index] = (
        user(bad_index),
        Outcome.REJECTED,
        "Vital rejected the request (422): body: Bad request",
    )
    assert outcomes_by_line(report) == expected
    # Each valid row was imported exactly once; the bad one never.
    assert fake.imported == Counter({user(i): 1 for i in range(8) if i != bad_index})
    # 8 -> 4+4 -> 2+2 -> 1+1: one failing request per level, one passing half per level.
    assert [r.http_status for r in report.records].count(422) == 4
    assert [r.http_status for r in report.records].count(200) == 3
    assert len(fake.bodies) == 7


def test_unattributable_422_on_a_single_row_rejects_it_without_bisecting() -> None:
    report, fake, _ = post(rejects_user(user(0)), make_chunk(1))
    assert [(o.outcome, o.detail) for o in report.outcomes] == [
        (Outcome.REJECTED, "Vital rejected the request (422): body: Bad request")
    ]
    assert len(fake.bodies) == 1


def test_422_without_details() -> None:
    report, fake, _ = post(lambda _r, _b: httpx.Response(422, content=b"nope"), make_chunk(1))
    assert [(o.outcome, o.detail) for o in report.outcomes] == [
        (Outcome.REJECTED, "Vital rejected the request (422) without details")
    ]
    assert len(fake.bodies) == 1


def test_unattributable_422_bisects_the_largest_allowed_chunk() -> None:
    size = 5000
    assert settings(CHUNK_SIZE=size).chunk_size == size  # the largest CHUNK_SIZE accepted
    chunk = make_chunk(size)
    bad = size - 1
    report, fake, _ = post(rejects_user(user(bad)), chunk)
    outcomes = outcomes_by_line(report)
    assert outcomes[2 + bad][1] is Outcome.REJECTED
    assert Counter(o for _, o, _ in outcomes.values()) == Counter(
        {Outcome.IMPORTED: size - 1, Outcome.REJECTED: 1}
    )
    assert sum(fake.imported.values()) == size - 1


# --- auth and retries -------------------------------------------------------------------------


def test_401_is_fatal_and_errors_every_row_without_retrying() -> None:
    respond = scripted(httpx.Response(401, json={"detail": f"Invalid API key {API_KEY}"}))
    report, fake, client = post(respond, make_chunk(3))
    assert isinstance(report.fatal, VitalAuthError)
    assert report.fatal.status == 401
    assert report.fatal.attempts == 1
    message = str(report.fatal)
    assert message.startswith("Vital rejected the API key (401): check the secret named by ")
    assert [(o.outcome, o.detail) for o in report.outcomes] == [(Outcome.ERRORED, message)] * 3
    assert len(fake.bodies) == 1
    assert [(r.http_status, r.attempts) for r in report.records] == [(401, 1)]
    assert client.stats.retries == 0


def test_403_explains_link_migration() -> None:
    report, _, _ = post(lambda _r, _b: httpx.Response(403, json={"detail": "x"}), make_chunk(1))
    assert isinstance(report.fatal, VitalAuthError)
    assert str(report.fatal) == (
        "Vital refused the request (403): Link Migration may not be enabled for this team, "
        "or no Bring-Your-Own-OAuth credential is set for the provider; ask Vital support. "
        "Vital said: x"
    )
    assert report.outcomes[0].outcome is Outcome.ERRORED


def test_503_then_200_is_imported_on_the_second_attempt() -> None:
    respond = scripted(httpx.Response(503), all_imported)
    report, fake, client = post(respond, make_chunk(2))
    assert [o.outcome for o in report.outcomes] == [Outcome.IMPORTED, Outcome.IMPORTED]
    assert [(r.http_status, r.attempts) for r in report.records] == [(200, 2)]
    assert len(fake.bodies) == 2
    assert fake.bodies[0] == fake.bodies[1]
    assert (client.stats.retries, client.stats.server_errors) == (1, 1)
    assert fake.imported == Counter({user(0): 1, user(1): 1})


def test_429_with_retry_after_is_retried_and_counted() -> None:
    respond = scripted(httpx.Response(429, headers={"Retry-After": "7"}), all_imported)
    report, _, client = post(respond, make_chunk(1))
    assert [(r.http_status, r.attempts) for r in report.records] == [(200, 2)]
    assert report.outcomes[0].outcome is Outcome.IMPORTED
    assert (client.stats.throttles, client.stats.wait_seconds) == (1, 7.0)


def test_persistent_503_gives_up_after_max_attempts() -> None:
    report, fake, client = post(lambda _r, _b: httpx.Response(503), make_chunk(2))
    assert len(fake.bodies) == 3
    assert [(o.outcome, o.detail) for o in report.outcomes] == [
        (Outcome.ERRORED, "gave up after 3 attempt(s): HTTP 503")
    ] * 2
    assert [(r.http_status, r.attempts) for r in report.records] == [(503, 3)]
    assert report.fatal is None
    assert client.stats.retries == 2


def test_transport_error_then_200() -> None:
    calls = 0

    def respond(request: httpx.Request, body: dict[str, Any]) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise httpx.ConnectError("connection refused", request=request)
        return all_imported(request, body)

    report, _, client = post(respond, make_chunk(1))
    assert report.outcomes[0].outcome is Outcome.IMPORTED
    assert [(r.http_status, r.attempts) for r in report.records] == [(200, 2)]
    assert client.stats.transport_errors == 1


def test_other_4xx_is_not_retried() -> None:
    respond = scripted(httpx.Response(400, json={"detail": f"bad access_token={TOKEN}"}))
    report, fake, _ = post(respond, make_chunk(1))
    assert len(fake.bodies) == 1
    assert [(o.outcome, o.detail) for o in report.outcomes] == [
        (Outcome.ERRORED, "HTTP 400: bad access_token=[REDACTED]")
    ]
    assert report.fatal is None


def test_team_id_is_sent_as_query_parameter_only_when_set() -> None:
    team_id = "0b4c9e2a-7d31-4f8e-9a6b-1c2d3e4f5a6b"
    _, fake, _ = post(all_imported, make_chunk(1), VITAL_TEAM_ID=team_id)
    assert fake.params == [{"team_id": team_id}]
    _, fake, _ = post(all_imported, make_chunk(1))
    assert fake.params == [{}]


# --- Retry-After ------------------------------------------------------------------------------

NOW = datetime(2025, 1, 1, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("5", 5.0),
        (" 12 ", 12.0),
        ("0", 0.0),
        ("60", 60.0),
        ("120", MAX_RETRY_AFTER_SECONDS),
        ("Wed, 01 Jan 2025 00:00:30 GMT", 30.0),
        ("Wed, 01 Jan 2025 00:00:30 +0000", 30.0),
        ("Wed, 01 Jan 2025 01:00:30 +0100", 30.0),
        ("Tue, 31 Dec 2024 23:59:00 GMT", 0.0),
        ("Thu, 01 Jan 2026 00:00:00 GMT", MAX_RETRY_AFTER_SECONDS),
        (None, None),
        ("", None),
        ("soon", None),
        ("-5", None),
        ("1.5", None),
        ("Wed, 99 Foo 2025", None),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, now=NOW) == expected
    assert MAX_RETRY_AFTER_SECONDS == 60.0


@pytest.mark.parametrize("status", [400, 404, 405, 410, 413])
@pytest.mark.parametrize("probe", [True, False])
def test_another_4xx_stops_the_file_only_when_it_answers_the_probe(
    status: int, probe: bool
) -> None:
    fake = FakeVital(lambda _r, _b: httpx.Response(status, json={"detail": "no"}))
    client = VitalClient(settings(), API_KEY, lambda: 900.0, httpx.MockTransport(fake))
    with client:
        report = post_chunk(client, make_chunk(2), True, probe=probe)
    assert len(fake.bodies) == 1  # never retried
    assert {o.outcome for o in report.outcomes} == {Outcome.ERRORED}
    assert (report.fatal is not None) is probe
    if probe:
        assert report.fatal is not None
        assert report.fatal.status == status


def test_a_chunk_the_client_has_no_time_to_start_is_deferred_not_errored() -> None:
    # The gate passed, then time ran short before the client's own check (the body was being
    # built, the thread waited for the GIL): nothing went out, so a later invocation sends it.
    # Its rows must not come back errored ("not sent: too little Lambda time left").
    fake = FakeVital(all_imported)
    client = VitalClient(settings(), API_KEY, lambda: 1.0, httpx.MockTransport(fake))
    with client:
        report = post_chunk(client, make_chunk(3), True, lambda: None)
    assert report.held is Hold.DEFERRED
    assert (report.records, report.decided, report.shared) == ([], [], None)
    assert fake.bodies == []


def test_time_running_out_during_a_bisection_errors_what_was_not_sent() -> None:
    # Part of the chunk went out already: it cannot be deferred whole.
    late: list[bool] = []

    def remaining() -> float:
        return 1.0 if late else 900.0

    def unattributable_422_then_late(_: httpx.Request, body: dict[str, Any]) -> httpx.Response:
        late.append(True)  # the time runs short once the first answer is in
        return httpx.Response(422, json={"detail": "bad"})

    fake = FakeVital(unattributable_422_then_late)
    client = VitalClient(settings(), API_KEY, remaining, httpx.MockTransport(fake))
    with client:
        report = post_chunk(client, make_chunk(8), True)
    assert report.held is None
    outcomes = outcomes_by_line(report)
    assert len(outcomes) == 8
    details = {detail for _, outcome, detail in outcomes.values() if outcome is Outcome.ERRORED}
    assert details == {"not sent: too little Lambda time left for a request"}
    assert len(fake.bodies) == 1
