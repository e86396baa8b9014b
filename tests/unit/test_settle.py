"""Chunks in doubt after an interrupted run, settled by asking Vital what it holds.

A resumed run whose checkpoint leased chunk 1 (lines 11-20) without settling it: the run before
may have sent it. Vital's answers to ``GET /v2/user/providers/{user_id}`` and
``GET /v2/link/bulk_op`` come from a fake transport; a chunk that must be sent goes to
``FakePost`` (the wiring's ``post_chunk`` seam).
"""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from bulk_import.config import Settings
from bulk_import.ingest import Chunk
from bulk_import.model import (
    Checkpoint,
    ChunkRecord,
    Counts,
    DoneChunk,
    DoneRows,
    Handoff,
    LeaseMark,
    ObjectRef,
    SourceRef,
)
from bulk_import.run import replay
from bulk_import.run.context import FileResult
from bulk_import.vital import Hold
from bulk_import.vital.settle import (
    CONFIRMED_DETAIL,
    NOT_CONNECTED_DETAIL,
    OP_DETAIL,
    PENDING_DETAIL,
    UNKNOWN_USER_DETAIL,
)
from tests.fakes import (
    FakePost,
    FakeS3,
    FakeTime,
    FakeVital,
    StoreState,
    outcomes_by_line,
    run_offline,
)
from tests.helpers import access_token, encode_rows, make_row, user_id

BUCKET = "bucket-a"
KEY = "incoming/oura/a.jsonl"
REF = ObjectRef(bucket=BUCKET, key=KEY, sequencer="0A")
OUTCOMES = "results/oura/a.jsonl/outcomes.csv"
RETRY = "retry/oura/a.jsonl/retry.jsonl"
CONFIG = Settings.from_env(
    {"VITAL_API_KEY_SECRET": "vital-key", "CHUNK_SIZE": "10", "MAX_CONCURRENCY": "1"}
)
LEASED_AT = "2026-01-01T00:00:10.000Z"
IN_DOUBT = range(10, 20)  # the rows of chunk 1


def connected(slug: str = "oura", status: str = "connected", **extra: Any) -> dict[str, Any]:
    return {"name": slug.title(), "slug": slug, "logo": "", "created_on": "", "status": status}


def op(size: int = 10, status: str = "in_progress", started: str = "2026-01-01T00:00:11Z") -> Any:
    return {
        "type": "link_bulk_import",
        "status": status,
        "provider": "oura",
        "pending": size if status == "in_progress" else 0,
        "processed": 0 if status == "in_progress" else size,
        "started_at": started,
    }


def resumed_checkpoint(lease: int) -> Checkpoint:
    """The checkpoint write ``0000000a:4`` of a file of 10-row chunks: chunks 0 and 2 settled,
    the lease at ``lease``."""
    return Checkpoint(
        source=SourceRef(bucket=BUCKET, key=KEY, sequencer="0A"),
        fingerprint=replay.fingerprint(CONFIG),
        started_at="2026-01-01T00:00:00.000Z",
        next_segment=0,
        lease=lease,
        lease_marks=[LeaseMark(lease=lease, at=LEASED_AT)],
        settled_below=1,
        settled_extra=[2],
        lines_done=30,
        counts=Counts(rows=20, imported=20),
        providers={"oura": Counts(rows=20, imported=20)},
        write="0000000a:4",
    )


def resume(
    vital: FakeVital, post: FakePost | None = None, handoff: Handoff | None = None
) -> tuple[FakeS3, FileResult]:
    """Resume the import of 30 rows: chunks 0 and 2 settled, chunk 1 in doubt (unless the
    ``handoff`` record says otherwise)."""
    s3 = FakeS3()
    s3.put(KEY, encode_rows([make_row(n) for n in range(30)], "jsonl"))
    cp = resumed_checkpoint(lease=3)
    result = run_offline(
        s3,
        StoreState(checkpoint=cp, handoff=handoff),
        CONFIG,
        REF,
        transport=httpx.MockTransport(vital),
        post_chunk=post or FakePost(),
        # Moves 10 s a reading: waiting on an op that stays in progress ends at its deadline.
        clock=itertools.count(0, 10).__next__,
    )
    return s3, result


