"""VitalClient's retry policy in isolation: backoff, Retry-After, budget, deadline, breaker.

Vital is an ``httpx.MockTransport``; stamina runs in its testing mode (no sleeping) unless a test
says otherwise, and the hook's chosen waits are checked through ``CallStats.wait_seconds``.
"""

from __future__ import annotations

import json
import random
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import stamina

from bulk_import.config import Settings
from bulk_import.errors import (
    VitalAnswerLost,
    VitalAuthError,
    VitalClientError,
    VitalProtocolError,
    VitalRejected,
    VitalUnavailable,
)
from bulk_import.ingest.chunking import Chunk, PendingRow, serialise
from bulk_import.model import ConnectionRow, Outcome
from bulk_import.vital.breaker import CircuitBreaker
from bulk_import.vital.bulk_ops import list_bulk_ops
from bulk_import.vital.client import CONNECT_TIMEOUT_SECONDS, VitalClient
from bulk_import.vital.lookups import user_providers
from bulk_import.vital.posting import MAX_EXTRA_REQUESTS, post_chunk
from bulk_import.vital.retry import (
    BACKOFF_BASE_SECONDS,
    BACKOFF_MAX_SECONDS,
    MIN_ATTEMPT_SECONDS,
    REFUND_PER_ANSWER,
    full_jitter_backoff,
)

API_KEY = "sk_unit_KEY_0123456789"
BASE = "http://vital.test"

Respond = Callable[[httpx.Request], httpx.Response]


@pytest.fixture(autouse=True)
def _no_sleep() -> Iterator[None]:
    with stamina.set_testing(True, attempts=20, cap=True):
        yield


def token(i: int) -> str:
    # Not token-shaped for the regex safety net: only the client's own scrubbing can catch it.
    return f"plain{i:04d}secretvalue"


def make_chunk(n: int, provider: str = "oura") -> Chunk:
    rows = []
    for i in range(n):
        row = ConnectionRow.model_validate(
            {
                "provider": provider,
                "user_id": str(uuid.UUID(int=i + 1)),
                "access_token": token(i),
                "refresh_token": f"refresh{i:04d}secretvalue",
                "provider_id": f"p{i}",
                "expires_at": 1_900_000_000,
            }
        )
        rows.append(PendingRow(i + 2, row.user_id, serialise(row)))
    return Chunk(provider).subset(rows)


def settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "VITAL_API_KEY_SECRET": "x",
        "VITAL_API_BASE_URL": BASE,
        "MAX_ATTEMPTS": 5,
        "MAX_CONCURRENCY": 1,
        **overrides,
    }
    return Settings.model_validate(values)


class Script:
    """Answers requests from a list (the last answer repeats) and keeps every request."""

    def __init__(self, *answers: httpx.Response | Respond) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        return answer if isinstance(answer, httpx.Response) else answer(request)


def imported(request: httpx.Request) -> httpx.Response:
    ids = [c["user_id"] for c in json.loads(request.content)["connections"]]
    return httpx.Response(200, json={"user_ids_imported": ids, "user_ids_failed": []})


def client(
    script: Script,
    *,
    remaining: float = 900.0,
    breaker: CircuitBreaker | None = None,
    rng: random.Random | None = None,
    **overrides: Any,
) -> VitalClient:
    return VitalClient(
        settings(**overrides),
        API_KEY,
        lambda: remaining,
        httpx.MockTransport(script),
        breaker=breaker,
        rng=rng,
    )


BODY = make_chunk(2).body(True)


# --- backoff ----------------------------------------------------------------------------------


def test_full_jitter_stays_within_the_exponential_ceiling_and_spreads() -> None:
    rng = random.Random(1)
    for retry in range(1, 12):
        ceiling = min(BACKOFF_MAX_SECONDS, BACKOFF_BASE_SECONDS * 2 ** (retry - 1))
        waits = [full_jitter_backoff(retry, rng) for _ in range(200)]
        assert all(0.0 <= w <= ceiling for w in waits)
        # Full jitter: spread over the whole range, not bunched at the ceiling.
        assert min(waits) < ceiling * 0.1
        assert max(waits) > ceiling * 0.9
    assert full_jitter_backoff(10_000, rng) <= BACKOFF_MAX_SECONDS


