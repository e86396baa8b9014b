"""A bulk import whose answer was lost is settled by asking Vital, not sent again blindly.

``post_chunk`` against a real ``VitalClient`` whose transport plays Vital in-process: it takes
chunks (the users it imports are then listed by ``GET /v2/user/providers/{user_id}``), lists
its bulk ops, and loses answers as a test scripts it.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import httpx
import pytest
import stamina

from bulk_import.config import Settings
from bulk_import.errors import VitalClientError
from bulk_import.ingest.chunking import Chunk, PendingRow, serialise
from bulk_import.model import ConnectionRow, Outcome
from bulk_import.vital import BULK_OP_MAX_WAIT_SECONDS, BULK_OP_POLL_SECONDS
from bulk_import.vital.client import VitalClient
from bulk_import.vital.posting import (
    IMPORTED_DETAIL,
    MAX_EXTRA_REQUESTS,
    NOT_RESENT_BUDGET_DETAIL,
    NOT_RESENT_DETAIL,
    ChunkReport,
    Hold,
    post_chunk,
)
from bulk_import.vital.settle import (
    LOST_CONFIRMED_DETAIL,
    LOST_TWICE_DETAIL,
    LOST_UNASKED_DETAIL,
    NOT_CONNECTED_DETAIL,
    OP_DETAIL,
    UNKNOWN_USER_DETAIL,
)
from tests.fakes import FakeTime

API_KEY = "sk_unit_KEY_lost_answers"
TOKEN = "tok_LOST_answer_0123456789"
BASE = "http://vital.test"

# What Vital does with each POST, in order (the last repeats):
# "answer": take the chunk and answer 200; "lose": take it, then lose the answer;
# "drop": lose the connection before taking it; "202": enqueue it (nobody listed yet) and lose
# the answer; "reject-first": 422 pointing at the first connection; "reject-body": 422 that
# points at no connection; "400": a refusal that is not about the rows.
Action = Literal["answer", "lose", "drop", "202", "reject-first", "reject-body", "400"]


@pytest.fixture(autouse=True)
def _no_backoff() -> Iterator[None]:
    with stamina.set_testing(True, attempts=10, cap=True):
        yield


def user(i: int) -> str:
    return str(uuid.UUID(int=0x7A2D3E4F_0000_4000_8000_000000000000 + i))


def make_chunk(n: int) -> Chunk:
    rows = []
    for i in range(n):
        row = ConnectionRow.model_validate(
            {
                "provider": "oura",
                "user_id": user(i),
                "access_token": f"{TOKEN}-{i}",
                "refresh_token": f"ref-{i}",
                "provider_id": f"p{i}",
                "expires_at": 1_700_000_000 + i,
            }
        )
        rows.append(PendingRow(2 + i, row.user_id, serialise(row)))
    return Chunk("oura").subset(rows)


@dataclass
class Vital:
    """Vital's bulk import, bulk ops and user providers, losing answers as scripted."""

    actions: list[Action]
    unknown: set[str] = field(default_factory=set)  # users Vital does not know (404)
    refused: set[str] = field(default_factory=set)  # users it knows but does not connect
    lookups_down: bool = False
    connected: set[str] = field(default_factory=set)
    ops: list[dict[str, Any]] = field(default_factory=list)
    posts: list[list[str]] = field(default_factory=list)
    lookups: int = 0
    listings: int = 0
    # Listings of the bulk ops after which the enqueued ones ("202") end; None: never.
    ops_end_after: int | None = None
    enqueued: list[tuple[dict[str, Any], list[str]]] = field(default_factory=list)
    ops_start_late: timedelta = timedelta(0)  # how far Vital's started_at runs ahead

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            return self._post(request)
        if request.url.path == "/v2/link/bulk_op":
            self.listings += 1
            if self.ops_end_after is not None and self.listings > self.ops_end_after:
                self._end_enqueued()
            return httpx.Response(200, json={"data": self.ops, "next_cursor": None})
        self.lookups += 1
        if self.lookups_down:
            raise httpx.ConnectError("connection refused", request=request)
        who = request.url.path.rsplit("/", 1)[-1]
        if who in self.unknown:
            return httpx.Response(404, json={"detail": "User not found."})
        slug = {"slug": "oura", "name": "Oura", "logo": "", "created_on": "", "status": "connected"}
        return httpx.Response(200, json={"providers": [slug] if who in self.connected else []})

    def _post(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        ids = [c["user_id"] for c in body["connections"]]
        self.posts.append(ids)
        action = self.actions.pop(0) if len(self.actions) > 1 else self.actions[0]
        if action == "drop":
            raise httpx.RemoteProtocolError("Server disconnected", request=request)
        if action in ("reject-first", "reject-body"):
            loc = ["body", "connections", 0, "user_id"] if action == "reject-first" else ["body"]
            return httpx.Response(422, json={"detail": [{"loc": loc, "msg": "bad", "type": "x"}]})
        if action == "400":
            return httpx.Response(400, json={"detail": "Team not set up for Link Migration"})
        now = (datetime.now(UTC) + self.ops_start_late).isoformat()
        taken = [i for i in ids if i not in self.unknown | self.refused]
        if action == "202":
            self.ops.append(_op(len(ids), "in_progress", now))
            self.enqueued.append((self.ops[-1], taken))
            raise httpx.ReadTimeout("timed out", request=request)
        self.connected.update(taken)
        self.ops.append(_op(len(ids), "success", now))
        if action == "lose":
            raise httpx.ReadTimeout("timed out", request=request)
        failed = [i for i in ids if i in self.unknown | self.refused]
        return httpx.Response(200, json={"user_ids_imported": taken, "user_ids_failed": failed})

    def _end_enqueued(self) -> None:
        for op, taken in self.enqueued:
            op.update(_op(op["processed"] + op["pending"], "success", op["started_at"]))
            self.connected.update(taken)
        self.enqueued.clear()


def _op(size: int, status: str, started: str) -> dict[str, Any]:
    done = status != "in_progress"
    return {
        "type": "link_bulk_import",
        "status": status,
        "provider": "oura",
        "pending": 0 if done else size,
        "processed": size if done else 0,
        "started_at": started,
    }


def post(
    vital: Vital,
    chunk: Chunk,
    *,
    remaining: Callable[[], float] = lambda: 900.0,
    gate: Callable[[], Hold | None] | None = None,
    probe: bool = False,
    time: FakeTime | None = None,
) -> ChunkReport:
    settings = Settings.model_validate(
        {"VITAL_API_KEY_SECRET": "x", "VITAL_API_BASE_URL": BASE, "MAX_ATTEMPTS": 3}
    )
    time = time or FakeTime()
    client = VitalClient(
        settings,
        API_KEY,
        remaining,
        httpx.MockTransport(vital),
        clock=time.clock,
        sleep=time.sleep,
    )
    with client:
        return post_chunk(client, chunk, True, gate, probe=probe)


def outcomes(report: ChunkReport) -> dict[str, tuple[Outcome, str]]:
    lines = [o.line for o in report.outcomes]
    assert len(lines) == len(set(lines)), "each row gets exactly one outcome"
    return {o.user_id: (o.outcome, o.detail) for o in report.outcomes}


def test_given_vital_took_the_chunk_when_its_answer_is_lost_then_the_lookup_confirms_it() -> None:
    vital = Vital(["lose"])
    report = post(vital, make_chunk(4))
    assert len(vital.posts) == 1, "not sent twice"
    assert outcomes(report) == {
        user(i): (Outcome.IMPORTED, LOST_CONFIRMED_DETAIL) for i in range(4)
    }
    assert vital.lookups == 4
    assert report.in_doubt == 0
    assert [(r.http_status, r.attempts) for r in report.records] == [(None, 1)]


def test_given_the_chunk_never_arrived_when_the_connection_drops_then_it_is_sent_once_more() -> (
    None
):
    vital = Vital(["drop", "answer"])
    report = post(vital, make_chunk(3))
    assert vital.posts == [[user(i) for i in range(3)]] * 2
    assert outcomes(report) == {user(i): (Outcome.IMPORTED, IMPORTED_DETAIL) for i in range(3)}
    assert [(r.http_status, r.attempts) for r in report.records] == [(None, 1), (200, 1)]


def test_given_the_answer_is_lost_twice_and_vital_lists_nobody_then_the_rows_stay_in_doubt() -> (
    None
):
    vital = Vital(["drop"])
    report = post(vital, make_chunk(3))
    assert len(vital.posts) == 2, "one resend, no more"
    assert outcomes(report) == {user(i): (Outcome.ERRORED, LOST_TWICE_DETAIL) for i in range(3)}
    assert report.in_doubt == 3


def test_given_vital_enqueued_the_chunk_when_the_answer_is_lost_then_its_op_is_waited_for() -> None:
    """An op of the chunk's provider and size in progress since the send may be this chunk's:
    the lookups are made again once it ends, and tell what Vital holds."""
    vital = Vital(["202"], refused={user(1)}, ops_end_after=3)
    time = FakeTime()
    report = post(vital, make_chunk(3), time=time)
    assert len(vital.posts) == 1
    assert outcomes(report) == {
        user(0): (Outcome.IMPORTED, LOST_CONFIRMED_DETAIL),
        user(1): (Outcome.FAILED, NOT_CONNECTED_DETAIL),
        user(2): (Outcome.IMPORTED, LOST_CONFIRMED_DETAIL),
    }
    assert report.in_doubt == 0
    assert time.sleeps == [BULK_OP_POLL_SECONDS] * 3, "one listing a poll, then the lookups"
    assert vital.lookups == 3 + 3


@pytest.mark.parametrize("actions", [["lose"], ["202"]], ids=["answered", "enqueued"])
def test_given_users_vital_does_not_know_then_they_are_failed_and_nothing_is_sent_again(
    actions: list[Action],
) -> None:
    """Vital fails a user it does not know (404) whether or not the chunk arrived: no reason to
    send the chunk again, even with none of its users listed once its op has ended."""
    vital = Vital([*actions, "answer"], unknown={user(i) for i in range(3)}, ops_end_after=2)
    report = post(vital, make_chunk(3))
    assert len(vital.posts) == 1, "not sent twice"
    assert outcomes(report) == {user(i): (Outcome.FAILED, UNKNOWN_USER_DETAIL) for i in range(3)}
    assert report.in_doubt == 0


def test_given_two_parts_of_a_chunk_lost_while_their_ops_run_then_they_share_one_wait() -> None:
    """A 422 that points at no row splits the chunk; both halves are enqueued and their answers
    lost: one listing for both, and one wait of at most BULK_OP_MAX_WAIT_SECONDS, not one each."""
    vital = Vital(["reject-body", "202", "202"])
    time = FakeTime()
    report = post(vital, make_chunk(4), time=time)
    assert [len(ids) for ids in vital.posts] == [4, 2, 2]
    assert {outcome for outcome, _ in outcomes(report).values()} == {Outcome.ERRORED}
    assert sum(time.sleeps) == BULK_OP_MAX_WAIT_SECONDS


def test_given_an_op_that_starts_late_by_vitals_clock_then_the_chunk_is_not_sent_again() -> None:
    """Vital's clock ahead of the function's, or a request it started late: an op that may be
    the chunk's counts whenever it started after the send, never resent on a guess."""
    vital = Vital(["202", "answer"], ops_start_late=timedelta(minutes=5))
    report = post(vital, make_chunk(3))
    assert len(vital.posts) == 1, "not sent twice"
    assert outcomes(report) == {
        user(i): (Outcome.ERRORED, OP_DETAIL.format(count=1)) for i in range(3)
    }


def test_given_an_op_that_may_be_the_chunks_outlasts_the_wait_then_rows_stay_in_doubt() -> None:
    """Neither sent again nor counted as enqueued on a guess."""
    vital = Vital(["202"])
    time = FakeTime()
    report = post(vital, make_chunk(3), time=time)
    assert len(vital.posts) == 1
    assert outcomes(report) == {
        user(i): (Outcome.ERRORED, OP_DETAIL.format(count=1)) for i in range(3)
    }
    assert report.in_doubt == 3
    assert sum(time.sleeps) == BULK_OP_MAX_WAIT_SECONDS


def test_given_some_users_vital_could_not_import_then_those_are_failed() -> None:
    vital = Vital(["lose"], refused={user(1)})
    report = post(vital, make_chunk(3))
    assert len(vital.posts) == 1
    assert outcomes(report) == {
        user(0): (Outcome.IMPORTED, LOST_CONFIRMED_DETAIL),
        user(1): (Outcome.FAILED, NOT_CONNECTED_DETAIL),
        user(2): (Outcome.IMPORTED, LOST_CONFIRMED_DETAIL),
    }


def test_given_vital_cannot_be_asked_then_rows_stay_errored_saying_what_to_check() -> None:
    vital = Vital(["lose"], lookups_down=True)
    report = post(vital, make_chunk(2))
    assert len(vital.posts) == 1
    detail = LOST_UNASKED_DETAIL.format(
        error="gave up after 3 attempt(s): ConnectError talking to Vital"
    )
    assert outcomes(report) == {user(i): (Outcome.ERRORED, detail) for i in range(2)}
    assert report.in_doubt == 2


def test_given_too_little_time_to_ask_then_rows_stay_errored_not_resent() -> None:
    vital = Vital(["drop", "answer"])
    # Time enough to post; once the request is out, too little to start a lookup (the retry
    # reserve is 30 s, an attempt needs 1 s more).
    report = post(vital, make_chunk(2), remaining=lambda: 31.5 if not vital.posts else 30.5)
    assert len(vital.posts) == 1, "nothing is resent on a guess"
    detail = LOST_UNASKED_DETAIL.format(error="too little Lambda time left")
    assert outcomes(report) == {user(i): (Outcome.ERRORED, detail) for i in range(2)}
    assert vital.lookups == 0
    assert report.held is None
    assert report.in_doubt == 2


def test_given_a_rejected_row_and_a_lost_answer_then_both_outcomes_are_kept() -> None:
    """The 422's rejected row keeps its outcome; the resent rest, its answer lost, is confirmed."""
    vital = Vital(["reject-first", "lose"])
    report = post(vital, make_chunk(3))
    assert vital.posts == [[user(0), user(1), user(2)], [user(1), user(2)]]
    result = outcomes(report)
    assert result[user(0)][0] is Outcome.REJECTED
    assert result[user(1)] == result[user(2)] == (Outcome.IMPORTED, LOST_CONFIRMED_DETAIL)


def test_no_detail_or_record_repeats_a_token() -> None:
    for actions in (["lose"], ["drop"], ["202"]):
        report = post(Vital(list(actions)), make_chunk(2))
        text = repr(report.outcomes) + repr(report.records)
        assert TOKEN not in text
        assert API_KEY not in text


def test_given_the_probes_answer_is_lost_when_its_resend_is_refused_then_the_file_stops() -> None:
    """The invocation's first chunk stays its probe through the resend."""
    vital = Vital(["drop", "400"])
    report = post(vital, make_chunk(2), probe=True)
    assert len(vital.posts) == 2
    assert isinstance(report.fatal, VitalClientError)
    assert {o.outcome for o in report.outcomes} == {Outcome.ERRORED}


@pytest.mark.parametrize("hold", [Hold.STOPPED, Hold.DEFERRED])
def test_given_the_run_stopped_meanwhile_then_what_vital_never_got_is_not_resent(
    hold: Hold,
) -> None:
    """The resend asks the gate as a new chunk would: once the run stopped (or time ran
    short), the rows are not sent, and say so; they are not in doubt (Vital holds nothing)."""
    asked: list[int] = []

    def gate() -> Hold | None:
        asked.append(1)
        return None if len(asked) == 1 else hold  # open for the first request only

    vital = Vital(["drop", "answer"])
    report = post(vital, make_chunk(3), gate=gate)
    assert len(vital.posts) == 1
    assert outcomes(report) == {
        user(i): (Outcome.ERRORED, NOT_RESENT_DETAIL[hold]) for i in range(3)
    }
    assert report.in_doubt == 0


def test_given_a_resend_the_chunks_extra_requests_stay_within_one_budget() -> None:
    """A 422 that points at no row is bisected within MAX_EXTRA_REQUESTS; a resend after a
    lost answer spends from the same budget, not a new one."""
    alone = Vital(["reject-body"])
    post(alone, make_chunk(40))
    assert len(alone.posts) == 1 + MAX_EXTRA_REQUESTS

    after_a_drop = Vital(["drop", "reject-body"])
    report = post(after_a_drop, make_chunk(40))
    assert len(after_a_drop.posts) == 1 + MAX_EXTRA_REQUESTS
    assert len(outcomes(report)) == 40


def test_given_the_budget_spent_when_the_last_request_is_dropped_then_it_is_not_resent() -> None:
    """The chunk's last allowed request is dropped before Vital takes it: what it held is not
    sent a 66th time, and says why."""
    vital = Vital(["reject-body"] * MAX_EXTRA_REQUESTS + ["drop", "reject-body"])
    report = post(vital, make_chunk(40))
    assert len(vital.posts) == 1 + MAX_EXTRA_REQUESTS
    details = {detail for _, detail in outcomes(report).values()}
    assert NOT_RESENT_BUDGET_DETAIL in details
    assert len(outcomes(report)) == 40


def test_given_a_key_refused_while_asking_then_later_parts_are_not_asked() -> None:
    """A 401 to a lookup stops the file; the other lost parts stay in doubt, unasked."""

    class Refusing(Vital):
        def __call__(self, request: httpx.Request) -> httpx.Response:
            if request.method == "GET" and request.url.path.startswith("/v2/user/"):
                self.lookups += 1
                return httpx.Response(401, json={"detail": "Invalid API key"})
            return super().__call__(request)

    vital = Refusing(["reject-body", "lose", "lose"])
    report = post(vital, make_chunk(4))
    assert vital.posts == [[user(i) for i in range(4)], [user(0), user(1)], [user(2), user(3)]]
    assert vital.lookups == 1, "asked once, then no more"
    assert report.fatal is not None
    assert {o.outcome for o in report.outcomes} == {Outcome.ERRORED}
    assert report.in_doubt == 4