def in_doubt_outcomes(s3: FakeS3) -> list[tuple[str, str]]:
    by_line = outcomes_by_line(s3, OUTCOMES)
    assert sorted(by_line) == list(range(11, 21))  # the settled chunks get no outcome again
    return [(by_line[n + 1]["outcome"], by_line[n + 1]["detail"]) for n in IN_DOUBT]


def retried(s3: FakeS3) -> list[str]:
    return [json.loads(line)["user_id"] for line in s3.objects.get(RETRY, b"").splitlines()]


def test_users_vital_lists_as_connected_are_imported_and_nothing_is_sent() -> None:
    vital = FakeVital(providers={user_id(n): [connected()] for n in IN_DOUBT})
    post = FakePost()
    s3, result = resume(vital, post)
    assert post.sent == []
    assert set(in_doubt_outcomes(s3)) == {("imported", CONFIRMED_DETAIL)}
    assert retried(s3) == []
    assert result.manifest is not None
    assert result.manifest.counts == Counts(rows=30, imported=30)
    assert result.manifest.status == "succeeded"


def test_a_connection_vital_lists_with_an_error_is_failed_without_quoting_vital() -> None:
    token_echo = access_token(12)[:14]  # the row's own token, quoted in part
    error = connected(status="error") | {"error_details": {"message": f"token {token_echo}…"}}
    vital = FakeVital(providers={user_id(n): [connected()] for n in IN_DOUBT})
    vital.providers[user_id(12)] = [connected("fitbit"), error]
    s3, _ = resume(vital)
    got = in_doubt_outcomes(s3)
    assert got[2] == (
        "failed",
        "Vital lists this connection as error: see GET /v2/user/providers",
    )
    assert token_echo not in s3.objects[OUTCOMES].decode()
    assert {o for i, (o, _) in enumerate(got) if i != 2} == {"imported"}
    assert retried(s3) == [user_id(12)]


@pytest.mark.parametrize(("ops", "outcome"), [([], "failed"), ([op()], "errored")])
def test_users_missing_from_a_chunk_that_reached_vital_are_failed_unless_it_is_importing(
    ops: list[dict[str, Any]], outcome: str
) -> None:
    vital = FakeVital(providers={user_id(n): [connected()] for n in IN_DOUBT if n % 2}, ops=ops)
    post = FakePost()
    s3, _ = resume(vital, post)
    assert post.sent == []
    got = in_doubt_outcomes(s3)
    assert got[1::2] == [("imported", CONFIRMED_DETAIL)] * 5
    detail = NOT_CONNECTED_DETAIL if outcome == "failed" else PENDING_DETAIL
    assert got[0::2] == [(outcome, detail)] * 5


def test_a_chunk_vital_holds_nothing_of_is_sent() -> None:
    # Ops that cannot be its: before the lease, another size, another provider, one that
    # succeeded (it would list the users)
    before = op(started="2026-01-01T00:00:01Z")
    others = [before, op(size=7), op() | {"provider": "fitbit"}, op(status="success")]
    post = FakePost()
    s3, result = resume(FakeVital(ops=others), post)
    assert post.sent_lines == list(range(11, 21))
    assert {o for o, _ in in_doubt_outcomes(s3)} == {"imported"}
    assert result.manifest is not None
    assert result.manifest.counts.imported == 30


