"""Why a file stops: the failure threshold, a refusal, a bug, and which error the file ends with."""

from __future__ import annotations

import pytest

from bulk_import.errors import (
    ImportAborted,
    InternalError,
    MalformedFile,
    VitalAuthError,
    VitalClientError,
)
from bulk_import.model import Outcome
from bulk_import.run.stop import Stop, too_many_rejected
from bulk_import.run.tally import Tally


def tally(**rows: int) -> Tally:
    """Rows per outcome name, e.g. ``tally(imported=90, failed=10)``, all for one provider."""
    t = Tally()
    for name, n in rows.items():
        t.add_same("oura", Outcome(name), n)
    return t


# --- the failure threshold ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answered", "stopped"),
    [
        # 99 rows answered: too few to judge, however many went bad
        ({"failed": 99}, False),
        ({"imported": 89, "failed": 10}, False),  # 10.1 %, over the threshold
        # The 100th answered row ends the warm-up, whatever its outcome
        ({"failed": 100}, True),
        ({"imported": 89, "failed": 11}, True),  # 11 %
        ({"enqueued": 89, "errored": 11}, True),
    ],
)
def test_given_a_ten_percent_threshold_then_it_is_judged_from_the_hundredth_row_answered(
    answered: dict[str, int], stopped: bool
) -> None:
    stop = Stop()
    stop.check_threshold(tally(**answered), in_doubt=0, threshold=10)
    assert stop.stopped is stopped


def test_given_fewer_rows_than_the_warm_up_when_all_failed_then_the_file_goes_on() -> None:
    stop = Stop()
    stop.check_threshold(tally(failed=99), in_doubt=0, threshold=10)
    assert not stop.stopped
    assert stop.reason is None


def test_given_the_warm_up_reached_when_more_than_the_threshold_failed_then_it_stops() -> None:
    stop = Stop()
    stop.check_threshold(tally(imported=89, failed=6, errored=5), in_doubt=0, threshold=10)
    assert stop.stopped
    assert isinstance(stop.reason, ImportAborted)
    assert "11 of 100 posted rows" in str(stop.reason)
    assert "FAILURE_THRESHOLD_PERCENT=10%" in str(stop.reason)
    # Sending stops; the file's error is decided once posting is over
    assert stop.error is None


def test_given_exactly_the_threshold_failed_then_the_file_goes_on() -> None:
    stop = Stop()
    stop.check_threshold(tally(imported=90, failed=10), in_doubt=0, threshold=10)
    assert not stop.stopped


def test_given_enqueued_rows_then_they_count_as_posted_and_good() -> None:
    stop = Stop()
    stop.check_threshold(tally(enqueued=80, failed=20), in_doubt=0, threshold=25)
    assert not stop.stopped
    stop.check_threshold(tally(enqueued=70, failed=30), in_doubt=0, threshold=25)
    assert stop.stopped


def test_given_rows_in_doubt_then_they_are_left_out_of_the_warm_up_and_the_share() -> None:
    stop = Stop()
    # 150 errored rows, all of them in doubt after a crash: Vital answered for 60 rows only
    stop.check_threshold(tally(imported=60, errored=150), in_doubt=150, threshold=0)
    assert not stop.stopped
    # 100 answered, 5 of them errored by Vital, 200 in doubt: 5 % of what Vital answered
    stop.check_threshold(tally(imported=95, errored=205), in_doubt=200, threshold=5)
    assert not stop.stopped
    stop.check_threshold(tally(imported=95, errored=206), in_doubt=200, threshold=5)
    assert stop.stopped
    assert "6 of 101 posted rows" in str(stop.reason)


def test_given_a_threshold_of_a_hundred_percent_then_nothing_ever_stops_the_file() -> None:
    stop = Stop()
    stop.check_threshold(tally(failed=10_000), in_doubt=0, threshold=100)
    assert not stop.stopped


def test_given_a_threshold_of_zero_then_the_first_bad_row_after_the_warm_up_stops() -> None:
    stop = Stop()
    stop.check_threshold(tally(imported=100), in_doubt=0, threshold=0)
    assert not stop.stopped
    stop.check_threshold(tally(imported=100, failed=1), in_doubt=0, threshold=0)
    assert stop.stopped


def test_given_a_fractional_threshold_then_the_message_names_it_as_set() -> None:
    stop = Stop()
    stop.check_threshold(tally(imported=196, failed=4), in_doubt=0, threshold=1.5)
    assert "FAILURE_THRESHOLD_PERCENT=1.5%" in str(stop.reason)


def test_given_a_stop_already_when_the_threshold_passes_then_the_first_reason_stays() -> None:
    stop = Stop()
    first = ImportAborted("first")
    stop.stop(first)
    stop.check_threshold(tally(failed=500), in_doubt=0, threshold=1)
    assert stop.reason is first


# --- refusals ---------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [401, 403])
def test_given_an_auth_refusal_then_the_file_stops_with_its_message(status: int) -> None:
    stop = Stop()
    stop.refused(VitalAuthError("Vital rejected the API key", status))
    assert isinstance(stop.reason, ImportAborted)
    assert str(stop.reason) == "Vital rejected the API key"
    assert stop.error is None