def test_jittered_waits_are_recorded_as_retry_wait() -> None:
    script = Script(httpx.Response(503), httpx.Response(503), imported)
    with client(script, rng=random.Random(7)) as vital:
        result = vital.post_bulk_import(BODY)
    replay = random.Random(7)
    expected = full_jitter_backoff(1, replay) + full_jitter_backoff(2, replay)
    assert result.attempts == 3
    assert vital.stats.retries == 2
    assert vital.stats.server_errors == 2
    assert vital.stats.wait_seconds == pytest.approx(expected)
    assert 0 < vital.stats.wait_seconds <= BACKOFF_BASE_SECONDS * 3


def test_retry_after_as_http_date_is_honoured() -> None:
    when = "Wed, 21 Oct 2099 07:28:00 GMT"  # far future: capped
    script = Script(httpx.Response(503, headers={"Retry-After": when}), imported)
    with client(script) as vital:
        vital.post_bulk_import(BODY)
    assert vital.stats.wait_seconds == 60.0
    assert vital.stats.throttles == 0
    assert vital.stats.server_errors == 1


def test_real_waits_follow_retry_after() -> None:
    """Outside stamina's testing mode the hook's float is what stamina sleeps."""
    script = Script(httpx.Response(429, headers={"Retry-After": "1"}), imported)
    with stamina.set_testing(False), client(script) as vital:
        result = vital.post_bulk_import(BODY)
    assert result.duration_s >= 1.0
    assert vital.stats.wait_seconds == 1.0


# --- budget, deadline, breaker ----------------------------------------------------------------


def test_retry_budget_is_shared_by_the_calls_of_a_file() -> None:
    script = Script(httpx.Response(503))
    with client(script, MAX_ATTEMPTS=20, breaker=CircuitBreaker(threshold=99)) as vital:
        assert vital.retry_budget == 40  # MAX_ATTEMPTS * 2 * MAX_CONCURRENCY
        with pytest.raises(VitalUnavailable) as first:
            vital.post_bulk_import(BODY)
        with pytest.raises(VitalUnavailable) as second:
            vital.post_bulk_import(BODY)
        with pytest.raises(VitalUnavailable) as third:
            vital.post_bulk_import(BODY)
    # 19 retries each for the first two calls, the last 2 for the third.
    assert first.value.attempts == 20
    assert second.value.attempts == 20
    assert str(third.value) == (
        "gave up after 3 attempt(s): HTTP 503 (the file's retry budget of 40 is spent)"
    )
    assert third.value.status == 503
    assert len(script.requests) == 43
    assert vital.retries_left == 0
    assert vital.stats.retries == 40
    assert vital.stats.retries_refused == 1


def test_answered_calls_refill_the_budget_so_occasional_throttling_never_spends_it() -> None:
    # A long file throttled now and then: every fifth request is answered 429, then retried.
    answers = 0

    def every_fifth_throttled(request: httpx.Request) -> httpx.Response:
        nonlocal answers
        answers += 1
        return httpx.Response(429) if answers % 5 == 0 else imported(request)

    with client(Script(every_fifth_throttled), MAX_ATTEMPTS=3) as vital:
        for _ in range(300):  # ~75 retries, far more than the budget of 10
            vital.post_bulk_import(BODY)
        assert vital.stats.retries >= 70
        assert vital.stats.retries_refused == 0
        assert vital.retries_left == vital.retry_budget