def test_a_chunk_vital_holds_nothing_of_waits_for_a_later_invocation_when_time_is_short() -> None:
    # Given a chunk in doubt of which Vital holds nothing, and 40 s left: enough to ask, less
    # than the run's 60 s margin to send in
    s3 = FakeS3()
    s3.put(KEY, encode_rows([make_row(n) for n in range(30)], "jsonl"))
    state = StoreState(checkpoint=resumed_checkpoint(lease=3))
    post = FakePost()
    # When the run resumes
    result = run_offline(
        s3,
        state,
        CONFIG,
        REF,
        transport=httpx.MockTransport(FakeVital()),
        post_chunk=post,
        remaining_seconds=lambda: 40.0,
    )
    # Then the chunk goes through the run's gate as a new one would: held for the next
    # invocation, which settles it, not sent into the margin
    assert post.sent == []
    assert [(c.first_line, held) for c, held in post.held] == [(11, Hold.DEFERRED)]
    assert result.manifest is None
    assert state.checkpoint is not None
    assert state.checkpoint.settled_below == 1


def test_users_vital_does_not_know_are_no_sign_that_the_chunk_reached_it() -> None:
    # Given a chunk in doubt of which Vital lists no user, and knows two users not at all
    vital = FakeVital(unknown={user_id(10), user_id(11)})
    post = FakePost()
    # When the run resumes
    s3, _ = resume(vital, post)
    # Then the chunk never reached Vital: it is sent, and Vital's answer decides every row
    assert post.sent_lines == list(range(11, 21))
    assert {o for o, _ in in_doubt_outcomes(s3)} == {"imported"}


def test_a_chunk_of_users_vital_does_not_know_is_failed_not_sent() -> None:
    vital = FakeVital(unknown={user_id(n) for n in IN_DOUBT})
    post = FakePost()
    s3, _ = resume(vital, post)
    assert post.sent == []
    assert set(in_doubt_outcomes(s3)) == {("failed", UNKNOWN_USER_DETAIL)}
    assert retried(s3) == [user_id(n) for n in IN_DOUBT]


@pytest.mark.parametrize("ops", [[op()], [op(status="failure")], [op(), op()]])
def test_a_bulk_op_that_may_be_the_chunks_leaves_it_in_doubt_not_sent(
    ops: list[dict[str, Any]],
) -> None:
    # Bulk ops carry no id: one of the chunk's provider and size since its lease may be its,
    # or another file's (or another chunk's) alike. Neither sent twice nor called enqueued.
    post = FakePost()
    s3, result = resume(FakeVital(ops=ops), post)
    assert post.sent == []
    assert set(in_doubt_outcomes(s3)) == {("errored", OP_DETAIL.format(count=len(ops)))}
    assert retried(s3) == [user_id(n) for n in IN_DOUBT]
    assert result.manifest is not None
    assert result.manifest.status == "partial"


@pytest.mark.parametrize("listed", [range(10, 20), range(10, 20, 2)], ids=["all", "some"])
def test_given_an_op_that_may_be_the_chunks_is_in_progress_when_it_ends_then_users_are_asked_again(
    listed: range,
) -> None:
    # Given a chunk in doubt whose users Vital lists none of, while an op of its provider and
    # size runs (it may be this chunk's or another file's), then ends with some or all listed
    vital = FakeVital(ops=[op()], ops_end_after=2, then={user_id(n): [connected()] for n in listed})
    post = FakePost()

    # When the run resumes
    s3, result = resume(vital, post)

    # Then it waited for the op, and what Vital lists afterwards decides every row
    assert post.sent == []
    assert vital.asked.count("/v2/link/bulk_op") == 3
    got = in_doubt_outcomes(s3)
    assert [got[n - 10] for n in listed] == [("imported", CONFIRMED_DETAIL)] * len(listed)
    assert {got[n - 10] for n in IN_DOUBT if n not in listed} <= {("failed", NOT_CONNECTED_DETAIL)}
    assert result.manifest is not None
    assert result.manifest.counts.errored == 0


