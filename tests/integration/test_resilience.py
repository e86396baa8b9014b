"""Vital misbehaving, through the whole stack: faults injected by the stand-in, real sockets.

Every test asserts on the stand-in's record of requests and on manifest + outcomes, and checks
the same invariants: the counts add up with one outcome per line, no row reached Vital twice,
every row Vital accepted is reported as such, and no token appears in anything written.
"""

from __future__ import annotations

import errno
import gzip
import json
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import pytest
import stamina
from botocore.exceptions import ClientError
from pydantic_core import to_json

from bulk_import.errors import TransientError
from bulk_import.model import Checkpoint
from bulk_import.storage import aws
from bulk_import.storage.checkpoint_store import CheckpointStore
from bulk_import.storage.results import ResultWriter
from bulk_import.storage.spool import OutcomeSpool, RetrySpool, Spool, outcomes_header
from bulk_import.vital import ChunkReport, post_chunk
from bulk_import.vital.settle import LOST_CONFIRMED_DETAIL
from bulk_import.wiring import Tunables
from local.events import s3_event
from local.standin import DEFAULT_API_KEY
from tests.helpers import (
    access_token,
    encode_rows,
    failing_at,
    make_row,
    refresh_token,
    user_id,
)
from tests.integration.conftest import Stack

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

ACCEPTED = {"imported", "failed", "enqueued"}


@pytest.fixture
def no_waits() -> Iterator[None]:
    """Retries without sleeping (for tests where the waits are not the point): 4 attempts."""
    with stamina.set_testing(True, attempts=4):
        yield


def put_rows(
    stack: Stack,
    key: str,
    count: int,
    provider: str = "oura",
    unknown: frozenset[int] = frozenset(),
) -> list[dict[str, Any]]:
    """``count`` rows in a JSONL file; Vital knows every user but those at index ``unknown``."""
    rows = [make_row(n, provider=provider) for n in range(count)]
    stack.vital.add_known_users(*(r["user_id"] for n, r in enumerate(rows) if n not in unknown))
    stack.put(key, encode_rows(rows, "jsonl"))
    return rows


def run(stack: Stack, key: str, **kwargs: Any) -> tuple[dict[str, Any], list[dict[str, str]]]:
    stack.import_keys(key, **kwargs)
    prefix = "results/" + key.removeprefix("incoming/") + "/"
    return stack.manifest(prefix), stack.outcomes(prefix)


def check_invariants(
    stack: Stack, manifest: dict[str, Any], outcomes: list[dict[str, str]], rows: int
) -> dict[int, dict[str, str]]:
    """The invariants every fault must keep; returns the outcomes by line (JSONL: 1-based)."""
    counts = manifest["counts"]
    assert counts["rows"] == rows
    assert counts["rows"] == sum(v for k, v in counts.items() if k != "rows")
    assert len(outcomes) == counts["rows"]
    by_line = {int(o["line"]): o for o in outcomes}
    assert sorted(by_line) == list(range(1, rows + 1)), "exactly one outcome per line"
    tally = Counter(o["outcome"] for o in outcomes)
    for outcome, field in (
        ("imported", "imported"),
        ("failed", "failed"),
        ("enqueued", "enqueued"),
        ("rejected", "rejected"),
        ("errored", "errored"),
    ):
        assert tally[outcome] == counts[field], outcome
    # No row reached Vital twice, whether or not its answer came back; each row reported as
    # accepted reached it exactly once.
    everything = stack.vital.posted_connections(include_undelivered=True)
    assert len(everything) == len(set(everything)), "a row reached Vital twice"
    accepted = Counter((o["provider"], o["user_id"]) for o in outcomes if o["outcome"] in ACCEPTED)
    assert set(accepted) <= set(everything), "a row reported accepted never reached Vital"
    # Each row whose answer came back is reported as Vital answered.
    delivered = stack.vital.posted_connections(include_undelivered=False)
    assert set(delivered) <= set(accepted), "a row Vital answered for is reported otherwise"
    # And nothing Vital accepted is reported as not sent.
    by_pair = {(o["provider"], o["user_id"]): o for o in outcomes}
    for pair in everything:
        assert by_pair[pair]["outcome"] in ACCEPTED | {"errored"}
    # Never a token or the API key in anything written: results, logs, metrics.
    written = stack.everything_written()
    assert "outcomes" in written
    for n in range(rows):
        assert access_token(n) not in written
        assert refresh_token(n) not in written
    assert DEFAULT_API_KEY not in written
    assert stack.vital.api_key not in written
    return by_line


def emitted_metrics(stack: Stack) -> Counter[str]:
    """Sum of each EMF metric Powertools printed (one JSON document per line)."""
    totals: Counter[str] = Counter()
    for output in stack.stdout:
        for line in output.splitlines():
            if not line.startswith("{"):
                continue
            document = json.loads(line)
            for directive in document.get("_aws", {}).get("CloudWatchMetrics", []):
                for metric in directive["Metrics"]:
                    value = document[metric["Name"]]
                    totals[metric["Name"]] += sum(value) if isinstance(value, list) else value
    return totals


# --- transient failures -----------------------------------------------------------------------


@pytest.mark.usefixtures("no_waits")
def test_503_on_the_first_attempts_then_success(stack: Stack) -> None:
    rows = put_rows(stack, "incoming/flaky.jsonl", 25)
    stack.vital.status_script = [503, 503]

    manifest, outcomes = run(stack, "incoming/flaky.jsonl")

    requests = stack.vital.bulk_import_requests()
    assert [r.status for r in requests[:3]] == [503, 503, 200]
    assert [r.status for r in requests[3:]] == [200, 200]
    # The probe chunk was sent three times with the same rows; the others once.
    assert requests[0].user_ids == requests[1].user_ids == requests[2].user_ids
    assert requests[0].user_ids == [r["user_id"] for r in rows[:10]]
    assert manifest["status"] == "succeeded"
    assert manifest["counts"]["imported"] == 25
    probe = manifest["chunks"][0]
    assert (probe["first_line"], probe["http_status"], probe["attempts"]) == (1, 200, 3)
    check_invariants(stack, manifest, outcomes, 25)
    metrics = emitted_metrics(stack)
    assert metrics["ServerErrors"] == 2
    assert metrics["Retries"] == 2