def test_an_outage_still_spends_the_refilled_budget() -> None:
    script = Script(*[imported] * 50, httpx.Response(503))
    with client(script, MAX_ATTEMPTS=20, breaker=CircuitBreaker(threshold=99)) as vital:
        for _ in range(50):
            vital.post_bulk_import(BODY)
        assert vital.retries_left == vital.retry_budget  # answered calls refill no further
        messages = []
        for _ in range(3):
            with pytest.raises(VitalUnavailable) as failed:
                vital.post_bulk_import(BODY)
            messages.append(str(failed.value))
    # 19 retries each for the first two calls, the last 2 for the third
    assert messages[2].endswith("(the file's retry budget of 40 is spent)")
    assert vital.stats.retries == 40


def test_exhausted_attempts_spend_no_budget_on_the_retry_never_made() -> None:
    with client(Script(httpx.Response(503)), MAX_ATTEMPTS=3) as vital:
        with pytest.raises(VitalUnavailable, match=r"^gave up after 3 attempt\(s\): HTTP 503$"):
            vital.post_bulk_import(BODY)
        assert vital.retries_left == vital.retry_budget - 2
        assert vital.stats.retries == 2


def test_an_answer_gives_back_the_retries_it_took_or_a_fifth_of_one() -> None:
    script = Script(*[httpx.Response(503)] * 4, imported)
    with client(script, MAX_ATTEMPTS=3, breaker=CircuitBreaker(threshold=99)) as vital:
        with pytest.raises(VitalUnavailable):
            vital.post_bulk_import(BODY)  # 2 retries spent, nothing answered
        assert vital.retries_left == vital.retry_budget - 2
        vital.post_bulk_import(BODY)  # one retry (503, then answered): given back
        assert vital.retries_left == vital.retry_budget - 2
        vital.post_bulk_import(BODY)  # answered at once: a fifth of a retry
        assert vital.retries_left == pytest.approx(vital.retry_budget - 2 + REFUND_PER_ANSWER)


def test_no_request_when_the_invocation_is_nearly_over() -> None:
    script = Script(imported)
    # SAFETY_MARGIN_SECONDS=4: retries and requests stop 2 s before the end.
    with (
        client(script, remaining=2.5, SAFETY_MARGIN_SECONDS=4) as vital,
        pytest.raises(VitalUnavailable, match="too little Lambda time left"),
    ):
        vital.post_bulk_import(BODY)
    assert script.requests == []


def test_no_retry_whose_wait_would_pass_the_deadline() -> None:
    script = Script(httpx.Response(429, headers={"Retry-After": "30"}), imported)
    with (
        client(script, remaining=20.0, SAFETY_MARGIN_SECONDS=4) as vital,
        pytest.raises(VitalUnavailable) as caught,
    ):
        vital.post_bulk_import(BODY)
    assert str(caught.value) == (
        "gave up after 1 attempt(s): HTTP 429 (too little Lambda time left to retry)"
    )
    assert len(script.requests) == 1
    assert vital.stats.wait_seconds == 0.0


def test_timeouts_are_explicit_and_shrink_to_the_deadline() -> None:
    script = Script(imported)
    with client(script, HTTP_TIMEOUT_SECONDS=12) as vital:
        vital.post_bulk_import(BODY)
    with client(script, remaining=9.0, SAFETY_MARGIN_SECONDS=4, HTTP_TIMEOUT_SECONDS=12) as vital:
        vital.post_bulk_import(BODY)
    full, short = (r.extensions["timeout"] for r in script.requests)
    assert full == {"connect": CONNECT_TIMEOUT_SECONDS, "read": 12, "write": 12, "pool": 12}
    assert short["connect"] == CONNECT_TIMEOUT_SECONDS
    assert 6.0 < short["read"] <= 7.0  # 9 s left - 2 s reserve
    assert short["read"] == short["write"] == short["pool"]
    assert short["read"] >= MIN_ATTEMPT_SECONDS