def test_given_ops_starting_while_a_chunk_waits_then_only_earlier_ones_are_waited_for() -> None:
    # Given a chunk in doubt whose op ends after two listings, while ops of the same provider
    # and size keep starting (this run's new chunks, another file's): after the settlement began
    later = (datetime.now(UTC) + timedelta(minutes=10)).isoformat()
    vital = FakeVital(
        ops=[op()],
        ops_end_after=2,
        then={user_id(n): [connected()] for n in IN_DOUBT},
        starts_each_listing=op(started=later),
    )
    post = FakePost()

    # When the run resumes
    s3, _ = resume(vital, post)

    # Then the wait ended with the chunk's own op, and the lookups decided every row
    assert vital.asked.count("/v2/link/bulk_op") == 3
    assert post.sent == []
    assert set(in_doubt_outcomes(s3)) == {("imported", CONFIRMED_DETAIL)}


def test_given_too_little_time_to_wait_for_an_op_then_a_later_invocation_settles_it() -> None:
    # Given a chunk in doubt, an op that may be its in progress, and less Lambda time than the
    # longest wait for it before the run's margin (90 s left, SAFETY_MARGIN_SECONDS 60)
    s3 = FakeS3()
    s3.put(KEY, encode_rows([make_row(n) for n in range(30)], "jsonl"))
    state = StoreState(checkpoint=resumed_checkpoint(lease=3))
    vital = FakeVital(ops=[op()])
    post = FakePost()
    time = FakeTime()

    # When the run resumes
    result = run_offline(
        s3,
        state,
        CONFIG,
        REF,
        transport=httpx.MockTransport(vital),
        post_chunk=post,
        remaining_seconds=lambda: 90.0 - time.now,
        clock=time.clock,
        sleep=time.sleep,
    )

    # Then it waited while it could, and the chunk is neither sent nor given an outcome: the
    # next invocation asks again
    assert 20 < sum(time.sleeps) <= 90 - 60, "waited, but never into the safety margin"
    assert post.sent == []
    assert result.manifest is None
    assert state.checkpoint is not None
    assert state.checkpoint.settled_below == 1
    assert OUTCOMES not in s3.objects


def test_when_vital_cannot_be_asked_the_rows_stay_errored_saying_what_to_check() -> None:
    vital = FakeVital(down=True)
    post = FakePost()
    s3, result = resume(vital, post)
    assert post.sent == []
    got = set(in_doubt_outcomes(s3))
    assert len(got) == 1
    ((outcome, detail),) = got
    assert outcome == "errored"
    assert detail.startswith("in doubt: the function stopped while this chunk was being sent")
    assert "could not be asked whether it arrived" in detail
    assert "GET /v2/user/providers/{user_id}" in detail
    assert retried(s3) == [user_id(n) for n in IN_DOUBT]
    assert result.manifest is not None
    assert result.manifest.status == "partial"


def test_a_chunk_the_handoff_record_lists_as_answered_is_written_again_without_asking() -> None:
    # Given a hand-off record of this checkpoint write: chunk 1 answered, every row imported
    record = ChunkRecord(provider="oura", first_line=11, last_line=20, size=10, bytes=9, attempts=1)
    done = DoneChunk(
        seq=1, first_line=11, last_line=20, size=10, outcome="imported", detail="", records=[record]
    )
    vital, post = FakeVital(down=True), FakePost()
    # When the run resumes
    s3, result = resume(vital, post, Handoff(refines="0000000a:4", below=3, done=[done]))
    # Then its rows get that answer again, and nothing is asked or sent
    assert (vital.asked, post.sent) == ([], [])
    assert set(in_doubt_outcomes(s3)) == {("imported", "")}
    assert result.manifest is not None
    assert result.manifest.counts == Counts(rows=30, imported=30)
    assert record in result.manifest.chunks