def test_429_every_third_request_waits_out_retry_after(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAX_CONCURRENCY", "2")
    put_rows(stack, "incoming/throttled.jsonl", 40)
    stack.vital.throttle_every = 3
    stack.vital.retry_after = "1"

    manifest, outcomes = run(stack, "incoming/throttled.jsonl")

    requests = stack.vital.bulk_import_requests()
    throttled = [r for r in requests if r.status == 429]
    assert throttled
    assert all(r.seq % 3 == 0 for r in throttled)
    for refused in throttled:
        # The same rows came back no sooner than Retry-After said.
        retry = next(r for r in requests if r.seq > refused.seq and r.user_ids == refused.user_ids)
        assert retry.timestamp - refused.timestamp >= 1.0
    assert manifest["status"] == "succeeded"
    assert manifest["counts"]["imported"] == 40
    assert sum(c["attempts"] for c in manifest["chunks"]) == len(requests)
    check_invariants(stack, manifest, outcomes, 40)
    metrics = emitted_metrics(stack)
    assert metrics["Throttles"] == len(throttled) >= 1
    assert metrics["Retries"] == len(throttled)
    assert metrics["RetryWaitSeconds"] == pytest.approx(len(throttled) * 1.0)


@pytest.mark.usefixtures("no_waits")
@pytest.mark.parametrize("reset", [False, True], ids=["closed", "reset"])
def test_a_dropped_connection_is_settled_by_lookup_then_the_chunk_sent_once_more(
    stack: Stack, reset: bool
) -> None:
    """Vital never took the chunk (the connection dropped on arrival): it lists none of its
    users and has no bulk op of it, so the chunk is sent again, once."""
    put_rows(stack, "incoming/dropped.jsonl", 30)
    stack.vital.drop_with_reset = reset
    stack.vital.drop_script = [True, False, True]

    manifest, outcomes = run(stack, "incoming/dropped.jsonl")

    requests = stack.vital.bulk_import_requests()
    assert [r.dropped for r in requests] == [True, False, True, False, False]
    assert [r.status for r in requests] == [0, 200, 0, 200, 200]
    answered = [tuple(r.user_ids) for r in requests if r.status == 200]
    assert len(set(answered)) == 3
    assert all(tuple(r.user_ids) in answered for r in requests if r.dropped)
    assert manifest["status"] == "succeeded"
    assert manifest["counts"]["imported"] == 30
    assert sorted((c["http_status"] or 0, c["attempts"]) for c in manifest["chunks"]) == [
        (0, 1),
        (0, 1),
        (200, 1),
        (200, 1),
        (200, 1),
    ]
    lookups = [r for r in stack.vital.recorded() if r.path.startswith("/v2/user/providers/")]
    assert len(lookups) == 20  # each user of the two chunks whose answer was lost
    assert {o["detail"] for o in outcomes} == {""}
    check_invariants(stack, manifest, outcomes, 30)


@pytest.mark.usefixtures("no_waits")
@pytest.mark.parametrize("reset", [False, True], ids=["closed", "reset"])
def test_an_answer_lost_after_vital_took_the_chunk_is_confirmed_by_lookup_not_resent(
    stack: Stack, reset: bool
) -> None:
    """Vital keeps the chunk, the answer is lost: each user is looked up and found connected;
    nothing is sent twice, and users Vital could not import are still ``failed``."""
    put_rows(stack, "incoming/lost.jsonl", 30, unknown=frozenset({4, 25}))
    stack.vital.drop_with_reset = reset
    stack.vital.lose_answer_script = [True, False, True]

    manifest, outcomes = run(stack, "incoming/lost.jsonl")

    requests = stack.vital.bulk_import_requests()
    assert len(requests) == 3, "no chunk sent twice"
    assert [r.answer_lost for r in requests] == [True, False, True]
    assert manifest["status"] == "partial"  # two rows failed
    counts = manifest["counts"]
    assert (counts["imported"], counts["failed"], counts["errored"]) == (28, 2, 0)
    lost_users = {u for r in requests if r.answer_lost for u in r.user_ids}
    assert len(lost_users) == 20
    for o in outcomes:
        unknown = int(o["line"]) - 1 in {4, 25}  # JSONL lines are 1-based
        assert o["outcome"] == ("failed" if unknown else "imported")
        confirmed = not unknown and o["user_id"] in lost_users
        assert (o["detail"] == LOST_CONFIRMED_DETAIL) == confirmed
    check_invariants(stack, manifest, outcomes, 30)
    assert emitted_metrics(stack)["AnswersLost"] == 2


@pytest.mark.usefixtures("no_waits")
def test_a_read_timeout_after_vital_took_the_chunk_is_confirmed_by_lookup(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Vital processed the slow request after the client had gone, as the real API would: the
    lookup finds the users connected, and the chunk is sent once."""
    monkeypatch.setenv("HTTP_TIMEOUT_SECONDS", "0.3")
    put_rows(stack, "incoming/slow.jsonl", 8)
    stack.vital.latency_seconds = 1.0

    manifest, outcomes = run(stack, "incoming/slow.jsonl")

    (only,) = stack.vital.bulk_import_requests()
    assert only.status == 200
    assert manifest["status"] == "succeeded"
    assert [(c["http_status"], c["attempts"]) for c in manifest["chunks"]] == [(None, 1)]
    assert {o["detail"] for o in outcomes} == {LOST_CONFIRMED_DETAIL}
    check_invariants(stack, manifest, outcomes, 8)


@pytest.mark.usefixtures("no_waits")
def test_retries_exhausted_leave_the_rows_errored_with_the_last_cause(stack: Stack) -> None:
    put_rows(stack, "incoming/down.jsonl", 25)
    stack.vital.status_script = [503] * 11 + [429]

    manifest, outcomes = run(stack, "incoming/down.jsonl")

    requests = stack.vital.bulk_import_requests()
    assert len(requests) == 12  # 3 chunks x 4 attempts
    assert Counter(r.status for r in requests) == {503: 11, 429: 1}
    assert stack.vital.posted_connections() == []
    assert manifest["status"] == "partial"
    assert manifest["error"] is None
    assert manifest["counts"]["errored"] == 25
    details = Counter(o["detail"] for o in outcomes)
    assert set(details) <= {
        "gave up after 4 attempt(s): HTTP 503",
        "gave up after 4 attempt(s): HTTP 429",
    }
    assert details["gave up after 4 attempt(s): HTTP 429"] in (5, 10)  # the last chunk to fail
    assert [c["attempts"] for c in manifest["chunks"]] == [4, 4, 4]
    check_invariants(stack, manifest, outcomes, 25)
    metrics = emitted_metrics(stack)
    assert (metrics["ServerErrors"], metrics["Throttles"]) == (11, 1)
    assert metrics["Retries"] == 9


@pytest.mark.usefixtures("no_waits")
def test_circuit_breaker_stops_hammering_a_vital_that_is_down(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAX_CONCURRENCY", "1")
    put_rows(stack, "incoming/outage.jsonl", 60)
    stack.vital.status_script = [503] * 1000

    manifest, outcomes = run(stack, "incoming/outage.jsonl")

    # Three chunks fail for good (4 attempts each), then the breaker opens: nothing more is sent.
    assert len(stack.vital.bulk_import_requests()) == 12
    assert manifest["status"] == "partial"
    assert manifest["counts"]["errored"] == 60
    by_line = check_invariants(stack, manifest, outcomes, 60)
    assert by_line[30]["detail"] == "gave up after 4 attempt(s): HTTP 503"
    assert by_line[31]["detail"] == "not sent: Vital kept failing (circuit breaker open)"
    assert by_line[60]["detail"] == by_line[31]["detail"]
    assert [c["attempts"] for c in manifest["chunks"]] == [4, 4, 4, 0, 0, 0]


# 2.5 s a request is slow enough for a record each while S3 (moto) stores one in under 125 ms,
# as it does on a loaded machine: run/handoff.py asks for 20 times a record's write.
@pytest.mark.parametrize(
    ("latency", "sent"), [(0.2, {2}), (2.5, {2, 3})], ids=["queued", "none-queued"]
)
def test_a_chunk_still_queued_when_the_file_fails_is_not_sent(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, latency: float, sent: set[int]
) -> None:
    # One posting thread: with requests of 0.2 s, one chunk is sent while the next waits in its
    # queue; with 2.5 s, none waits (a hand-off record each: run/handoff.py), so reading waits
    # for each answer. The gzip stream is cut at 60 %: the reader finds that out past line
    # ~3,500, where its data ends.
    monkeypatch.setenv("MAX_CONCURRENCY", "1")
    monkeypatch.setenv("CHUNK_SIZE", "1000")
    rows = [make_row(n) for n in range(6000)]
    stack.vital.add_known_users(*(r["user_id"] for r in rows))
    packed = gzip.compress(encode_rows(rows, "jsonl"))
    stack.put("incoming/cut.jsonl.gz", packed[: len(packed) * 6 // 10])
    stack.vital.latency_seconds = latency  # each chunk in flight that long; reading takes ms

    manifest, outcomes = run(stack, "incoming/cut.jsonl.gz")

    assert manifest["status"] == "failed"
    assert manifest["error"]["type"] == "MalformedFile"
    # Queued: chunks 1 and 2 were sent, and chunk 3 (lines 2001-3000) waited behind chunk 2
    # when the file failed: it comes back unsent, as do the rows read after it. None queued:
    # chunk 3 was handed over once chunk 2 was answered; it went out, unless the reader found
    # the file's end (~500 lines on) before its posting thread started it: the gate then held
    # it back, as a stopped run's chunk.
    pipelined = any("one per posting queue of chunks" in line for line in stack.log_lines)
    assert pipelined is (latency < 1)
    requests = stack.vital.bulk_import_requests()
    posted = len(requests)
    assert posted in sent
    assert [r.user_ids[0] for r in requests] == [user_id(n * 1000) for n in range(posted)]
    read = manifest["counts"]["rows"]
    assert read > 3000
    by_line = check_invariants(stack, manifest, outcomes, read)
    assert {by_line[n]["outcome"] for n in range(1, posted * 1000 + 1)} == {"imported"}
    unsent = {by_line[n]["detail"] for n in range(posted * 1000 + 1, read + 1)}
    assert len(unsent) == 1
    assert unsent.pop().startswith("not sent: gzip data is corrupt or truncated")


# --- bugs in the function's own bookkeeping ---------------------------------------------------


def posting_with_report(
    first_line: int, doctor: Callable[[ChunkReport], ChunkReport]
) -> Callable[..., ChunkReport]:
    """``post_chunk``, except that the report for the chunk starting at ``first_line`` (sent to
    Vital as usual) is ``doctor``-ed: a stand-in for a bug in the run's own bookkeeping."""

    def posting(client: Any, chunk: Any, *args: Any, **kwargs: Any) -> ChunkReport:
        report = post_chunk(client, chunk, *args, **kwargs)
        return doctor(report) if chunk.first_line == first_line else report

    return posting


def _one_outcome_per_line(
    manifest: dict[str, Any], outcomes: list[dict[str, str]], rows: int
) -> None:
    counts = manifest["counts"]
    assert counts["rows"] == rows == len(outcomes)
    assert counts["rows"] == sum(v for k, v in counts.items() if k != "rows")
    assert sorted(int(o["line"]) for o in outcomes) == list(range(1, rows + 1))
    tally = Counter(o["outcome"] for o in outcomes)
    assert tally["imported"] == counts["imported"]
    assert tally["errored"] == counts["errored"]


def test_a_bug_recording_a_chunks_answer_leaves_its_rows_in_doubt_not_lost(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A bug while recording the answer to a chunk that was sent (here: its chunk records are
    # not a list, so extending the chunk table raises before any outcome is written): its
    # rows still get an outcome, and never one that says Vital took them.
    monkeypatch.setenv("CHUNK_SIZE", "100")
    monkeypatch.setenv("MAX_CONCURRENCY", "1")
    put_rows(stack, "incoming/absorb-bug.jsonl", 500)
    no_records = posting_with_report(201, lambda r: replace(r, records=None))

    manifest, outcomes = run(stack, "incoming/absorb-bug.jsonl", post_chunk=no_records)

    assert manifest["status"] == "failed"
    assert manifest["error"]["type"] == "InternalError"
    _one_outcome_per_line(manifest, outcomes, 500)
    by_line = {int(o["line"]): o for o in outcomes}
    assert {by_line[n]["outcome"] for n in range(1, 201)} == {"imported"}
    # Sent, and Vital may have taken it: in doubt, in retry.jsonl; never reported imported.
    assert {by_line[n]["detail"] for n in range(201, 301)} == {
        "in doubt: the function failed while recording Vital's answer to this chunk; "
        "see retry.jsonl"
    }
    # The file stops there: what was not on its way to Vital yet is not sent.
    assert manifest["counts"]["errored"] >= 200
    retry = stack.get(manifest["retry_key"]).decode().splitlines()
    assert len(retry) == manifest["counts"]["errored"]
    assert any("unexpected error recording a chunk's answer" in line for line in stack.log_lines)


def test_a_bug_after_a_chunks_outcomes_were_written_does_not_write_them_twice(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Vital fails one row of the third chunk (line 250), so its answer comes row by row. The
    # report's chunk has lost that row (a bug in the run's own bookkeeping): taking the answer
    # in writes and counts every row's outcome, then raises looking for line 250's retry line.
    # Only that step fails: the answer is no refusal, so the posting threads go on as usual.
    monkeypatch.setenv("CHUNK_SIZE", "100")
    rows = [make_row(n) for n in range(500)]
    stack.vital.add_known_users(*(r["user_id"] for n, r in enumerate(rows) if n != 249))
    stack.put("incoming/retry-line-bug.jsonl", encode_rows(rows, "jsonl"))

    def lose_row_250(report: ChunkReport) -> ChunkReport:
        return replace(
            report, chunk=report.chunk.subset(r for r in report.chunk.rows if r.line != 250)
        )

    buggy = posting_with_report(201, lose_row_250)

    manifest, outcomes = run(stack, "incoming/retry-line-bug.jsonl", post_chunk=buggy)

    assert manifest["status"] == "failed"
    assert manifest["error"]["type"] == "InternalError"
    assert any("unexpected error recording a chunk's answer" in line for line in stack.log_lines)
    # One outcome per line: the third chunk's were written once, as Vital gave them, and not
    # again as "in doubt"
    _one_outcome_per_line(manifest, outcomes, 500)
    by_line = {int(o["line"]): o for o in outcomes}
    assert {by_line[n]["outcome"] for n in range(1, 301) if n != 250} == {"imported"}
    assert by_line[250]["outcome"] == "failed"
    assert manifest["counts"]["failed"] == 1
    # Whatever the posting threads had started by then was answered; nothing else was sent
    sent = Counter(stack.vital.posted_connections())
    assert set(sent.values()) == {1}
    assert {by_line[n]["outcome"] for n in range(301, 501)} <= {"imported", "errored"}
    assert all(
        by_line[n]["detail"].startswith("not sent: internal error (KeyError)")
        for n in range(301, 501)
        if by_line[n]["outcome"] == "errored"
    )


def test_an_error_saving_the_lease_reports_the_chunk_it_was_for(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The chunk is already cut when its lease cannot be saved: the run's clean-up must report
    # it as well as the chunks still being filled, or its ten rows have no outcome.
    monkeypatch.setenv("CHUNK_SIZE", "10")
    monkeypatch.setenv("MAX_CONCURRENCY", "1")
    monkeypatch.setenv("CHECKPOINT_EVERY_CHUNKS", "1")
    put_rows(stack, "incoming/full-tmp.jsonl", 60)
    full = OSError(errno.ENOSPC, "No space left on device")

    class FullTmp(OutcomeSpool):
        # The second upload: the lease before the third or fourth chunk.
        upload = failing_at(OutcomeSpool.upload, 2, full)

    class Writer(ResultWriter):
        def outcome_spool(self) -> OutcomeSpool:
            return FullTmp(outcomes_header(), self.spool_keep_bytes)

    stack.import_keys("incoming/full-tmp.jsonl", results=Writer(aws.s3_client()))

    manifest = stack.manifest("results/full-tmp.jsonl/")
    outcomes = stack.outcomes("results/full-tmp.jsonl/")
    assert manifest["status"] == "failed"
    assert manifest["error"]["type"] == "InternalError"
    by_line = {int(o["line"]): o for o in outcomes}
    assert len(by_line) == len(outcomes) == manifest["counts"]["rows"]
    assert sorted(by_line) == list(range(1, len(by_line) + 1))  # read up to there, no gap
    sent = len(stack.vital.posted_connections())
    assert sent in (20, 30)  # the lease for the chunk after: the third or fourth
    assert {by_line[n]["outcome"] for n in range(1, sent + 1)} == {"imported"}
    assert {by_line[n]["detail"] for n in range(sent + 1, len(by_line) + 1)} == {
        "not sent: internal error (OSError); see the function's logs"
    }
    assert len(by_line) >= sent + 10


def _interleaved(stack: Stack, key: str, n: int) -> list[dict[str, Any]]:
    rows = [make_row(i, provider=("oura", "fitbit")[i % 2]) for i in range(n)]
    stack.vital.add_known_users(*(r["user_id"] for r in rows))
    stack.put(key, encode_rows(rows, "jsonl"))
    return rows


def test_an_error_saving_a_lease_at_the_end_of_the_file_reports_every_chunk_left(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The file's end closes two chunks at once (oura, fitbit); the first one's lease cannot be
    # saved. The second, already out of the chunker, must be reported too.
    monkeypatch.setenv("CHUNK_SIZE", "10")
    monkeypatch.setenv("MAX_CONCURRENCY", "1")
    monkeypatch.setenv("CHECKPOINT_EVERY_CHUNKS", "1")
    rows = _interleaved(stack, "incoming/flush.jsonl", 25)
    leases: list[int] = []

    class FailingThirdLease(CheckpointStore):
        def save(self, checkpoint: Checkpoint) -> None:
            leases.append(checkpoint.lease)
            if len(leases) == 3:
                raise OSError(errno.ENOSPC, "No space left on device")
            super().save(checkpoint)

    stack.import_keys("incoming/flush.jsonl", new_store=FailingThirdLease)

    manifest = stack.manifest("results/flush.jsonl/")
    outcomes = stack.outcomes("results/flush.jsonl/")
    assert manifest["status"] == "failed"
    assert sorted(int(o["line"]) for o in outcomes) == list(range(1, len(rows) + 1))
    assert {o["outcome"] for o in outcomes if int(o["line"]) > 20} == {"errored"}


@pytest.mark.filterwarnings("ignore:No application metrics to publish")  # the failed invocation
def test_a_retry_of_a_run_stopped_by_a_one_off_bug_gives_every_row_an_outcome(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A one-off bug stops the run at row 35, its half-filled chunks reported "not sent"; then
    # writing its results fails and Lambda retries the event. The run must not store those
    # short chunks' answers for the retry: reading on, it would take them for the whole chunks
    # under the same numbers, and lines 35-40 would have no outcome.
    monkeypatch.setenv("CHUNK_SIZE", "10")
    monkeypatch.setenv("MAX_CONCURRENCY", "1")
    rows = _interleaved(stack, "incoming/stopped.jsonl", 60)
    bug = RuntimeError("a one-off bug")
    s3_failed = ClientError({"Error": {"Code": "InternalError", "Message": "-"}}, "PutObject")

    class FailingFirstAssemble(ResultWriter):
        assemble = failing_at(ResultWriter.assemble, 1, s3_failed)

    event = s3_event(stack.bucket, ["incoming/stopped.jsonl"])
    with pytest.raises(ClientError):
        stack.invoke(
            event,
            serialise=failing_at(to_json, 35, bug),  # taking in row 35 (every row well formed)
            results=FailingFirstAssemble(aws.s3_client()),
        )

    stack.invoke(event)  # Lambda's retry of the same event

    manifest = stack.manifest("results/stopped.jsonl/")
    outcomes = stack.outcomes("results/stopped.jsonl/")
    assert sorted(int(o["line"]) for o in outcomes) == list(range(1, len(rows) + 1))
    assert manifest["counts"]["rows"] == len(rows)
    assert len(stack.vital.posted_connections()) == len(set(stack.vital.posted_connections()))


def test_a_bug_that_drops_outcomes_fails_the_file_naming_the_gap(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The last guard: whatever loses rows, a file read to its end that is short of outcomes
    # says so, rather than write a "succeeded" manifest counting 400 rows of 500. Here the
    # second chunk's answer gives its rows no outcome at all.
    monkeypatch.setenv("CHUNK_SIZE", "100")
    put_rows(stack, "incoming/dropped.jsonl", 500)
    no_outcomes = posting_with_report(101, lambda r: replace(r, shared=None, decided=[]))

    manifest, outcomes = run(stack, "incoming/dropped.jsonl", post_chunk=no_outcomes)

    assert manifest["status"] == "failed"
    assert manifest["error"] == {
        "type": "InternalError",
        "message": "internal error: 500 rows read, 400 outcomes recorded; see the function's logs",
    }
    assert manifest["counts"]["rows"] == len(outcomes) == 400
    assert any("rows and outcomes do not match" in line for line in stack.log_lines)


def test_a_key_revoked_mid_run_holds_back_the_chunks_behind_its_refusal(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One posting thread: chunk 2 is refused (401) while chunk 3 waits in its queue. The thread
    # goes straight on to chunk 3, before the reading thread has taken the refusal in: it must
    # not send it (only to be refused again), whatever the reading thread is doing.
    monkeypatch.setenv("MAX_CONCURRENCY", "1")
    put_rows(stack, "incoming/revoked.jsonl", 30)
    stack.vital.latency_seconds = 0.1  # chunk 3 is queued well before chunk 2 is answered
    stack.vital.status_script = [0, 401]

    manifest, outcomes = run(stack, "incoming/revoked.jsonl")

    assert [r.status for r in stack.vital.bulk_import_requests()] == [200, 401]
    assert manifest["status"] == "failed"
    assert manifest["error"]["type"] == "ImportAborted"
    assert "API key" in manifest["error"]["message"]
    by_line = check_invariants(stack, manifest, outcomes, 30)
    assert {by_line[n]["outcome"] for n in range(1, 11)} == {"imported"}
    assert {by_line[n]["outcome"] for n in range(11, 31)} == {"errored"}
    assert by_line[21]["detail"].startswith("not sent: Vital rejected the API key (401)")


@pytest.mark.filterwarnings("ignore:No application metrics to publish")  # the failed invocation
def test_a_retry_of_a_run_stopped_by_a_refused_key_keeps_the_stop(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a run that stops sending when the key is refused at chunk 2 (it reads on, reporting
    # the rest "not sent"), then fails writing its results
    monkeypatch.setenv("MAX_CONCURRENCY", "1")
    put_rows(stack, "incoming/refused-retry.jsonl", 30)
    stack.vital.status_script = [0, 401]  # then the key works again
    s3_failed = ClientError({"Error": {"Code": "InternalError", "Message": "-"}}, "PutObject")

    class FailingFirstAssemble(ResultWriter):
        assemble = failing_at(ResultWriter.assemble, 1, s3_failed)

    event = s3_event(stack.bucket, ["incoming/refused-retry.jsonl"])
    with pytest.raises(ClientError):
        stack.invoke(event, results=FailingFirstAssemble(aws.s3_client()))

    # When Lambda's retry runs
    stack.invoke(event)

    # Then it keeps the stop: nothing more is sent, and the rows after the refusal stay errored
    assert [r.status for r in stack.vital.bulk_import_requests()] == [200, 401]
    manifest = stack.manifest("results/refused-retry.jsonl/")
    outcomes = stack.outcomes("results/refused-retry.jsonl/")
    assert manifest["status"] == "failed"
    assert "API key" in manifest["error"]["message"]
    by_line = check_invariants(stack, manifest, outcomes, 30)
    assert {by_line[n]["outcome"] for n in range(11, 31)} == {"errored"}


def test_retries_stop_before_the_invocation_runs_out(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 5 s of Lambda time, SAFETY_MARGIN_SECONDS=3: retries must be over 1.5 s before the end.
    monkeypatch.setenv("SAFETY_MARGIN_SECONDS", "3")
    monkeypatch.setenv("MAX_ATTEMPTS", "20")
    put_rows(stack, "incoming/deadline.jsonl", 5)
    stack.vital.status_script = [429] * 20
    stack.vital.retry_after = "2"

    started = time.time()
    manifest, outcomes = run(stack, "incoming/deadline.jsonl", timeout_seconds=5.0)

    requests = stack.vital.bulk_import_requests()
    # t≈0: 429 (wait 2 s) → t≈2: 429; one more would end after t=3.5, so it is not made. On a
    # loaded machine the first request may start late enough that only one fits.
    assert [r.status for r in requests] in ([429], [429, 429])
    assert requests[-1].timestamp - started < 3.5
    assert time.time() - started < 5.0  # done before the invocation would have been killed
    assert manifest["counts"]["errored"] == 5
    assert {o["detail"] for o in outcomes} == {
        f"gave up after {len(requests)} attempt(s): HTTP 429 (too little Lambda time left to retry)"
    }
    check_invariants(stack, manifest, outcomes, 5)


# --- refusals ---------------------------------------------------------------------------------


@pytest.mark.usefixtures("no_waits")
def test_wrong_api_key_fails_the_file_fast(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAX_CONCURRENCY", "4")
    monkeypatch.setenv("CHUNK_SIZE", "5")
    put_rows(stack, "incoming/wrong-key.jsonl", 60)
    stack.vital.api_key = "sk_rotated_key_the_secret_does_not_hold"

    manifest, outcomes = run(stack, "incoming/wrong-key.jsonl")

    requests = stack.vital.bulk_import_requests()
    assert 1 <= len(requests) <= 2
    assert {(r.status, r.api_key_ok) for r in requests} == {(401, False)}
    assert manifest["status"] == "failed"
    assert manifest["error"]["type"] == "ImportAborted"
    assert "Vital rejected the API key (401)" in manifest["error"]["message"]
    assert "VITAL_API_KEY_SECRET" in manifest["error"]["message"]
    assert manifest["counts"]["errored"] == 60
    by_line = check_invariants(stack, manifest, outcomes, 60)
    assert by_line[60]["detail"].startswith("not sent: Vital rejected the API key (401)")


def test_missing_api_key_secret_fails_the_file_saying_what_to_fix(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The key is fetched while the file opens (on a posting thread); its failure still lands
    where the first request would have gone: nothing sent, every row errored, the file failed."""
    monkeypatch.setenv("CHUNK_SIZE", "5")
    monkeypatch.setenv("VITAL_API_KEY_SECRET", "vital/no-such-secret")
    put_rows(stack, "incoming/no-secret.jsonl", 12)

    manifest, outcomes = run(stack, "incoming/no-secret.jsonl")

    assert stack.vital.bulk_import_requests() == []
    assert manifest["status"] == "failed"
    assert manifest["error"]["type"] == "ConfigurationError"
    assert "'vital/no-such-secret'" in manifest["error"]["message"]
    assert "VITAL_API_KEY_SECRET" in manifest["error"]["message"]
    assert manifest["counts"]["errored"] == 12
    by_line = check_invariants(stack, manifest, outcomes, 12)
    assert by_line[12]["detail"].startswith("not sent: could not read the Vital API key")


class _UnansweredSecrets:
    """Secrets Manager throttling or failing after boto3's retries, as Powertools reports it
    (moto answers every call, so this is the one thing put in its place)."""

    def __init__(self, code: str, status: int) -> None:
        self.error = {"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}

    def get(self, name: str, **_: Any) -> str:
        from aws_lambda_powertools.utilities.parameters.exceptions import (  # noqa: PLC0415
            GetParameterError,
        )

        try:
            raise ClientError(self.error, "GetSecretValue")  # type: ignore[arg-type]
        except ClientError as exc:
            raise GetParameterError(str(exc))  # noqa: B904 - as Powertools does


@pytest.mark.filterwarnings("ignore:No application metrics to publish")  # the failed invocation
@pytest.mark.parametrize(
    ("code", "status"), [("ThrottlingException", 400), ("InternalServiceError", 500)]
)
def test_secrets_manager_not_answering_fails_the_invocation_for_a_retry_not_the_file(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, code: str, status: int
) -> None:
    # A throttled or failing Secrets Manager is no fault of the file: failing it for good
    # ("check VITAL_API_KEY_SECRET and the function's permissions") would error every row.
    monkeypatch.setenv("CHUNK_SIZE", "5")
    put_rows(stack, "incoming/secret-outage.jsonl", 12)
    event = s3_event(stack.bucket, ["incoming/secret-outage.jsonl"])
    with pytest.raises(TransientError, match=f"Secrets Manager did not answer \\({code}\\)"):
        stack.invoke(event, secrets=lambda: _UnansweredSecrets(code, status))
    assert stack.vital.bulk_import_requests() == []

    stack.invoke(event)  # Lambda retries the same event; Secrets Manager answers again
    manifest = stack.manifest("results/secret-outage.jsonl/")
    outcomes = stack.outcomes("results/secret-outage.jsonl/")
    assert not any("replaces an unfinished import" in line for line in stack.log_lines)

    assert manifest["status"] == "succeeded"
    check_invariants(stack, manifest, outcomes, 12)
    assert len(stack.vital.posted_connections()) == 12


@pytest.mark.usefixtures("no_waits")
def test_link_migration_disabled_fails_the_file_fast(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHUNK_SIZE", "5")
    put_rows(stack, "incoming/not-enabled.jsonl", 40)
    stack.vital.link_migration_enabled = False

    manifest, outcomes = run(stack, "incoming/not-enabled.jsonl")

    requests = stack.vital.bulk_import_requests()
    assert 1 <= len(requests) <= 2
    assert {(r.status, r.api_key_ok) for r in requests} == {(403, True)}
    assert manifest["status"] == "failed"
    message = manifest["error"]["message"]
    assert "Link Migration may not be enabled for this team" in message
    assert "Link Migration is not enabled for this team" in message  # Vital's own words
    assert manifest["counts"]["errored"] == 40
    check_invariants(stack, manifest, outcomes, 40)


@pytest.mark.usefixtures("no_waits")
def test_another_4xx_to_the_first_request_fails_the_file_fast(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A wrong base URL path or a team not set up answers 404/400 to every call: one request,
    # then the file stops saying what to check, instead of erroring chunk after chunk.
    monkeypatch.setenv("CHUNK_SIZE", "10")
    put_rows(stack, "incoming/not-found.jsonl", 200)
    stack.vital.status_script = [404] * 50

    manifest, outcomes = run(stack, "incoming/not-found.jsonl")

    assert [r.status for r in stack.vital.bulk_import_requests()] == [404]
    assert manifest["status"] == "failed"
    assert manifest["error"]["type"] == "ImportAborted"
    message = manifest["error"]["message"]
    assert message.startswith("Vital refused the first request (HTTP 404")
    assert "VITAL_API_BASE_URL" in message
    by_line = check_invariants(stack, manifest, outcomes, 200)
    assert by_line[200]["detail"].startswith("not sent: Vital refused the first request")


@pytest.mark.usefixtures("no_waits")
def test_another_4xx_later_in_the_file_fails_its_chunk_only(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHUNK_SIZE", "10")
    monkeypatch.setenv("MAX_CONCURRENCY", "1")
    put_rows(stack, "incoming/one-404.jsonl", 50)
    stack.vital.status_script = [0, 400]

    manifest, outcomes = run(stack, "incoming/one-404.jsonl")

    assert manifest["status"] == "partial"
    assert manifest["error"] is None
    by_line = check_invariants(stack, manifest, outcomes, 50)
    assert {by_line[n]["outcome"] for n in range(11, 21)} == {"errored"}
    assert by_line[11]["detail"].startswith("HTTP 400")
    assert manifest["counts"]["imported"] == 40


@pytest.mark.usefixtures("no_waits")
def test_a_refused_file_keeps_tmp_bounded_and_checkpoints_its_stop(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Rows after a refusal are not sent, so they bring no checkpoints of their own, yet each
    # gets an outcome and a retry line (~0.9 KB at realistic sizes): a long refused file must
    # not fill /tmp (a crash there would retry the refused key), nor hide the stop from a retry.
    tunables = Tunables(unsaved_spool_bytes=20_000, spool_keep_bytes=40_000)  # scaled down
    monkeypatch.setenv("CHUNK_SIZE", "10")
    put_rows(stack, "incoming/refused-long.jsonl", 3000)
    stack.vital.link_migration_enabled = False
    largest = 0

    def measure(spool: Spool) -> None:
        # What the spool's file holds: its header and the lines it keeps, read back through
        # its own reader (the one the final object is sent from), not counted by the test
        nonlocal largest
        largest = max(largest, len(spool.header) + sum(map(len, spool.blocks())))

    class MeasuredOutcomes(OutcomeSpool):
        def write_bytes(self, data: bytes, lines: int) -> None:
            super().write_bytes(data, lines)
            measure(self)

    class MeasuredRetries(RetrySpool):
        def write_bytes(self, data: bytes, lines: int) -> None:
            super().write_bytes(data, lines)
            measure(self)

    class MeasuredWriter(ResultWriter):
        def outcome_spool(self) -> OutcomeSpool:
            return MeasuredOutcomes(outcomes_header(), self.spool_keep_bytes)

        def retry_spool(self) -> RetrySpool:
            return MeasuredRetries(keep_bytes=self.spool_keep_bytes)

    saved: list[dict[str, Any]] = []

    class Recorded(CheckpointStore):
        def save(self, checkpoint: Checkpoint) -> None:
            saved.append(checkpoint.model_dump(mode="json"))
            super().save(checkpoint)

    manifest, outcomes = run(
        stack,
        "incoming/refused-long.jsonl",
        tunables=tunables,
        results=MeasuredWriter(aws.s3_client(), tunables.spool_keep_bytes),
        new_store=Recorded,
    )

    assert len(stack.vital.bulk_import_requests()) <= 2
    assert manifest["status"] == "failed"
    check_invariants(stack, manifest, outcomes, 3000)
    retry_lines = stack.get("retry/refused-long.jsonl/retry.jsonl").splitlines()
    assert len(retry_lines) == 3000
    # ~2.2 MB of outcome and retry lines went through spools that never held more than their
    # keep size, the lines since the last checkpoint and one block's rows
    assert largest < 40_000 + 20_000 + 150_000
    stopped = [cp for cp in saved if cp["stop_reason"] is not None]
    assert len(stopped) >= 5
    assert "Link Migration" in stopped[0]["stop_reason"]["message"]


# --- 422 --------------------------------------------------------------------------------------


@pytest.mark.usefixtures("no_waits")
def test_422_pointing_at_one_connection_rejects_it_and_resends_the_rest(stack: Stack) -> None:
    rows = put_rows(stack, "incoming/one-bad.jsonl", 25)
    stack.vital.reject_user_ids = {user_id(13)}

    manifest, outcomes = run(stack, "incoming/one-bad.jsonl")

    requests = stack.vital.bulk_import_requests()
    assert Counter(r.status for r in requests) == {200: 3, 422: 1}
    (refused,) = (r for r in requests if r.status == 422)
    (resent,) = (r for r in requests if r.seq > refused.seq and user_id(12) in r.user_ids)
    assert refused.user_ids == [r["user_id"] for r in rows[10:20]]
    assert resent.user_ids == [r["user_id"] for r in rows[10:20] if r["user_id"] != user_id(13)]
    assert manifest["status"] == "partial"
    assert manifest["counts"]["rejected"] == 1
    assert manifest["counts"]["imported"] == 24
    by_line = check_invariants(stack, manifest, outcomes, 25)
    assert by_line[14] == {
        "line": "14",
        "user_id": user_id(13),
        "provider": "oura",
        "outcome": "rejected",
        "detail": "rejected by Vital: user_id: Value error, user_id cannot be imported",
    }
    chunks = [(c["first_line"], c["size"], c["http_status"]) for c in manifest["chunks"]]
    assert sorted(chunks) == [(1, 10, 200), (11, 9, 200), (11, 10, 422), (21, 5, 200)]


@pytest.mark.usefixtures("no_waits")
def test_unattributable_422_is_bisected_down_to_the_bad_row(stack: Stack) -> None:
    put_rows(stack, "incoming/hidden-bad.jsonl", 16)
    stack.vital.reject_unattributed = {user_id(6)}

    manifest, outcomes = run(stack, "incoming/hidden-bad.jsonl")

    requests = stack.vital.bulk_import_requests()
    # Chunk 1 (rows 0-9): 10 → 5+5 → (3+2) → (1+1); chunk 2 (rows 10-15) passes at once.
    refused = [r.user_ids for r in requests if r.status == 422]
    assert [len(ids) for ids in refused] == [10, 5, 2, 1]
    assert all(user_id(6) in ids for ids in refused)
    assert Counter(r.status for r in requests) == {422: 4, 200: 4}
    assert manifest["counts"]["rejected"] == 1
    assert manifest["counts"]["imported"] == 15
    by_line = check_invariants(stack, manifest, outcomes, 16)
    assert by_line[7]["outcome"] == "rejected"
    assert by_line[7]["detail"] == (
        "Vital rejected the request (422): body: Value error, the bulk import could not be "
        "processed"
    )
    assert {o["outcome"] for line, o in by_line.items() if line != 7} == {"imported"}


# --- 202 --------------------------------------------------------------------------------------


def test_202_with_an_empty_body_then_bulk_ops_reconciliation(stack: Stack) -> None:
    put_rows(stack, "incoming/queued.jsonl", 25, provider="whoop_v2")
    stack.vital.force_202 = True
    stack.vital.op_complete_after_seconds = 0.2

    manifest, outcomes = run(stack, "incoming/queued.jsonl")

    requests = stack.vital.bulk_import_requests()
    assert [r.status for r in requests] == [202, 202, 202]
    # The import asked for completion; Vital only enqueued (and sent no body).
    assert {r.body["wait_for_completion"] for r in requests} == {True}
    polls = [r for r in stack.vital.recorded() if r.path == "/v2/link/bulk_op"]
    assert polls
    assert all(1 <= int(p.query["page_size"]) <= 50 for p in polls)
    assert manifest["status"] == "succeeded"
    assert manifest["counts"]["enqueued"] == 25
    assert {o["outcome"] for o in outcomes} == {"enqueued"}
    ops = manifest["bulk_ops"]
    assert len(ops) == 3
    assert {(op["provider"], op["status"], op["pending"]) for op in ops} == {
        ("whoop_v2", "success", 0)
    }
    assert sorted(op["processed"] for op in ops) == [5, 10, 10]
    check_invariants(stack, manifest, outcomes, 25)