def test_breaker_opens_after_consecutive_failures_and_refuses_without_a_request() -> None:
    now = [0.0]
    breaker = CircuitBreaker(threshold=2, cooldown=30.0, clock=lambda: now[0])
    script = Script(httpx.Response(503), httpx.Response(503), httpx.Response(503), imported)
    with client(script, MAX_ATTEMPTS=1, breaker=breaker) as vital:
        for _ in range(2):
            with pytest.raises(VitalUnavailable, match="HTTP 503"):
                vital.post_bulk_import(BODY)
        with pytest.raises(VitalUnavailable, match="circuit breaker open"):
            vital.post_bulk_import(BODY)
        assert len(script.requests) == 2
        assert vital.stats.short_circuited == 1
        # After the cooldown one trial goes; it fails, so the breaker opens again at once.
        now[0] = 31.0
        with pytest.raises(VitalUnavailable, match="HTTP 503"):
            vital.post_bulk_import(BODY)
        with pytest.raises(VitalUnavailable, match="circuit breaker open"):
            vital.post_bulk_import(BODY)
        # The next trial succeeds and closes it.
        now[0] = 62.0
        assert vital.post_bulk_import(BODY).status == 200
        assert vital.post_bulk_import(BODY).status == 200
    assert len(script.requests) == 5


def test_after_the_cooldown_exactly_one_of_many_callers_gets_the_trial() -> None:
    now = [0.0]
    breaker = CircuitBreaker(threshold=1, cooldown=30.0, clock=lambda: now[0])
    breaker.failure()
    now[0] = 31.0
    start = threading.Barrier(8)
    allowed: list[bool] = []

    def caller() -> None:
        start.wait(5)
        allowed.append(breaker.allow())

    threads = [threading.Thread(target=caller) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    assert sorted(allowed) == [False] * 7 + [True]
    # While the trial runs, no one else goes; its success lets everyone through again.
    assert not breaker.allow()
    breaker.success()
    assert all(breaker.allow() for _ in range(3))


def test_refusals_of_single_chunks_do_not_open_the_breaker() -> None:
    """A 4xx about one chunk is an answer: Vital is up, and the next chunk may well pass."""
    breaker = CircuitBreaker(threshold=2)
    refusal = httpx.Response(400, json={"detail": "provider user is already connected"})
    script = Script(refusal, refusal, refusal, imported)
    with client(script, MAX_ATTEMPTS=1, breaker=breaker) as vital:
        for _ in range(3):
            with pytest.raises(VitalClientError, match="HTTP 400"):
                vital.post_bulk_import(BODY)
        assert vital.post_bulk_import(BODY).status == 200
    assert not breaker.open


def test_answers_that_are_not_vitals_open_the_breaker() -> None:
    breaker = CircuitBreaker(threshold=2)
    script = Script(httpx.Response(501), httpx.Response(505))
    with client(script, MAX_ATTEMPTS=1, breaker=breaker) as vital:
        for _ in range(2):
            with pytest.raises(VitalClientError):
                vital.post_bulk_import(BODY)
    assert breaker.open


def test_retries_stop_when_the_breaker_opens_meanwhile() -> None:
    breaker = CircuitBreaker(threshold=1)

    def fail_and_trip(_: httpx.Request) -> httpx.Response:
        breaker.failure()  # another worker's chunk just failed for good
        return httpx.Response(503)

    script = Script(fail_and_trip)
    with client(script, breaker=breaker) as vital, pytest.raises(VitalUnavailable) as caught:
        vital.post_bulk_import(BODY)
    assert str(caught.value) == (
        "gave up after 1 attempt(s): HTTP 503 (circuit breaker open: Vital kept failing)"
    )
    assert len(script.requests) == 1


def test_half_open_trial_is_a_single_attempt() -> None:
    now = [0.0]
    breaker = CircuitBreaker(threshold=1, cooldown=5.0, clock=lambda: now[0])
    breaker.failure()
    now[0] = 6.0
    script = Script(httpx.Response(503), imported)
    with client(script, breaker=breaker) as vital, pytest.raises(VitalUnavailable):
        vital.post_bulk_import(BODY)
    assert len(script.requests) == 1


# --- errors that are not retried --------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "retried"),
    [
        *((status, True) for status in (408, 425, 429, 503)),
        *((status, False) for status in (400, 404, 409, 501, 505)),
    ],
)
def test_which_answers_are_retried(status: int, retried: bool) -> None:
    script = Script(httpx.Response(status, json={"detail": "x"}), imported)
    with client(script, MAX_ATTEMPTS=3) as vital:
        if retried:
            assert vital.post_bulk_import(BODY).status == 200
        else:
            with pytest.raises(VitalClientError):
                vital.post_bulk_import(BODY)
    assert len(script.requests) == (2 if retried else 1)


