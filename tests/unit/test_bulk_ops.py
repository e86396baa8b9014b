"""wait_for_bulk_ops: which ops belong to a run, how long it polls, what a failure leaves.

Vital is an ``httpx.MockTransport``; the clock and the sleep are fakes, so nothing really
sleeps: each fake sleep moves the fake clock on by what it was asked to wait.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from bulk_import.config import Settings
from bulk_import.observability import logger
from bulk_import.vital import BULK_OP_POLL_SECONDS, VitalClient, wait_for_bulk_ops
from tests.fakes import FakeTime

BASE = "http://vital.test"
SINCE = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


class BulkOpList:
    """Answers ``GET /v2/link/bulk_op`` with one page per poll (the last one repeats)."""

    def __init__(self, *polls: list[dict[str, Any]] | httpx.Response) -> None:
        self.polls = list(polls)
        self.requests = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v2/link/bulk_op"
        self.requests += 1
        poll = self.polls.pop(0) if len(self.polls) > 1 else self.polls[0]
        if isinstance(poll, httpx.Response):
            return poll
        return httpx.Response(200, json={"data": poll, "next_cursor": None})


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def op(provider: str, status: str, started: timedelta = timedelta(0)) -> dict[str, Any]:
    return {"provider": provider, "status": status, "started_at": (SINCE + started).isoformat()}


@pytest.fixture
def fake_time() -> FakeTime:
    return FakeTime()


@pytest.fixture
def log_lines() -> Iterator[_Lines]:
    capture = _Lines()
    logger.addHandler(capture)
    try:
        yield capture
    finally:
        logger.removeHandler(capture)


def wait(
    vital: BulkOpList, fake_time: FakeTime, *, providers: set[str], deadline: float = 60.0
) -> list[tuple[str | None, str]]:
    settings = Settings.model_validate({"VITAL_API_KEY_SECRET": "x", "VITAL_API_BASE_URL": BASE})
    with VitalClient(
        settings, "sk_unit_KEY_0123456789", lambda: 900.0, httpx.MockTransport(vital)
    ) as client:
        ops = wait_for_bulk_ops(
            client,
            providers,
            SINCE,
            deadline,
            clock=fake_time.clock,
            sleep=fake_time.sleep,
        )
    return [(o.provider, o.status) for o in ops]


def test_ops_of_other_providers_or_started_before_since_are_ignored(fake_time: FakeTime) -> None:
    # Given: Vital lists ops of the run's providers, another provider's, and older ones
    vital = BulkOpList(
        [
            op("oura", "success", timedelta(seconds=30)),
            op("fitbit", "failure"),  # exactly at since: the run's
            op("garmin", "in_progress", timedelta(seconds=10)),  # not a provider of the run
            op("oura", "in_progress", -timedelta(seconds=1)),  # started before since
            {"provider": "oura", "status": "in_progress"},  # no start time: not matched
        ]
    )
    # When: the run waits for the ops of oura and fitbit
    ops = wait(vital, fake_time, providers={"oura", "fitbit"})
    # Then: only its own ops come back, and the others' being in progress makes it not wait
    assert ops == [("oura", "success"), ("fitbit", "failure")]
    assert vital.requests == 1
    assert fake_time.sleeps == []


def test_it_polls_until_no_op_is_in_progress(fake_time: FakeTime) -> None:
    # Given: the run's op is in progress for two polls, then done
    vital = BulkOpList(
        [op("oura", "in_progress")],
        [op("oura", "in_progress")],
        [op("oura", "success"), op("oura", "aborted", timedelta(seconds=1))],
    )
    # When
    ops = wait(vital, fake_time, providers={"oura"})
    # Then: three polls, one poll interval apart, and the final states
    assert ops == [("oura", "success"), ("oura", "aborted")]
    assert vital.requests == 3
    assert fake_time.sleeps == [BULK_OP_POLL_SECONDS, BULK_OP_POLL_SECONDS]


def test_it_stops_at_the_deadline_without_sleeping_past_it(fake_time: FakeTime) -> None:
    # Given: an op that stays in progress, and a deadline 5 s away (not a multiple of the poll)
    vital = BulkOpList([op("oura", "in_progress")])
    # When
    ops = wait(vital, fake_time, providers={"oura"}, deadline=5.0)
    # Then: the last sleep is cut to the deadline, and the op is returned as it last was
    assert fake_time.sleeps == [2.0, 2.0, 1.0]
    assert fake_time.now == 5.0
    assert vital.requests == 4
    assert ops == [("oura", "in_progress")]


def test_a_deadline_already_passed_polls_once_and_never_sleeps(fake_time: FakeTime) -> None:
    # Given: no time left at all
    fake_time.now = 10.0
    vital = BulkOpList([op("oura", "in_progress")])
    # When
    ops = wait(vital, fake_time, providers={"oura"}, deadline=5.0)
    # Then
    assert ops == [("oura", "in_progress")]
    assert vital.requests == 1
    assert fake_time.sleeps == []


def test_a_failed_listing_returns_what_it_had_and_logs_a_warning(
    fake_time: FakeTime, log_lines: _Lines
) -> None:
    # Given: one listing with the run's op in progress, then Vital refuses the key
    vital = BulkOpList(
        [op("oura", "in_progress")], httpx.Response(403, json={"detail": "Invalid API key"})
    )
    # When
    ops = wait(vital, fake_time, providers={"oura"})
    # Then: the ops of the last listing, and a warning that names the error's type only
    assert ops == [("oura", "in_progress")]
    assert vital.requests == 2
    assert fake_time.sleeps == [BULK_OP_POLL_SECONDS]
    [warning] = [r for r in log_lines.records if r.getMessage() == "could not list bulk ops"]
    assert warning.levelno == logging.WARNING
    assert warning.__dict__["error"] == "VitalAuthError"


def test_a_failed_first_listing_returns_nothing(fake_time: FakeTime, log_lines: _Lines) -> None:
    # Given: Vital's list is not in the documented shape
    vital = BulkOpList(httpx.Response(200, json={"data": "nope"}))
    # When
    ops = wait(vital, fake_time, providers={"oura"})
    # Then
    assert ops == []
    assert fake_time.sleeps == []
    assert [r.__dict__.get("error") for r in log_lines.records] == ["VitalProtocolError"]