def test_given_a_413_on_the_first_request_then_the_message_says_to_send_smaller_bodies() -> None:
    stop = Stop()
    stop.refused(VitalClientError("HTTP 413 payload too large", 413))
    message = str(stop.reason)
    assert isinstance(stop.reason, ImportAborted)
    assert "HTTP 413 payload too large" in message
    assert "MAX_BODY_BYTES" in message
    assert "CHUNK_SIZE" in message
    assert "VITAL_API_BASE_URL" not in message


@pytest.mark.parametrize("status", [400, 404, 405, None])
def test_given_another_client_error_then_the_message_points_at_the_setup(
    status: int | None,
) -> None:
    stop = Stop()
    stop.refused(VitalClientError("HTTP 404 not found", status))
    message = str(stop.reason)
    assert isinstance(stop.reason, ImportAborted)
    assert "VITAL_API_BASE_URL" in message
    assert "VITAL_TEAM_ID" in message
    assert "Link Migration" in message
    assert "MAX_BODY_BYTES" not in message


# --- errors -----------------------------------------------------------------------------------


def test_given_two_bugs_then_the_first_internal_error_is_kept() -> None:
    stop = Stop()
    stop.internal_error("posting failed", KeyError("x"))
    first = stop.error
    stop.internal_error("recording failed", ValueError("y"))
    assert stop.error is first
    assert isinstance(first, InternalError)
    assert "KeyError" in str(first)
    assert stop.reason is first


def test_given_a_bug_then_its_message_never_carries_the_exception_text() -> None:
    stop = Stop()
    stop.internal_error("oops", ValueError("access_token=tok-AT-000001-secret"))
    assert "tok-AT" not in str(stop.error)
    assert "see the function's logs" in str(stop.error)


def test_given_a_file_error_first_when_a_bug_follows_then_the_file_error_stays() -> None:
    stop = Stop()
    broken = MalformedFile("line 3: not JSON")
    stop.fail(broken)
    stop.internal_error("later", RuntimeError("z"))
    assert stop.error is broken
    assert stop.reason is broken


def test_given_a_stop_reason_when_a_file_error_follows_then_the_error_is_set_the_reason_kept() -> (
    None
):
    stop = Stop()
    reason = ImportAborted("threshold")
    stop.stop(reason)
    broken = MalformedFile("line 9")
    stop.fail(broken)
    assert stop.error is broken
    assert stop.reason is reason


def test_given_a_stop_reason_and_no_error_when_posting_ends_then_the_reason_is_the_error() -> None:
    stop = Stop()
    stop.refused(VitalAuthError("key rejected", 401))
    stop.settle_error()
    assert stop.error is stop.reason


def test_given_an_error_already_when_posting_ends_then_it_stays() -> None:
    stop = Stop()
    broken = MalformedFile("line 3")
    stop.fail(broken)
    stop.stop(ImportAborted("later"))
    stop.settle_error()
    assert stop.error is broken


def test_given_no_stop_when_posting_ends_then_there_is_no_error() -> None:
    stop = Stop()
    stop.settle_error()
    assert stop.error is None
    assert not stop.stopped


def test_not_sent_names_the_reason() -> None:
    stop = Stop()
    stop.stop(ImportAborted("the API key was rejected"))
    assert stop.not_sent() == "not sent: the API key was rejected"


# --- the rejection threshold ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("rejected", "rows", "after_rows", "percent", "stops"),
    [
        (999, 999, 1000, 50, False),  # not yet a thousand rows
        (1000, 1000, 1000, 50, True),
        (4096, 4096, 1000, 50, True),  # read in blocks: all of more than the thousand
        (4095, 4096, 1000, 50, False),  # one row taken: the first rows were not all rejected
        (5000, 5000, 0, 50, False),  # 0: off (and under 10,000 rows, no share is judged)
        (9999, 10_000, 0, 50, True),  # the share, from 10,000 rows on
        (5000, 10_000, 1000, 50, False),  # half is not more than half
        (5001, 10_000, 1000, 50, True),
        (6000, 9999, 1000, 50, False),  # the share is judged from 10,000 rows on only
        (10_000, 10_000, 0, 100, False),  # both off
    ],
)
def test_rejection_threshold(
    rejected: int, rows: int, after_rows: int, percent: float, stops: bool
) -> None:
    assert (too_many_rejected(rejected, rows, after_rows, percent) is not None) is stops


def test_rejection_threshold_says_why_and_what_to_do() -> None:
    first = too_many_rejected(1000, 1000, 1000, 50)
    share = too_many_rejected(6000, 10_000, 0, 50)

    assert isinstance(first, ImportAborted)
    assert str(first) == (
        "1,000 of the first 1,000 rows were rejected (REJECTED_STOP_AFTER_ROWS=1000): "
        "this does not look like a connection file; see outcomes.csv for the reasons"
    )
    assert isinstance(share, ImportAborted)
    assert str(share) == (
        "6,000 of the first 10,000 rows were rejected, more than REJECTED_STOP_PERCENT=50%: "
        "this does not look like a connection file; see outcomes.csv for the reasons"
    )