def raises(error: type[httpx.TransportError]) -> Respond:
    def respond(request: httpx.Request) -> httpx.Response:
        raise error("no answer", request=request)

    return respond


def gateway(status: int) -> Respond:
    """A gateway's HTML answer, built per request (a Response made at collection time would
    outlive the test, with the request it is tied to)."""
    return lambda _: httpx.Response(status, text=f"<html>{status}</html>")


@pytest.mark.parametrize(
    ("lost", "status"),
    [
        (lambda _: httpx.Response(500, json={"detail": "Internal Server Error"}), 500),
        (gateway(502), 502),
        (gateway(504), 504),
        (raises(httpx.ReadTimeout), None),
        (raises(httpx.ReadError), None),
        (raises(httpx.RemoteProtocolError), None),
    ],
    ids=["500", "502", "504", "ReadTimeout", "ReadError", "RemoteProtocolError"],
)
def test_given_a_bulk_import_whose_answer_was_lost_when_posting_then_it_is_not_resent(
    lost: Respond, status: int | None
) -> None:
    """Vital may hold the chunk: the caller settles it by lookup (``VitalAnswerLost``)."""
    script = Script(lambda _: httpx.Response(503), lost, imported)
    before = datetime.now(UTC).timestamp()
    with client(script, MAX_ATTEMPTS=5) as vital, pytest.raises(VitalAnswerLost) as caught:
        vital.post_bulk_import(BODY)
    assert len(script.requests) == 2  # the 503 was retried; the lost answer was not
    assert caught.value.attempts == 2
    assert before <= caught.value.sent_at <= datetime.now(UTC).timestamp()
    assert str(caught.value).startswith("no answer from Vital (")
    assert caught.value.status == status


@pytest.mark.parametrize("error", [httpx.ConnectError, httpx.ConnectTimeout, httpx.WriteError])
def test_given_a_request_that_never_left_when_posting_then_it_is_retried(
    error: type[httpx.TransportError],
) -> None:
    script = Script(raises(error), imported)
    with client(script) as vital:
        assert vital.post_bulk_import(BODY).attempts == 2
    assert len(script.requests) == 2


def test_given_a_lookup_whose_answer_was_lost_then_it_is_retried() -> None:
    """A GET is safe to repeat: the same failures only cost a retry."""
    script = Script(raises(httpx.ReadTimeout), httpx.Response(200, json={"providers": []}))
    with client(script) as vital:
        assert user_providers(vital, str(uuid.uuid4())) == []
    assert len(script.requests) == 2


def test_unsupported_protocol_is_not_retried() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.UnsupportedProtocol("no", request=request)

    script = Script(refuse)
    with client(script) as vital, pytest.raises(VitalClientError) as caught:
        vital.post_bulk_import(BODY)
    assert str(caught.value) == "could not talk to Vital (UnsupportedProtocol)"
    assert caught.value.attempts == 1
    assert len(script.requests) == 1


@pytest.mark.parametrize("content", [b"not json", b'{"user_ids_imported": "x"}', b"[1]"])
def test_200_in_an_unknown_shape_is_a_protocol_error(content: bytes) -> None:
    script = Script(httpx.Response(200, content=content))
    with client(script) as vital, pytest.raises(VitalProtocolError) as caught:
        vital.post_bulk_import(BODY)
    assert "whether these rows were imported is unknown" in str(caught.value)
    assert len(script.requests) == 1