def test_a_chunk_answered_row_by_row_is_written_again_from_the_record_without_asking() -> None:
    # Given a hand-off record of this checkpoint write: chunk 1 answered, most rows imported,
    # line 13's user failed and line 15 left in doubt by a lost answer
    done = DoneChunk(
        seq=1,
        first_line=11,
        last_line=20,
        size=10,
        outcome="imported",
        detail="",
        others=[
            DoneRows(outcome="failed", detail="not connected", lines=[13]),
            DoneRows(outcome="errored", detail="in doubt: see retry.jsonl", lines=[15]),
        ],
        in_doubt=1,
    )
    vital, post = FakeVital(down=True), FakePost()
    # When the run resumes
    s3, result = resume(vital, post, Handoff(refines="0000000a:4", below=3, done=[done]))
    # Then each row gets its answer again, the failed and errored ones go to retry.jsonl, and
    # nothing is asked or sent
    assert (vital.asked, post.sent) == ([], [])
    got = in_doubt_outcomes(s3)
    assert got[2] == ("failed", "not connected")
    assert got[4] == ("errored", "in doubt: see retry.jsonl")
    assert {o for i, o in enumerate(got) if i not in (2, 4)} == {("imported", "")}
    assert retried(s3) == [user_id(12), user_id(14)]
    assert result.manifest is not None
    assert result.manifest.counts == Counts(rows=30, imported=28, failed=1, errored=1)


@pytest.mark.parametrize(
    "handoff",
    [
        Handoff(refines="0000000a:3", below=1),  # an older checkpoint write's record
        Handoff(
            refines="0000000a:4",
            below=3,
            done=[  # a chunk of other lines than those the replay rebuilt
                DoneChunk(seq=1, first_line=11, last_line=19, size=9, outcome="imported", detail="")
            ],
        ),
    ],
    ids=["stale", "other-lines"],
)
def test_a_handoff_record_that_does_not_fit_leaves_the_chunk_to_be_asked_about(
    handoff: Handoff,
) -> None:
    vital = FakeVital(providers={user_id(n): [connected()] for n in IN_DOUBT})
    s3, _ = resume(vital, FakePost(), handoff)
    assert set(in_doubt_outcomes(s3)) == {("imported", CONFIRMED_DETAIL)}
    assert len(vital.asked) == 10


def test_chunks_past_the_handoff_record_were_never_handed_over_and_are_sent_as_new() -> None:
    # Given a record that let chunks through only below 1: chunk 1 never went to the threads
    vital, post = FakeVital(down=True), FakePost()
    s3, _ = resume(vital, post, Handoff(refines="0000000a:4", below=1))
    # Then it is sent without asking Vital
    assert vital.asked == []
    assert [c.first_line for c in post.sent] == [11]
    assert set(in_doubt_outcomes(s3)) == {("imported", "")}


def test_a_resumed_run_keeps_the_chunks_it_wrote_again_in_its_own_records() -> None:
    """Should the resumed run die too before its first checkpoint, the next still finds chunk 1
    answered: the record the resumed run writes before handing chunk 3 over lists it."""
    s3 = FakeS3()
    s3.put(KEY, encode_rows([make_row(n) for n in range(40)], "jsonl"))
    cp = resumed_checkpoint(lease=8)
    done = DoneChunk(seq=1, first_line=11, last_line=20, size=10, outcome="imported", detail="")
    state = StoreState(checkpoint=cp, handoff=Handoff(refines="0000000a:4", below=3, done=[done]))
    seen: list[list[int]] = []

    def before_send(chunk: Chunk) -> None:
        assert state.handoff is not None
        seen.append([d.seq for d in state.handoff.done])

    vital = FakeVital(down=True)
    run_offline(
        s3,
        state,
        CONFIG,
        REF,
        transport=httpx.MockTransport(vital),
        post_chunk=FakePost(before_send=before_send),
    )
    assert vital.asked == []
    assert seen, "chunk 3 was not sent"
    assert 1 in seen[0], seen  # chunk 3 went out under a record that lists chunk 1