def test_error_messages_never_repeat_the_key_or_a_token_of_the_request() -> None:
    chunk = make_chunk(3)
    echo = f"key {API_KEY} token {token(1)}"
    for status, kind in ((401, VitalAuthError), (403, VitalAuthError), (400, VitalClientError)):
        script = Script(httpx.Response(status, json={"detail": echo}))
        with client(script) as vital, pytest.raises(kind) as caught:
            vital.post_bulk_import(chunk.body(True))
        assert API_KEY not in str(caught.value)
        assert token(1) not in str(caught.value)
        assert "[REDACTED]" in str(caught.value)
    issue = {
        "loc": ["body", "connections", 1, "access_token"],
        "msg": f"Value error, {token(1)} is expired",
        "type": "value_error",
        "input": {"access_token": token(1), "refresh_token": "refresh0001secretvalue"},
    }
    script = Script(httpx.Response(422, json={"detail": [issue]}))
    with client(script) as vital, pytest.raises(VitalRejected) as rejected:
        vital.post_bulk_import(chunk.body(True))
    assert token(1) not in str(rejected.value)
    assert rejected.value.issues[0].msg == "Value error, [REDACTED] is expired"
    assert "secretvalue" not in repr(rejected.value.issues)


def test_a_token_in_another_column_is_masked_where_vital_quotes_it() -> None:
    """Swapped columns put a token in provider_id or the scopes; Vital may quote either."""
    stray, scope = "plainSTRAYsecretvalue", "plainSCOPEsecretvalue"
    row = ConnectionRow.model_validate(
        {
            "provider": "oura",
            "user_id": str(uuid.UUID(int=7)),
            "access_token": token(7),
            "refresh_token": "refresh0007secretvalue",
            "provider_id": stray,
            "expires_at": 1_900_000_000,
            "oauth_scopes": ["daily", scope],
        }
    )
    body = Chunk("oura").subset([PendingRow(2, row.user_id, serialise(row))]).body(True)
    echo = f"provider user {stray} is already connected; unknown scope '{scope}'"
    script = Script(httpx.Response(400, json={"detail": echo}))
    with client(script) as vital, pytest.raises(VitalClientError) as caught:
        vital.post_bulk_import(body)
    assert stray not in str(caught.value)
    assert scope not in str(caught.value)
    issue = {"loc": ["body", "connections", 0, "provider_id"], "msg": echo, "type": "x"}
    script = Script(httpx.Response(422, json={"detail": [issue]}))
    with client(script) as vital, pytest.raises(VitalRejected) as rejected:
        vital.post_bulk_import(body)
    assert stray not in repr(rejected.value.issues)
    assert scope not in repr(rejected.value.issues)


def test_short_values_of_other_fields_do_not_cut_words_out_of_vitals_text() -> None:
    row = ConnectionRow.model_validate(
        {
            "provider": "oura",
            "user_id": str(uuid.UUID(int=8)),
            "access_token": token(8),
            "refresh_token": "refresh0008secretvalue",
            "provider_id": "1234",
            "expires_at": 1_900_000_000,
            "oauth_scopes": ["read", "daily"],
        }
    )
    body = Chunk("oura").subset([PendingRow(2, row.user_id, serialise(row))]).body(True)
    echo = "provider user is already connected; expired in 12345 s"
    script = Script(httpx.Response(400, json={"detail": echo}))
    with client(script) as vital, pytest.raises(VitalClientError) as caught:
        vital.post_bulk_import(body)
    assert str(caught.value) == f"HTTP 400: {echo}"


# --- posting around 422s ----------------------------------------------------------------------


def test_a_422_about_the_provider_rejects_the_chunk_without_bisecting() -> None:
    issue = {"loc": ["body", "provider"], "msg": "Input should be 'oura' or 'fitbit'"}
    script = Script(httpx.Response(422, json={"detail": [issue]}))
    with client(script) as vital:
        report = post_chunk(vital, make_chunk(8), wait_for_completion=True)
    assert len(script.requests) == 1
    assert {(o.outcome, o.detail) for o in report.outcomes} == {
        (Outcome.REJECTED, "rejected by Vital: provider: Input should be 'oura' or 'fitbit'")
    }
    assert len(report.outcomes) == 8


def test_bisection_is_bounded_when_every_row_is_refused() -> None:
    bad = httpx.Response(422, json={"detail": [{"loc": ["body"], "msg": "Bad request"}]})
    script = Script(bad)
    with client(script) as vital:
        report = post_chunk(vital, make_chunk(500), wait_for_completion=True)
    assert len(script.requests) == 1 + MAX_EXTRA_REQUESTS
    lines = [o.line for o in report.outcomes]
    assert sorted(lines) == list(range(2, 502))
    assert {o.outcome for o in report.outcomes} == {Outcome.REJECTED, Outcome.ERRORED}
    errored = [o for o in report.outcomes if o.outcome is Outcome.ERRORED]
    assert errored
    assert errored[0].detail.startswith("not sent: could not isolate the rows Vital rejected")


def test_a_key_revoked_during_bisection_stops_the_chunk() -> None:
    chunk = make_chunk(8)
    bad = httpx.Response(422, json={"detail": [{"loc": ["body"], "msg": "Bad request"}]})
    script = Script(bad, httpx.Response(401, json={"detail": "Invalid API key"}))
    with client(script) as vital:
        report = post_chunk(vital, chunk, wait_for_completion=True)
    assert len(script.requests) == 2  # the 422, then the first half's 401; not the second half
    assert isinstance(report.fatal, VitalAuthError)
    assert sorted(o.line for o in report.outcomes) == [r.line for r in chunk.rows]
    assert {o.outcome for o in report.outcomes} == {Outcome.ERRORED}
    assert (
        sum(o.detail.startswith("not sent: Vital rejected the API key") for o in report.outcomes)
        == 4
    )


# --- bulk ops ---------------------------------------------------------------------------------


def test_list_bulk_ops_retries_and_pages() -> None:
    pages = {
        None: {"data": [{"status": "success", "provider": "oura"}], "next_cursor": "2"},
        "2": {"data": [{"status": "in_progress", "provider": "oura"}], "next_cursor": None},
    }

    def page(request: httpx.Request) -> httpx.Response:
        assert request.url.params["page_size"] == "50"
        return httpx.Response(200, json=pages[request.url.params.get("next_cursor")])

    script = Script(httpx.Response(503), page)
    with client(script) as vital:
        ops = list_bulk_ops(vital)
    assert [op.status for op in ops] == ["success", "in_progress"]
    assert len(script.requests) == 3
    assert vital.stats.retries == 1


def test_list_bulk_ops_stops_paging_at_ops_older_than_since() -> None:
    def page(request: httpx.Request) -> httpx.Response:
        cursor = int(request.url.params.get("next_cursor", "0"))
        started = datetime(2026, 1, 1, 12, 0, tzinfo=UTC) - timedelta(minutes=cursor)
        op = {"status": "success", "provider": "oura", "started_at": started.isoformat()}
        return httpx.Response(200, json={"data": [op], "next_cursor": str(cursor + 1)})

    script = Script(page)
    with client(script) as vital:
        ops = list_bulk_ops(vital, since=datetime(2026, 1, 1, 11, 58, 30, tzinfo=UTC))
        assert len(ops) == 3  # 12:00, 11:59, then 11:58 is older: stop
        assert len(list_bulk_ops(vital, max_pages=5)) == 5


def test_list_bulk_ops_in_an_unknown_shape_is_a_vital_error() -> None:
    with (
        client(Script(httpx.Response(200, json={"data": "nope"}))) as vital,
        pytest.raises(VitalProtocolError),
    ):
        list_bulk_ops(vital)
    with (
        client(Script(httpx.Response(403, json={"detail": API_KEY}))) as vital,
        pytest.raises(VitalAuthError) as caught,
    ):
        list_bulk_ops(vital)
    assert API_KEY not in str(caught.value)
